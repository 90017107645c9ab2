"""configs/metadata.json: labels, type and version as `GET /v1/models` shows them, and bad files refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aiaa_server.bundles.metadata import read_metadata
from aiaa_server.errors import InvalidModel
from aiaa_server.mmar.config import ModelType


def _write(path: Path, content: object) -> Path:
    path.write_text(json.dumps(content) if not isinstance(content, str) else content)
    return path


def _format(inputs: dict[str, object], outputs: dict[str, object]) -> dict[str, object]:
    return {"network_data_format": {"inputs": inputs, "outputs": outputs}}


def test_labels_follow_the_output_channels_without_background(tmp_path: Path) -> None:
    outputs = {"pred": {"num_channels": 4, "channel_def": {"2": "liver", "0": "background", "10": "aorta",
                                                            "1": "spleen"}}}
    metadata = read_metadata(_write(tmp_path / "m.json", {"version": 3, **_format({}, outputs)}))
    assert metadata.labels == ["spleen", "liver", "aorta"]
    assert metadata.version == "3"
    assert metadata.model_type is ModelType.SEGMENTATION


def test_guidance_channels_make_an_interactive_bundle(tmp_path: Path) -> None:
    inputs = {"image": {"num_channels": 3, "channel_def": {"0": "image"}}}
    outputs = {"pred": {"num_channels": 2, "channel_def": {"0": "background", "1": "spleen"}}}
    metadata = read_metadata(_write(tmp_path / "m.json", _format(inputs, outputs)))
    assert metadata.guidance_channels == 2
    assert metadata.model_type is ModelType.DEEPGROW


@pytest.mark.parametrize(("content", "words"), [
    ("[1, 2]", "JSON object"),
    ("{not json", "not valid JSON"),
    ('{"a":' * 5000 + "1" + "}" * 5000, "nested"),
    ({"network_data_format": {"outputs": {"pred": {"num_channels": -1}}}}, "num_channels"),
])
def test_bad_metadata_is_refused_by_name(tmp_path: Path, content: object, words: str) -> None:
    with pytest.raises(InvalidModel, match=words):
        read_metadata(_write(tmp_path / "metadata.json", content))

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from aiaa_server.learning.spec import EpochRecord, TrainSpec, TrainStatus, read_spec, read_status, write_status


def _spec_fields(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    item = {"id": "a", "image": str(tmp_path / "a.nii.gz"), "label": str(tmp_path / "a_label.nii.gz")}
    fields = {"model_name": "m", "model_dir": str(tmp_path / "model"), "output_dir": str(tmp_path / "out"),
              "status_path": str(tmp_path / "status.json"), "train": [item], "val": [item], "max_epochs": 3,
              "time_budget_s": None, "learning_rate": 1e-3, "max_voxels": 1000, "patch": [16, 16, 16]}
    return {**fields, **overrides}


def test_status_round_trips_and_leaves_no_temp_file(tmp_path: Path) -> None:
    status = TrainStatus(state="running", epoch=1, max_epochs=5, baseline_dice=0.25, best_dice=0.5, best_epoch=1,
                         epochs=[EpochRecord(epoch=1, loss=0.7, val_dice=0.5, seconds=1.5)], started=100.0)
    path = tmp_path / "status.json"
    write_status(path, status)
    write_status(path, status.model_copy(update={"state": "done", "finished": 200.0}))
    assert read_status(path) == status.model_copy(update={"state": "done", "finished": 200.0})
    assert [p.name for p in tmp_path.iterdir()] == ["status.json"]


@pytest.mark.parametrize("content", [None, b"", b"{not json", b'{"state": "running"}',
                                     b'{"state": "gone", "max_epochs": 1, "started": 0}', b"[]"])
def test_a_missing_or_unreadable_status_reads_as_none(tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / "status.json"
    if content is not None:
        path.write_bytes(content)
    assert read_status(path) is None


def test_spec_reads_from_json_with_defaults(tmp_path: Path) -> None:
    path = tmp_path / "spec.json"
    path.write_text(TrainSpec.model_validate(_spec_fields(tmp_path)).model_dump_json())
    spec = read_spec(path)
    assert spec.seed == 0 and spec.threads == 1 and spec.trusted and spec.device == "cpu"
    assert spec.train[0].image == tmp_path / "a.nii.gz" and spec.patch == [16, 16, 16]


@pytest.mark.parametrize("overrides", [
    {"max_epochs": 0}, {"max_epochs": 1001}, {"learning_rate": 0.0}, {"learning_rate": 1.5},
    {"time_budget_s": 0}, {"max_voxels": 0}, {"patch": [16]}, {"patch": [0, 16, 16]}, {"threads": 0},
    {"train": []}, {"val": []}, {"unknown_field": 1}, {"device": "tpu"},
])
def test_invalid_specs_are_refused(tmp_path: Path, overrides: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        TrainSpec.model_validate(_spec_fields(tmp_path, **overrides))

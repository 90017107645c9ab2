"""aiaa.transforms.Writer: any model result becomes JSON, or a model error naming the key and type."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from aiaa_server.errors import ModelError
from aiaa_server.inference.transforms import Writer, jsonable


def test_probability_tensor_under_json_key_is_a_list() -> None:
    """The issue's case: `"image": null, "json": "pred"` and a (C,) softmax tensor."""
    probabilities = torch.softmax(torch.tensor([0.3, 1.2]), dim=0)
    output = Writer(image=None, json="pred")({"pred": probabilities})
    assert output.image is None
    assert output.json_key == "pred"
    assert output.json["pred"] == pytest.approx(probabilities.tolist())
    json.dumps(output.json, allow_nan=False)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (torch.tensor(3), 3),
        (torch.tensor([[1, 2]], dtype=torch.uint8), [[1, 2]]),
        (MetaTensor(torch.tensor([0.5, 0.25])), [0.5, 0.25]),
        (np.float32(0.5), 0.5),
        (np.int64(7), 7),
        (np.bool_(True), True),
        (np.array([True, False]), [True, False]),
        (np.array(2.5), 2.5),
        ((1, np.int16(2)), [1, 2]),
        (float("nan"), None),
        (np.array([np.inf, 1.0]), [None, 1.0]),
        ({1: torch.tensor([1.0]), "b": {"c": np.uint8(4)}}, {"1": [1.0], "b": {"c": 4}}),
        (Path("/x/y"), "/x/y"),
        ("text", "text"),
        (None, None),
    ],
)
def test_values_are_converted(value: object, expected: object) -> None:
    converted = jsonable(value)
    assert converted == expected
    json.dumps(converted, allow_nan=False)


def test_dict_result_keeps_its_keys() -> None:
    output = Writer(image="pred", json="result")({
        "pred": torch.zeros(1, 2, 3, 4), "result": {"score": torch.tensor(0.25), "points": np.zeros((2, 3))}})
    assert output.image.shape == (2, 3, 4)
    assert output.json == {"score": 0.25, "points": [[0.0] * 3] * 2}


@pytest.mark.parametrize("missing", [{}, {"result": None}])
def test_missing_result_is_empty(missing: dict) -> None:
    assert Writer(image=None)(missing).json == {}


@pytest.mark.parametrize(
    ("value", "kind"),
    [(object(), "object"), (b"raw", "bytes"), (1 + 2j, "complex"), (np.array(["a"]), "<U1")],
)
def test_unencodable_result_names_key_and_type(value: object, kind: str) -> None:
    with pytest.raises(ModelError) as caught:
        Writer(image=None, json="result")({"result": {"scores": [1.0, value]}})
    assert "'result.scores[1]'" in caught.value.message
    assert kind in caught.value.message
    assert caught.value.details == {"key": "result.scores[1]", "type": kind}

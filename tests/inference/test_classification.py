"""A classification model's answer built from its writer output: shapes accepted, misconfigurations named."""

from __future__ import annotations

import pytest
from fhirclient.models.fhirabstractbase import FHIRValidationError

from aiaa_server.errors import ModelError
from aiaa_server.inference.classification import classification_result
from aiaa_server.inference.fhir import classification_observation
from aiaa_server.inference.transforms import WriterOutput
from tests.support.fhir import r4_observation

LABELS = ["non-covid", "covid"]


def _result(value: object, labels: list[str] = LABELS):
    return classification_result(WriterOutput(image=None, json={"pred": value}, json_key="pred"), labels, "m", "3")


@pytest.mark.parametrize("value", [[0.2, 0.8], [[0.2, 0.8]], [[0.2], [0.8]]])
def test_one_image(value: object) -> None:
    result = _result(value)
    assert result.probabilities == {"non-covid": 0.2, "covid": 0.8}
    assert (result.prediction, result.score, result.model, result.version) == ("covid", 0.8, "m", "3")
    assert result.batch is None


def test_batch_rows_are_listed_and_the_first_is_on_top() -> None:
    result = _result([[0.9, 0.1], [0.3, 0.7]])
    assert result.prediction == "non-covid"
    assert [item.prediction for item in result.batch] == ["non-covid", "covid"]


@pytest.mark.parametrize(
    ("value", "labels", "words"),
    [
        ([0.1, 0.2, 0.7], LABELS, "expected 2 class probabilities"),
        (None, LABELS, "nothing"),
        ([2.3, -1.0], LABELS, "softmax"),
        (["a", "b"], LABELS, "non-numeric"),
        ([None, 1.0], LABELS, "non-finite"),
        ([1.0], [], "no labels"),
    ],
)
def test_misconfigured_models_are_named(value: object, labels: list[str], words: str) -> None:
    with pytest.raises(ModelError, match=words):
        _result(value, labels)


def test_observation_codes_each_label() -> None:
    observation = classification_observation(_result([0.25, 0.75]), study_uid="1.2.3", series_uid="1.2.3.4")
    assert observation["valueCodeableConcept"]["coding"][0]["code"] == "covid"
    assert [c["valueQuantity"]["value"] for c in observation["component"]] == [0.25, 0.75]
    assert observation["derivedFrom"][0]["identifier"]["value"] == "urn:oid:1.2.3"
    assert r4_observation(observation).valueCodeableConcept.coding[0].code == "covid"


def test_r4_validation_refuses_what_r4_does_not_have() -> None:
    observation = classification_observation(_result([0.25, 0.75]))
    r4_observation(observation)
    for broken in ({**observation, "bodyStructure": {"reference": "BodyStructure/1"}},  # R5 only
                   {k: v for k, v in observation.items() if k != "code"},  # required
                   {**observation, "component": [{"code": observation["code"], "valueQuantity": {"value": "high"}}]}):
        with pytest.raises(FHIRValidationError):
            r4_observation(broken)

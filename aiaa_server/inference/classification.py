"""A classification model's answer: one probability per label, the predicted label, the model that said so.

The model's pipeline leaves its class probabilities (e.g. after `Activationsd(softmax=True)`) under the writer's
`json` key, as a (C,) vector (a (1, C) one too); a model that declares a batch (`meta_data.batch`) may leave
(N, C), one row per image of the batch, and a 2D model that takes a volume slice by slice
(`meta_data.batch: "slices"`, see `slice_batch`) gives one row per slice; a batch also gets a `summary`.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, Field

from aiaa_server.errors import ModelError
from aiaa_server.inference.transforms import WriterOutput

PROBABILITY_TOLERANCE = 1e-3


class ClassPrediction(BaseModel):
    """One image's classification."""

    probabilities: dict[str, float] = Field(description="label name -> probability, in label order")
    prediction: str = Field(description="the label with the highest probability")
    score: float = Field(description="the predicted label's probability")


class BatchSummary(BaseModel):
    """A batch's classifications taken together."""

    images: int = Field(description="how many images (slices) were classified")
    counts: dict[str, int] = Field(description="label name -> how many images it was predicted for")
    mean_probabilities: dict[str, float] = Field(description="label name -> its probability averaged over "
                                                 "the images")
    prediction: str = Field(description="the label with the highest mean probability")


class ClassificationResult(ClassPrediction):
    """What a classification model answers (`application/json`) on `/v1/inference` and `/infer/{model}`."""

    model: str = Field(description="the model's name")
    version: str = Field(description="the model's version")
    labels: list[str] = Field(description="the label names, in the model's output order")
    batch: list[ClassPrediction] | None = Field(
        None, description="one entry per image when the model classified a batch (the top-level fields are "
        "the first image's)")
    summary: BatchSummary | None = Field(None, description="the batch taken together (with `batch` only)")

    model_config = {"json_schema_extra": {"examples": [{
        "model": "demo_organ_classification", "version": "1", "labels": ["liver", "spleen"],
        "probabilities": {"liver": 0.91, "spleen": 0.09}, "prediction": "liver", "score": 0.91}]}}


def classification_result(output: WriterOutput, labels: list[str], model: str, version: str) -> ClassificationResult:
    """The classification in `output.json[output.json_key]` (the writer's JSON) with the model's label names.

    Args:
        output: what the model's writer returned.
        labels: the model's label names, one per output channel.
        model, version: the model's name and version.

    Raises:
        ModelError: (500) no probabilities, a vector whose length is not the number of labels, or values that
            are not probabilities (e.g. logits: add `Activationsd` with `softmax: true` to post_transforms).
    """
    key = output.json_key
    value = output.json.get(key)
    rows = _rows(value, len(labels), model, key)
    predictions = [_prediction(row, labels, model, key) for row in rows]
    first = predictions[0]
    batched = len(predictions) > 1
    return ClassificationResult(
        model=model, version=version, labels=list(labels), probabilities=first.probabilities,
        prediction=first.prediction, score=first.score, batch=predictions if batched else None,
        summary=batch_summary(predictions, labels) if batched else None,
    )


def batch_summary(predictions: list[ClassPrediction], labels: list[str]) -> BatchSummary:
    """How often each label was predicted over `predictions`, and the mean probability of each label."""
    count = len(predictions)
    counts = {label: sum(p.prediction == label for p in predictions) for label in labels}
    means = {label: sum(p.probabilities[label] for p in predictions) / count for label in labels}
    return BatchSummary(images=count, counts=counts, mean_probabilities=means,
                        prediction=max(labels, key=means.__getitem__))


def _rows(value: Any, classes: int, model: str, key: str) -> list[list[Any]]:
    """`value` as rows of `classes` numbers: (C,), (1, C), (N, C) or with trailing singleton axes dropped."""
    if classes == 0:
        raise ModelError(f"classification model {model!r} has no labels: list one per output class")
    value = _flat(value)
    rows = value if isinstance(value, list) and value and isinstance(value[0], list) else [value]
    rows = [_flat(row) for row in rows]
    if not rows or any(not isinstance(row, list) or len(row) != classes for row in rows):
        raise ModelError(
            f"classification model {model!r} left {_shape(value)} under {key!r}; expected {classes} class "
            f"probabilities (one per label) per image", key=key)
    return rows


def _flat(row: Any) -> Any:
    """A row with singleton nesting removed ([[p0], [p1]] -> [p0, p1]); anything else unchanged."""
    if isinstance(row, list) and all(isinstance(v, list) and len(v) == 1 for v in row):
        return [_flat(v[0]) if isinstance(v[0], list) else v[0] for v in row]
    return row


def _shape(value: Any) -> str:
    if isinstance(value, list):
        return f"a list of {len(value)}"
    return "nothing" if value is None else f"a {type(value).__name__}"


def _prediction(row: list[Any], labels: list[str], model: str, key: str) -> ClassPrediction:
    if not all(isinstance(p, (int, float)) and not isinstance(p, bool) and math.isfinite(p) for p in row):
        raise ModelError(f"classification model {model!r} left non-numeric or non-finite values under {key!r}",
                         key=key)
    values = [float(p) for p in row]
    if min(values) < -PROBABILITY_TOLERANCE or max(values) > 1 + PROBABILITY_TOLERANCE:
        raise ModelError(
            f"classification model {model!r} left values outside [0, 1] under {key!r} (logits?): add "
            "Activationsd with softmax (or sigmoid) to its post_transforms", key=key)
    best = max(range(len(values)), key=values.__getitem__)
    return ClassPrediction(probabilities=dict(zip(labels, values, strict=True)), prediction=labels[best],
                           score=values[best])

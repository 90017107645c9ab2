"""A classification model's result as the client asked for it: the JSON answer (`ClassificationResult`), a
DICOM SR of the source series (`result_extension: .dcm`, `output=dicom_sr`) or a FHIR R4 Observation
(`output=fhir`)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from aiaa_server.errors import BadRequest
from aiaa_server.imaging.dicom_headers import load_headers
from aiaa_server.imaging.dicom_sr import write_classification_sr
from aiaa_server.imaging.limits import DecodeLimits
from aiaa_server.inference.classification import ClassificationResult, classification_result
from aiaa_server.inference.fhir import FHIR_MEDIA_TYPE, classification_observation
from aiaa_server.inference.transforms import WriterOutput

SR_MEDIA_TYPE = "application/dicom"
NOT_FROM_DICOM_SR = ("a DICOM SR result needs an image that came as a DICOM series (a session or datastore image "
                     "uploaded as DICOM files, or a DICOMweb series); this one did not")
NOT_CLASSIFICATION = "output=fhir is for classification models; model {model!r} is a {kind} model"


@dataclass
class ClassificationAnswer:
    """The JSON answer, and the report file when one was asked for (None: JSON only)."""

    result: ClassificationResult
    payload: bytes | None = None
    media_type: str = "application/json"
    filename: str | None = None


def _stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "image"


def classification_answer(output: WriterOutput, labels: list[str], model: str, version: str, *, image_name: str,
                          report: str | None, headers: Path | None, limits: DecodeLimits) -> ClassificationAnswer:
    """The classification of `output` (the model's writer output), and its report.

    Args:
        output: what the model's writer returned.
        labels, model, version: the model's label names, name and version.
        image_name: the input's name, for the report's file name.
        report: "dicom_sr", "fhir" or None (JSON only).
        headers: the source series' headers file (DICOM-sourced images), else None.
        limits: bounds for reading the headers.

    Raises:
        ModelError: (500) the model left no usable probabilities (see `classification_result`).
        BadRequest: (400) a DICOM SR for an image that did not come as a DICOM series.
    """
    result = classification_result(output, labels, model, version)
    stem = f"{_stem(image_name)}_{_stem(model)}"
    if report == "dicom_sr":
        if headers is None:
            raise BadRequest(NOT_FROM_DICOM_SR, result_extension=".dcm")
        payload = write_classification_sr(load_headers(headers, limits), result.probabilities, result.prediction,
                                          model, version)
        return ClassificationAnswer(result, payload, SR_MEDIA_TYPE, f"{stem}_sr.dcm")
    if report == "fhir":
        study = series = None
        if headers is not None:
            first = load_headers(headers, limits)[0]
            study, series = first.get("StudyInstanceUID"), first.get("SeriesInstanceUID")
        observation = classification_observation(result, study, series)
        payload = json.dumps(observation, separators=(",", ":")).encode()
        return ClassificationAnswer(result, payload, FHIR_MEDIA_TYPE, f"{stem}_observation.json")
    return ClassificationAnswer(result)

"""A classification as a FHIR R4 Observation (JSON): the predicted label as `valueCodeableConcept`, one
`component` per label with its probability (`valueQuantity`, unit "1"), the model as `device.display`, and, for
a DICOM-sourced image, `derivedFrom` the ImagingStudy (by its Study Instance UID) and the series in `note`.

Labels are coded in a local code system, `urn:aiaa-server:model:<model>`, with the label name as code.
"""

from __future__ import annotations

import datetime
import uuid
from typing import Any

from aiaa_server.inference.classification import ClassificationResult

FHIR_MEDIA_TYPE = "application/fhir+json"
DICOM_UID_SYSTEM = "urn:dicom:uid"
OBSERVATION_CATEGORY = {"coding": [{
    "system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "imaging", "display": "Imaging"}]}
UCUM = "http://unitsofmeasure.org"


def label_system(model: str) -> str:
    """The code system of a model's labels."""
    return f"urn:aiaa-server:model:{model}"


def _concept(system: str, code: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code, "display": code}], "text": code}


def classification_observation(result: ClassificationResult, study_uid: str | None = None,
                               series_uid: str | None = None) -> dict[str, Any]:
    """The Observation (a JSON-ready dict) of `result`.

    Args:
        result: the classification.
        study_uid: the source image's Study Instance UID (DICOM-sourced images); None: no `derivedFrom`.
        series_uid: the source Series Instance UID, named in a `note` (R4 has no series reference).
    """
    system = label_system(result.model)
    components = [
        {"code": _concept(system, name),
         "valueQuantity": {"value": round(p, 6), "unit": "probability", "system": UCUM, "code": "1"}}
        for name, p in result.probabilities.items()
    ]
    observation: dict[str, Any] = {
        "resourceType": "Observation",
        "id": str(uuid.uuid4()),
        "status": "preliminary",
        "category": [OBSERVATION_CATEGORY],
        "code": {"coding": [{"system": system, "code": "classification",
                             "display": f"{result.model} classification"}],
                 "text": f"{result.model} classification"},
        "issued": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "valueCodeableConcept": _concept(system, result.prediction),
        "device": {"display": f"{result.model} {result.version}"},
        "method": {"text": f"AI model {result.model}, version {result.version} (aiaa-server)"},
        "component": components,
    }
    if study_uid:
        observation["derivedFrom"] = [{"type": "ImagingStudy", "display": f"study {study_uid}", "identifier": {
            "system": DICOM_UID_SYSTEM, "value": f"urn:oid:{study_uid}"}}]
    if series_uid:
        observation["note"] = [{"text": f"source series urn:oid:{series_uid}"}]
    return observation

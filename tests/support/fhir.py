"""FHIR R4 (4.0.1) validation of the Observations the server writes, with fhirclient's R4 models (generated
from the R4 StructureDefinitions): strict parsing refuses unknown elements (e.g. R4B/R5-only ones), values of
the wrong type and missing required elements. It does not check value sets (e.g. `status` codes)."""

from __future__ import annotations

from typing import Any

from fhirclient.models.observation import Observation


def r4_observation(body: dict[str, Any]) -> Observation:
    """`body` parsed strictly as an R4 Observation; its JSON must come back unchanged (nothing dropped).

    Raises:
        FHIRValidationError: `body` is not a valid R4 Observation.
        AssertionError: parsing lost or changed something.
    """
    observation = Observation(body, strict=True)
    assert observation.as_json() == body
    return observation

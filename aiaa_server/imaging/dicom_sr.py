"""A classification as a DICOM Structured Report: TID 1500 (Measurement Report) in a Comprehensive 3D SR,
written by highdicom, referencing the source series as its evidence.

The report holds one measurement group (TID 1501) with the model as its algorithm identification, the
predicted label as its finding (DCM 121071 "Finding") and as a qualitative evaluation ("Predicted class"), and one
"Probability" measurement per label (unit "1", qualified by the label). Labels are coded in a private scheme (`99AIAA`) with the label name as meaning.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import highdicom as hd
from pydicom import Dataset

from aiaa_server.errors import InvalidImage

LABEL_SCHEME = "99AIAA"
PROBABILITY = hd.sr.CodedConcept(value="PROB", scheme_designator=LABEL_SCHEME, meaning="Probability")
PREDICTED = hd.sr.CodedConcept(value="PRED", scheme_designator=LABEL_SCHEME, meaning="Predicted class")
UNITLESS = hd.sr.CodedConcept(value="1", scheme_designator="UCUM", meaning="no units")
IMAGING_PROCEDURE = hd.sr.CodedConcept(value="363679005", scheme_designator="SCT", meaning="Imaging")
SR_SERIES_NUMBER = 9901


def label_code(index: int, name: str) -> hd.sr.CodedConcept:
    """The coded concept of label `index` (its position in the model's labels) named `name`."""
    return hd.sr.CodedConcept(value=f"L{index}", scheme_designator=LABEL_SCHEME, meaning=name[:64])


def write_classification_sr(source: Sequence[Dataset], probabilities: Mapping[str, float], prediction: str,
                            algorithm: str, version: str) -> bytes:
    """A Comprehensive 3D SR (TID 1500) of one classification of the series `source` describes.

    Args:
        source: the source series' headers (one dataset per instance; pixel data not needed).
        probabilities: label name -> probability, in the model's label order.
        prediction: the predicted label (a key of `probabilities`).
        algorithm, version: the model's name and version (algorithm identification).

    Returns:
        The SR as a DICOM Part 10 file.

    Raises:
        InvalidImage: (400) headers highdicom cannot reference (e.g. missing UIDs).
    """
    names = list(probabilities)
    algorithm_id = hd.sr.AlgorithmIdentification(name=algorithm[:64], version=(version or "1")[:64])
    measurements = [
        hd.sr.Measurement(name=PROBABILITY, value=float(p), unit=UNITLESS, qualifier=label_code(i, name),
                          algorithm_id=algorithm_id)
        for i, (name, p) in enumerate(probabilities.items())
    ]
    predicted = label_code(names.index(prediction), prediction)
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=f"{algorithm} classification"[:64]),
        algorithm_id=algorithm_id, finding_type=predicted, measurements=measurements,
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(name=PREDICTED, value=predicted)],
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(), procedure_reported=IMAGING_PROCEDURE,
        imaging_measurements=[group],
    )
    try:
        sr = hd.sr.Comprehensive3DSR(
            evidence=list(source), content=report, series_instance_uid=hd.UID(), series_number=SR_SERIES_NUMBER,
            sop_instance_uid=hd.UID(), instance_number=1, manufacturer="aiaa-server", is_complete=True,
            series_description=f"{algorithm} classification"[:64],
        )
    except (AttributeError, ValueError, TypeError) as exc:
        raise InvalidImage(f"cannot reference the source series in a DICOM SR: {exc}") from exc
    buffer = io.BytesIO()
    sr.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()

"""A volume written as a DICOM series: one single-frame CT or MR Image Storage file per slice, with new UIDs.

For loading the cache's scans into a PACS (the tests load the InVesalius head CT into a real Orthanc) or into
any DICOM viewer. The geometry comes from the volume's affine, so the server's DICOM reader gives the volume back
on the same world grid:

- slice k is `array[:, :, k]` stored as rows j and columns i (`Rows` = J, `Columns` = I);
- ImageOrientationPatient is the LPS unit vectors of the i and j axes, PixelSpacing their lengths (row spacing
  first), ImagePositionPatient the LPS position of voxel [0, 0, k]; SliceThickness the step along the normal;
- values are stored as unsigned 16-bit with RescaleSlope/RescaleIntercept: integral volumes exactly (slope 1,
  intercept the minimum when it is negative, e.g. -1024 for CT), others in 65 536 steps of their range.

The reader sorts slices along the normal (row x column cosines), so a volume whose k axis runs against it comes
back with k reversed and the affine to match: the same voxels at the same places.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import DSfloat

from aiaa_demo.datasets.convert import LPS_TO_RAS

SOP_CLASSES = {"CT": "1.2.840.10008.5.1.4.1.1.2", "MR": "1.2.840.10008.5.1.4.1.1.4"}
STORED_RANGE = 65535


class DicomSeries(NamedTuple):
    """What `volume_to_dicom_series` wrote: the files (slice order k = 0, 1, ...) and the new UIDs."""

    paths: list[Path]
    study_uid: str
    series_uid: str


def subsample(array: np.ndarray, affine: np.ndarray, steps: Sequence[int] = (2, 2, 1)) -> tuple[np.ndarray, np.ndarray]:
    """Every `steps[n]`-th voxel along axis n (no smoothing), and the affine of that coarser grid.

    Returns:
        the subsampled array (contiguous) and its voxel -> world affine (voxel [0, 0, 0] stays where it was).
    """
    steps = tuple(int(s) for s in steps)
    if len(steps) != 3 or min(steps) < 1:
        raise ValueError("steps must be three positive integers")
    out = np.ascontiguousarray(array[:: steps[0], :: steps[1], :: steps[2]])
    scaled = np.array(affine, dtype=float)
    scaled[:3, :3] = scaled[:3, :3] * np.asarray(steps, dtype=float)
    return out, scaled


def volume_to_dicom_series(
    array: np.ndarray,
    affine: np.ndarray,
    out_dir: Path,
    modality: str = "CT",
    *,
    patient_id: str = "AIAA-DEMO",
    patient_name: str = "AIAA^Demo",
    series_description: str = "",
    study_description: str = "",
    series_number: int = 1,
    study_date: str = "20000101",
    study_uid: str | None = None,
    series_uid: str | None = None,
) -> DicomSeries:
    """Write a 3D volume as a DICOM series, one `slice_NNNN.dcm` per k (Explicit VR Little Endian).

    Args:
        array: the voxels [i, j, k] (NIfTI index order), any real dtype.
        affine: voxel [i, j, k] -> RAS+ mm (NIfTI convention); converted to DICOM's LPS.
        out_dir: the folder to write to (created when missing).
        modality: `CT` (CT Image Storage, RescaleType HU) or `MR` (MR Image Storage).
        patient_id: PatientID.
        patient_name: PatientName (DICOM `Family^Given`).
        series_description: SeriesDescription.
        study_description: StudyDescription.
        series_number: SeriesNumber.
        study_date: StudyDate, `YYYYMMDD`.
        study_uid: the StudyInstanceUID; None: a new one.
        series_uid: the SeriesInstanceUID; None: a new one.

    Returns:
        the files written and the study and series UIDs.

    Raises:
        ValueError: not a 3D volume, an unknown modality, non-finite values, or a singular affine.
    """
    array = np.asarray(array)
    modality = modality.upper()
    if array.ndim != 3 or modality not in SOP_CLASSES or not np.all(np.isfinite(array)):
        raise ValueError(f"need a finite 3D volume and a modality in {sorted(SOP_CLASSES)}")
    geometry = _geometry(np.asarray(affine, dtype=float))
    stored, slope, intercept = _stored_values(array)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    study_uid, series_uid, frame_uid = study_uid or generate_uid(), series_uid or generate_uid(), generate_uid()
    template = _series_template(modality, patient_id, patient_name, series_description, study_description,
                                series_number, study_date)
    template.update({"StudyInstanceUID": study_uid, "SeriesInstanceUID": series_uid, "FrameOfReferenceUID": frame_uid,
                     "RescaleSlope": _ds(slope), "RescaleIntercept": _ds(intercept)})
    paths = []
    for k in range(array.shape[2]):
        ds = _slice_dataset(template, geometry, k, stored[:, :, k])
        path = out_dir / f"slice_{k:04d}.dcm"
        _save(ds, path)
        paths.append(path)
    return DicomSeries(paths, study_uid, series_uid)


def _geometry(affine: np.ndarray) -> dict[str, object]:
    lps = LPS_TO_RAS @ affine
    axes = [lps[:3, n] for n in range(3)]
    lengths = [float(np.linalg.norm(axis)) for axis in axes]
    if abs(np.linalg.det(lps[:3, :3])) < 1e-9 or min(lengths) == 0:
        raise ValueError("the affine is singular")
    row, col = axes[0] / lengths[0], axes[1] / lengths[1]
    normal = np.cross(row, col)
    return {"orientation": [*row, *col], "spacing": [lengths[1], lengths[0]], "origin": lps[:3, 3],
            "step": axes[2], "thickness": abs(float(axes[2] @ normal)), "normal": normal}


def _stored_values(array: np.ndarray) -> tuple[np.ndarray, float, float]:
    """uint16 values and the slope/intercept that give the array back (exactly when it is integral)."""
    low, high = float(array.min()), float(array.max())
    integral = np.issubdtype(array.dtype, np.integer) or bool(np.all(array == np.round(array)))
    if integral and high - min(low, 0.0) <= STORED_RANGE:
        intercept = min(low, 0.0)
        return (array - intercept).astype(np.uint16), 1.0, intercept
    slope = (high - low) / STORED_RANGE if high > low else 1.0
    return np.round((array.astype(np.float64) - low) / slope).astype(np.uint16), slope, low


def _series_template(modality: str, patient_id: str, patient_name: str, series_description: str,
                     study_description: str, series_number: int, study_date: str) -> dict[str, object]:
    values: dict[str, object] = {
        "SOPClassUID": SOP_CLASSES[modality], "Modality": modality, "ImageType": ["DERIVED", "SECONDARY", "AXIAL"],
        "PatientName": patient_name, "PatientID": patient_id, "PatientBirthDate": "", "PatientSex": "",
        "StudyDate": study_date, "StudyTime": "120000", "SeriesDate": study_date, "ContentDate": study_date,
        "ContentTime": "120000", "StudyID": "1", "AccessionNumber": "", "ReferringPhysicianName": "",
        "StudyDescription": study_description, "SeriesDescription": series_description,
        "SeriesNumber": int(series_number), "Manufacturer": "aiaa-demo", "PositionReferenceIndicator": "",
        "SamplesPerPixel": 1, "PhotometricInterpretation": "MONOCHROME2", "BitsAllocated": 16, "BitsStored": 16,
        "HighBit": 15, "PixelRepresentation": 0, "RescaleType": "HU" if modality == "CT" else "US",
    }
    if modality == "CT":
        values.update({"KVP": "", "AcquisitionNumber": ""})
    else:
        values.update({"ScanningSequence": "RM", "SequenceVariant": "NONE", "ScanOptions": "",
                       "MRAcquisitionType": "", "EchoTime": "", "EchoTrainLength": "", "RepetitionTime": ""})
    return values


def _slice_dataset(template: dict[str, object], geometry: dict[str, object], k: int, pixels: np.ndarray) -> Dataset:
    ds = Dataset()
    for keyword, value in template.items():
        setattr(ds, keyword, value)
    position = np.asarray(geometry["origin"]) + k * np.asarray(geometry["step"])
    ds.SOPInstanceUID = generate_uid()
    ds.InstanceNumber = k + 1
    ds.ImagePositionPatient = [_ds(v) for v in position]
    ds.ImageOrientationPatient = [_ds(v) for v in geometry["orientation"]]
    ds.PixelSpacing = [_ds(v) for v in geometry["spacing"]]
    ds.SliceThickness = _ds(geometry["thickness"])
    ds.SliceLocation = _ds(float(position @ np.asarray(geometry["normal"])))
    ds.Rows, ds.Columns = int(pixels.shape[1]), int(pixels.shape[0])
    ds.PixelData = np.ascontiguousarray(pixels.T).astype("<u2").tobytes()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    ds.preamble = b"\0" * 128
    return ds


def _ds(value: float) -> DSfloat:
    """A decimal string of at most 16 characters, as precise as that allows."""
    return DSfloat(float(value), auto_format=True)


def _save(ds: Dataset, path: Path) -> None:
    try:
        ds.save_as(path, enforce_file_format=True)  # pydicom >= 3
    except TypeError:  # pragma: no cover - pydicom 2.x
        ds.is_little_endian, ds.is_implicit_VR = True, False
        ds.save_as(path, write_like_original=False)

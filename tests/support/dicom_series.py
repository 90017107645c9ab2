"""Synthetic CT series written with pydicom, complete enough for a DICOM SEG to reference (patient, study,
frame of reference), in any orientation, slice positions and file order."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from aiaa_server.imaging.io import LPS_TO_RAS

AXIAL = (np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0]))
SAGITTAL = (np.array([0.0, 1.0, 0.0]), np.array([0.0, 0.0, -1.0]))
CORONAL = (np.array([1.0, 0.0, 0.0]), np.array([0.0, 0.0, -1.0]))


def oblique(degrees: float = 30.0, tilt: float = 10.0) -> tuple[np.ndarray, np.ndarray]:
    """Row and column directions (LPS) rotated about S by `degrees`, the column tilted about L by `tilt`."""
    a, b = np.radians(degrees), np.radians(tilt)
    return (np.array([np.cos(a), np.sin(a), 0.0]),
            np.array([-np.sin(a) * np.cos(b), np.cos(a) * np.cos(b), np.sin(b)]))


@dataclass
class Series:
    """What `write_ct_series` wrote: the files in upload order, their true voxels [i, j, k] (k along the
    normal) and RAS affine, and the SOPInstanceUID of each k."""

    paths: list[Path]
    hu: np.ndarray
    affine: np.ndarray
    uids: list[str] = field(default_factory=list)


def slice_dataset(uid: str, series_uid: str, rows: int, columns: int) -> Dataset:
    """A CT slice's header (Explicit VR Little Endian file meta) without geometry or pixels."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, uid
    ds.Modality, ds.Manufacturer = "CT", "test"
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Test^Patient", "P1", "19700101", "O"
    ds.StudyInstanceUID, ds.StudyID, ds.StudyDate, ds.StudyTime = "1.2.3.4", "S1", "20240101", "120000"
    ds.AccessionNumber, ds.ReferringPhysicianName = "A1", ""
    ds.SeriesInstanceUID, ds.SeriesNumber, ds.FrameOfReferenceUID = series_uid, 3, "1.2.3.4.5"
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    return ds


def write_ct_series(
    folder: Path,
    hu: np.ndarray,
    directions: tuple[np.ndarray, np.ndarray] = AXIAL,
    pixel_spacing: tuple[float, float] = (0.7, 0.8),
    step: float = 2.5,
    origin: tuple[float, float, float] = (-100.0, -120.0, 35.0),
    order: str = "shuffled",
    position: Callable[[int, np.ndarray], np.ndarray] | None = None,
    edit: Callable[[int, Dataset], None] | None = None,
) -> Series:
    """One CT file per slice of `hu` [i=column, j=row, k=slice along row × column].

    Args:
        order: the file order of `paths`: "shuffled", "spatial" or "reversed" (against the normal; the
            InstanceNumbers then count the same way).
        position: k, normal -> ImagePositionPatient, instead of origin + k × step × normal.
        edit: called on each slice's dataset (k, dataset) before it is written.
    """
    folder.mkdir(parents=True, exist_ok=True)
    row, col = directions
    normal = np.cross(row, col)
    series_uid, paths, uids = generate_uid(), [], []
    intercept = -1024.0
    for k in range(hu.shape[2]):
        uid = generate_uid()
        ds = slice_dataset(uid, series_uid, hu.shape[1], hu.shape[0])
        ds.InstanceNumber = hu.shape[2] - k if order == "reversed" else k + 1
        ds.PixelSpacing, ds.SliceThickness = list(pixel_spacing), step
        ds.ImageOrientationPatient = [float(v) for v in (*row, *col)]
        where = position(k, normal) if position else np.asarray(origin) + k * step * normal
        ds.ImagePositionPatient = [float(v) for v in where]
        ds.RescaleSlope, ds.RescaleIntercept = 1, intercept
        ds.PixelData = (hu[:, :, k].T - intercept).astype(np.uint16).tobytes()  # [row, column]
        if edit:
            edit(k, ds)
        path = folder / f"slice_{uid[-12:]}.dcm"
        ds.save_as(str(path), enforce_file_format=True)
        paths.append(path)
        uids.append(uid)
    upload = {"spatial": paths, "reversed": paths[::-1]}.get(order) or random.Random(7).sample(paths, len(paths))
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2] = row * pixel_spacing[1], col * pixel_spacing[0], normal * step
    lps[:3, 3] = origin
    return Series(upload, hu, LPS_TO_RAS @ lps, uids)


def hu_volume(shape: tuple[int, int, int] = (20, 16, 9), seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1000, 1500, size=shape).astype(np.int16)

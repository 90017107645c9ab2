"""A DICOM series (one file per slice, or a zip of them) → one `Volume` in NIfTI index order and RAS.

Slices are sorted by their position along the slice normal (ImageOrientationPatient row × column), not by
file order or InstanceNumber; voxel values get RescaleSlope/Intercept applied (CT → HU).
"""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from aiaa_server.errors import InvalidImage
from aiaa_server.imaging.formats import ZIP_MAGIC, ImageFormat
from aiaa_server.imaging.io import LPS_TO_RAS, Volume

log = logging.getLogger(__name__)

MAX_ZIP_MEMBERS = 20000
MAX_UNZIPPED_BYTES = 8 * 2**30
POSITION_TOLERANCE_MM = 1e-3


@dataclass
class _Slice:
    dataset: Dataset
    position: np.ndarray  # ImagePositionPatient (LPS, mm)


def _is_zip(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(4) == ZIP_MAGIC


def expand_zips(paths: Sequence[Path], work_dir: Path) -> list[Path]:
    """Replace each zip by the files it holds (safely: no paths outside `work_dir`, bounded size)."""
    files: list[Path] = []
    for index, path in enumerate(paths):
        if not _is_zip(path):
            files.append(path)
            continue
        target = work_dir / f"zip{index}"
        target.mkdir(parents=True, exist_ok=True)
        try:
            with zipfile.ZipFile(path) as archive:
                members = [m for m in archive.infolist() if not m.is_dir()]
                if len(members) > MAX_ZIP_MEMBERS or sum(m.file_size for m in members) > MAX_UNZIPPED_BYTES:
                    raise InvalidImage("zip archive is too large to be one DICOM series")
                for number, member in enumerate(members):
                    # Never trust member names for paths (zip slip): number the extracted files.
                    out = target / f"m{number:06d}"
                    with archive.open(member) as source, open(out, "wb") as sink:
                        while chunk := source.read(2**20):
                            sink.write(chunk)
                    files.append(out)
        except zipfile.BadZipFile as exc:
            raise InvalidImage(f"could not read the zip archive: {exc}") from exc
    return files


def _read_slices(paths: Sequence[Path]) -> list[_Slice]:
    slices: list[_Slice] = []
    for path in paths:
        try:
            dataset = pydicom.dcmread(str(path), force=True)
        except Exception as exc:
            raise InvalidImage(f"a file of the series is not DICOM: {exc}") from exc
        if "PixelData" not in dataset:
            continue  # DICOMDIR, structured reports, presentation states…
        if int(getattr(dataset, "NumberOfFrames", 1) or 1) > 1:
            raise InvalidImage("multi-frame (enhanced) DICOM objects are not supported; send one file per slice")
        for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
            if keyword not in dataset:
                raise InvalidImage(f"DICOM slice without {keyword}: cannot place it in a 3D volume")
        slices.append(_Slice(dataset, np.asarray([float(v) for v in dataset.ImagePositionPatient])))
    if not slices:
        raise InvalidImage("no DICOM image slices found in the upload")
    return slices


def _single_series(slices: list[_Slice]) -> list[_Slice]:
    series = {str(getattr(s.dataset, "SeriesInstanceUID", "")) for s in slices}
    if len(series) > 1:
        raise InvalidImage(f"the upload holds {len(series)} DICOM series; send the files of exactly one series")
    return slices


def _orientation(dataset: Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    iop = np.asarray([float(v) for v in dataset.ImageOrientationPatient])
    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col)
    if not np.isclose(np.linalg.norm(normal), 1.0, atol=1e-3):
        raise InvalidImage("DICOM ImageOrientationPatient is not two orthonormal directions")
    return row, col, normal


def _check_consistent(slices: list[_Slice], row: np.ndarray, col: np.ndarray) -> None:
    first = slices[0].dataset
    for item in slices[1:]:
        ds = item.dataset
        if (int(ds.Rows), int(ds.Columns)) != (int(first.Rows), int(first.Columns)):
            raise InvalidImage("DICOM slices of different sizes cannot form one volume")
        r, c, _ = _orientation(ds)
        if not (np.allclose(r, row, atol=1e-3) and np.allclose(c, col, atol=1e-3)):
            raise InvalidImage("DICOM slices with different orientations cannot form one volume")


def _rescaled_pixels(ds: Dataset) -> np.ndarray:
    try:
        pixels = ds.pixel_array
    except Exception as exc:  # compressed transfer syntax without a decoder, truncated data…
        raise InvalidImage(f"cannot decode DICOM pixel data: {exc}") from exc
    if pixels.ndim != 2:
        raise InvalidImage("only single-channel (grayscale) DICOM images are supported")
    slope = float(getattr(ds, "RescaleSlope", 1.0) or 1.0)
    intercept = float(getattr(ds, "RescaleIntercept", 0.0) or 0.0)
    if slope == 1.0 and intercept == 0.0:
        return pixels
    return pixels.astype(np.float64) * slope + intercept


def _volume_dtype(values: np.ndarray) -> np.dtype:
    """Integral values keep an integer type (int16 for CT HU), anything else becomes float32."""
    if values.size and not np.all(np.equal(np.mod(values, 1), 0)):
        return np.dtype(np.float32)
    low, high = (values.min(), values.max()) if values.size else (0, 0)
    for candidate in (np.int16, np.int32):
        info = np.iinfo(candidate)
        if info.min <= low and high <= info.max:
            return np.dtype(candidate)
    return np.dtype(np.float32)


def _slice_step(positions: np.ndarray, normal: np.ndarray, first: Dataset) -> np.ndarray:
    """The LPS vector from one slice to the next (handles gantry tilt: it need not be along the normal)."""
    if len(positions) == 1:
        thickness = float(getattr(first, "SpacingBetweenSlices", 0) or getattr(first, "SliceThickness", 0) or 1.0)
        return normal * thickness
    distances = positions @ normal
    gaps = np.diff(distances)
    if np.any(gaps < POSITION_TOLERANCE_MM):
        raise InvalidImage(
            "several DICOM slices share one position (mixed series, echoes or duplicates); send one series"
        )
    if gaps.max() - gaps.min() > max(0.01 * gaps.mean(), POSITION_TOLERANCE_MM):
        log.warning("DICOM slice spacing is not uniform (%.3f–%.3f mm); using the mean", gaps.min(), gaps.max())
    return (positions[-1] - positions[0]) / (len(positions) - 1)


def read_dicom_series(paths: Sequence[Path], work_dir: Path) -> Volume:
    """Decode the DICOM files (or zips of them) of one series into a RAS `Volume` indexed [i, j, k]."""
    work_dir.mkdir(parents=True, exist_ok=True)
    slices = _single_series(_read_slices(expand_zips(paths, work_dir)))
    row, col, normal = _orientation(slices[0].dataset)
    _check_consistent(slices, row, col)
    slices.sort(key=lambda s: float(s.position @ normal))
    positions = np.stack([s.position for s in slices])
    first = slices[0].dataset
    row_spacing, col_spacing = (float(v) for v in first.PixelSpacing)  # between rows, between columns

    stacked = np.stack([_rescaled_pixels(s.dataset) for s in slices])  # [k, j(row), i(column)]
    array = np.ascontiguousarray(stacked.transpose(2, 1, 0).astype(_volume_dtype(stacked), copy=False))

    lps = np.eye(4)
    lps[:3, 0] = row * col_spacing  # i runs along a row, i.e. across columns
    lps[:3, 1] = col * row_spacing
    lps[:3, 2] = _slice_step(positions, normal, first)
    lps[:3, 3] = positions[0]
    return Volume(
        array=array,
        affine=LPS_TO_RAS @ lps,
        format=ImageFormat.DICOM,
        name="series",
        extra={"slices": len(slices), "modality": str(getattr(first, "Modality", ""))},
    )


__all__ = ["expand_zips", "read_dicom_series"]

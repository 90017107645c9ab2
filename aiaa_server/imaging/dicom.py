"""A DICOM series (one file per slice, or a zip of them) → one `Volume` in NIfTI index order and RAS, and the
series' headers in the same slice order (what a DICOM SEG of a result is written against).

Slices are sorted by their position along the slice normal (ImageOrientationPatient row × column), not by
file order or InstanceNumber; voxel values get RescaleSlope/Intercept applied (CT → HU).

The files are read under the bounds of `dicom_files`: headers first (pixel data left on disk), so that the
series is checked — one series, placeable slices, a transfer syntax with a decoder, uniform spacing, no
gantry tilt — and Columns × Rows × slices is checked against the limits before any pixel is decoded; the whole
series shares one deadline (`DecodeLimits.dicom_timeout_s`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import UID

from aiaa_server.errors import InvalidImage
from aiaa_server.imaging.dicom_files import (
    Deadline,
    check_transfer_syntax,
    expand,
    expand_zips,
    malformed_is_invalid,
    read_header,
)
from aiaa_server.imaging.dicom_headers import strip_header
from aiaa_server.imaging.formats import ImageFormat
from aiaa_server.imaging.io import LPS_TO_RAS, Volume, check_affine
from aiaa_server.imaging.limits import DEFAULT_LIMITS, DecodeLimits, check_shape

log = logging.getLogger(__name__)

SERIES_IDS = ("SeriesInstanceUID", "StudyInstanceUID", "PatientID")  # kept with the series (OHIF and Slicer use them)
POSITION_TOLERANCE_MM = 1e-3
SLICE_TOLERANCE = 0.1  # a slice may lie this fraction of a step off a regular grid (positions are rounded in files)
SLICE_TOLERANCE_MM = 0.05  # ... or this much, for thin slices
TILT_TOLERANCE_DEG = 0.2  # slices may drift sideways by this angle from the normal (rounded positions and cosines)
TILT_TOLERANCE_MM = 0.05  # ... plus this much, for slices close together
SEGMENTATION_CLASSES = ("1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.66.7")  # SEG, label map SEG


@dataclass
class _Slice:
    dataset: Dataset  # header; the pixel data is read from the file when decoded
    position: np.ndarray  # ImagePositionPatient (LPS, mm)


@dataclass
class _Series:
    slices: list[_Slice]  # sorted along the normal: the volume's k axis
    affine: np.ndarray  # voxel → RAS


class DicomSeries(NamedTuple):
    """A decoded series and its headers: `headers[k]` is the source instance of the volume's slice k."""

    volume: Volume
    headers: list[Dataset]


def _sop_name(dataset: Dataset) -> str:
    sop = dataset.get("SOPClassUID")
    return UID(str(sop)).name if sop else ""


def _is_image(dataset: Dataset) -> bool:
    return _sop_name(dataset).endswith("Image Storage") or ("Rows" in dataset and "ImagePositionPatient" in dataset)


def _check_slice(dataset: Dataset) -> None:
    if str(dataset.get("SOPClassUID", "")) in SEGMENTATION_CLASSES:
        raise InvalidImage("the upload holds a DICOM Segmentation (SEG): it is a label, not an image series")
    if int(getattr(dataset, "NumberOfFrames", 1) or 1) > 1:
        raise InvalidImage("multi-frame (enhanced) DICOM objects are not supported; send one file per slice")
    if int(getattr(dataset, "SamplesPerPixel", 1) or 1) != 1:
        raise InvalidImage("only single-channel (grayscale) DICOM images are supported")
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns"):
        if keyword not in dataset:
            raise InvalidImage(f"DICOM slice without {keyword}: cannot place it in a 3D volume")
    check_transfer_syntax(dataset)


def _read_slices(paths: Sequence[Path], deadline: Deadline) -> list[_Slice]:
    slices: list[_Slice] = []
    for path in paths:
        deadline.check()
        dataset = read_header(path, deadline)
        if "PixelData" not in dataset:
            if _is_image(dataset):
                kind = f" ({_sop_name(dataset)})" if _sop_name(dataset) else ""
                raise InvalidImage(f"a DICOM image{kind} has no Pixel Data: it cannot be decoded (sent as a "
                                   "header-only export?)")
            continue  # DICOMDIR, structured reports, presentation states…
        _check_slice(dataset)
        slices.append(_Slice(dataset, np.asarray([float(v) for v in dataset.ImagePositionPatient])))
    if not slices:
        raise InvalidImage("no DICOM image slices found in the upload")
    return slices


def _single_series(slices: list[_Slice]) -> list[_Slice]:
    series = {str(getattr(s.dataset, "SeriesInstanceUID", "")) for s in slices}
    if len(series) > 1:
        raise InvalidImage(f"the upload holds {len(series)} DICOM series; send the files of exactly one series",
                           series=sorted(series)[:10])
    return slices


def orientation(dataset: Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The row and column directions of a slice (LPS) and the slice normal (row × column).

    Raises:
        InvalidImage: ImageOrientationPatient is not two orthonormal directions.
    """
    iop = np.asarray([float(v) for v in dataset.ImageOrientationPatient])
    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col)
    if iop.shape != (6,) or not np.isclose(np.linalg.norm(normal), 1.0, atol=1e-3):
        raise InvalidImage("DICOM ImageOrientationPatient is not two orthonormal directions")
    return row, col, normal


def _check_consistent(slices: list[_Slice], row: np.ndarray, col: np.ndarray) -> None:
    first = slices[0].dataset
    for item in slices[1:]:
        ds = item.dataset
        if (int(ds.Rows), int(ds.Columns)) != (int(first.Rows), int(first.Columns)):
            raise InvalidImage("DICOM slices of different sizes cannot form one volume")
        r, c, _ = orientation(ds)
        if not (np.allclose(r, row, atol=1e-3) and np.allclose(c, col, atol=1e-3)):
            raise InvalidImage("DICOM slices with different orientations cannot form one volume")


def _check_spacing(distances: np.ndarray) -> None:
    """Refuse slices off a regular grid along the normal (a missing slice, mixed spacings) beyond the tolerance."""
    gaps = np.diff(distances)
    if np.any(gaps < POSITION_TOLERANCE_MM):
        raise InvalidImage(
            "several DICOM slices share one position (mixed series, echoes or duplicates); send one series"
        )
    step = (distances[-1] - distances[0]) / (len(distances) - 1)
    drift = float(np.abs(distances - distances[0] - step * np.arange(len(distances))).max())
    if drift > slice_tolerance_mm(step):
        raise InvalidImage(
            f"the DICOM slices are not evenly spaced (gaps from {gaps.min():.3f} to {gaps.max():.3f} mm along the "
            f"slice normal, a slice up to {drift:.3f} mm off a regular grid): a slice is missing, or the series mixes "
            "spacings; send the complete series", min_gap_mm=round(float(gaps.min()), 4),
            max_gap_mm=round(float(gaps.max()), 4))
    if gaps.max() - gaps.min() > max(0.01 * step, POSITION_TOLERANCE_MM):
        log.warning("DICOM slice spacing varies a little (%.3f–%.3f mm); using the mean", gaps.min(), gaps.max())


def slice_tolerance_mm(step: float) -> float:
    """How far (mm) a slice may lie from its place on a regular grid of slices `step` mm apart."""
    return max(SLICE_TOLERANCE * abs(step), SLICE_TOLERANCE_MM)


def _check_not_tilted(positions: np.ndarray, normal: np.ndarray, first: Dataset) -> None:
    """Refuse slices stacked obliquely to their own plane (CT gantry tilt): a sheared grid most tools misplace."""
    offsets = positions - positions[0]
    along = offsets @ normal
    sideways = np.linalg.norm(offsets - np.outer(along, normal), axis=1)
    allowed = TILT_TOLERANCE_MM + np.tan(np.radians(TILT_TOLERANCE_DEG)) * np.abs(along)
    if np.any(sideways > allowed):
        angle = float(np.degrees(np.arctan2(sideways[-1], abs(along[-1]))))
        tilt = first.get("GantryDetectorTilt")
        said = f"; GantryDetectorTilt {float(tilt):g}°" if tilt not in (None, "") else ""
        raise InvalidImage(
            f"the DICOM slices are stacked {angle:.2f}° off their normal (gantry tilt{said}): a sheared grid is not "
            "supported; resample the series to an orthogonal grid first (e.g. dcm2niix corrects gantry tilt)",
            tilt_degrees=round(angle, 3))


def _slice_step(positions: np.ndarray, normal: np.ndarray, first: Dataset) -> np.ndarray:
    """The LPS vector from one slice to the next (the mean of the series' steps)."""
    if len(positions) == 1:
        thickness = float(getattr(first, "SpacingBetweenSlices", 0) or getattr(first, "SliceThickness", 0) or 1.0)
        return normal * thickness
    _check_spacing(positions @ normal)
    _check_not_tilted(positions, normal, first)
    return (positions[-1] - positions[0]) / (len(positions) - 1)


def slice_affine(row: np.ndarray, col: np.ndarray, pixel_spacing: Sequence[float], step: np.ndarray,
                 origin: np.ndarray) -> np.ndarray:
    """The voxel → RAS affine of a stack of DICOM slices, array axes [i(column), j(row), k(slice)].

    Args:
        row: the direction (LPS) along a row, i.e. of increasing column index (ImageOrientationPatient[:3]).
        col: the direction (LPS) down a column, i.e. of increasing row index (ImageOrientationPatient[3:]).
        pixel_spacing: DICOM PixelSpacing: (between rows, between columns) in mm.
        step: the LPS vector (mm) from one slice to the next.
        origin: ImagePositionPatient (LPS, mm) of the first slice's first pixel.
    """
    row_spacing, col_spacing = (float(v) for v in pixel_spacing)
    lps = np.eye(4)
    lps[:3, 0] = np.asarray(row) * col_spacing  # i runs along a row, i.e. across columns
    lps[:3, 1] = np.asarray(col) * row_spacing
    lps[:3, 2] = step
    lps[:3, 3] = origin
    return LPS_TO_RAS @ lps


def _affine(slices: list[_Slice], row: np.ndarray, col: np.ndarray, normal: np.ndarray) -> np.ndarray:
    """Voxel → RAS of slices sorted along `normal`."""
    first = slices[0].dataset
    positions = np.stack([s.position for s in slices])
    return slice_affine(row, col, first.PixelSpacing, _slice_step(positions, normal, first), positions[0])


def _open_series(paths: Sequence[Path], work_dir: Path, limits: DecodeLimits, deadline: Deadline) -> _Series:
    """The series' slice headers, checked and sorted along the normal (the one sort every reader shares)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    slices = _single_series(_read_slices(expand(paths, work_dir, limits, deadline), deadline))
    row, col, normal = orientation(slices[0].dataset)
    _check_consistent(slices, row, col)
    slices.sort(key=lambda s: float(s.position @ normal))
    affine = _affine(slices, row, col, normal)
    check_affine(affine)
    return _Series(slices, affine)


def _pixels(ds: Dataset) -> np.ndarray:
    try:
        pixels = ds.pixel_array
    except Exception as exc:  # truncated data, a codec error…
        raise InvalidImage(f"cannot decode DICOM pixel data: {exc}") from exc
    if pixels.shape != (int(ds.Rows), int(ds.Columns)):
        raise InvalidImage("only single-channel (grayscale) DICOM images are supported")
    return pixels


def _rescaled(pixels: np.ndarray, ds: Dataset) -> np.ndarray:
    slope = float(getattr(ds, "RescaleSlope", 1.0) or 1.0)
    intercept = float(getattr(ds, "RescaleIntercept", 0.0) or 0.0)
    if slope == 1.0 and intercept == 0.0:
        return pixels
    return pixels.astype(np.float64) * slope + intercept


def _volume_dtype(integral: bool, low: float, high: float) -> np.dtype:
    """Integral values keep an integer type (int16 for CT HU), anything else becomes float32."""
    if not integral:
        return np.dtype(np.float32)
    for candidate in (np.int16, np.int32):
        info = np.iinfo(candidate)
        if info.min <= low and high <= info.max:
            return np.dtype(candidate)
    return np.dtype(np.float32)


def _voxels(slices: list[_Slice], limits: DecodeLimits, deadline: Deadline) -> np.ndarray:
    """The rescaled voxels [i(column), j(row), k(slice)], in the smallest type that holds them exactly: the
    stored pixels are decoded slice by slice, then copied once into the final array (no float64 volume)."""
    first = slices[0].dataset
    shape = (int(first.Columns), int(first.Rows), len(slices))
    check_shape(shape, max(1, int(getattr(first, "BitsAllocated", 16) or 16) // 8), limits, what="DICOM series")
    decoded, integral, low, high = [], True, np.inf, -np.inf
    for item in slices:
        deadline.check()
        pixels = _pixels(item.dataset)
        values = _rescaled(pixels, item.dataset)
        integral = integral and (values.dtype.kind in "iub" or bool(np.all(np.mod(values, 1) == 0)))
        low, high = min(low, float(values.min())), max(high, float(values.max()))
        decoded.append(pixels)
    dtype = _volume_dtype(integral, low, high)
    check_shape(shape, dtype.itemsize, limits, what="DICOM series")
    array = np.empty(shape, dtype=dtype)
    for k, (item, pixels) in enumerate(zip(slices, decoded)):
        array[:, :, k] = _rescaled(pixels, item.dataset).T
    return array


def _decode(paths: Sequence[Path], work_dir: Path, limits: DecodeLimits) -> DicomSeries:
    deadline = Deadline(limits.dicom_timeout_s)
    series = _open_series(paths, work_dir, limits, deadline)
    first = series.slices[0].dataset
    volume = Volume(
        array=_voxels(series.slices, limits, deadline),
        affine=series.affine,
        format=ImageFormat.DICOM,
        name="series",
        extra={"slices": len(series.slices), "modality": str(getattr(first, "Modality", "")),
               "ids": {key: str(getattr(first, key)) for key in SERIES_IDS if getattr(first, key, None)}},
    )
    return DicomSeries(volume, [strip_header(s.dataset) for s in series.slices])


def _headers(paths: Sequence[Path], work_dir: Path, limits: DecodeLimits) -> list[Dataset]:
    series = _open_series(paths, work_dir, limits, Deadline(limits.dicom_timeout_s))
    return [strip_header(s.dataset) for s in series.slices]


def read_dicom_series(paths: Sequence[Path], work_dir: Path, limits: DecodeLimits = DEFAULT_LIMITS) -> Volume:
    """Decode the DICOM files (or zips of them) of one series into a RAS `Volume`.

    Args:
        paths: the uploaded files: one per slice, zips of them, or both (non-image objects are skipped).
        work_dir: where zips are expanded.
        limits: `max_dicom_files`, `max_bytes` (zip expansion and decoded voxels), `max_voxels` and
            `dicom_timeout_s` (the whole decode, checked between files and on every read).

    Returns:
        A `Volume` with array [i(column), j(row), k(slice)] sorted along the slice normal, int16/int32 when
        the rescaled values are integral (else float32), and its voxel → RAS affine.

    Raises:
        InvalidImage: (400) a file that is not DICOM, several series, an image without pixel data, a transfer
            syntax without a decoder (named), slices of different sizes or orientations, duplicate positions,
            uneven slice gaps (a missing slice), gantry tilt, a SEG or multi-frame object.
        PayloadTooLarge: (413) over a limit, the limit named; raised before the pixels are decoded.
    """
    with malformed_is_invalid("the DICOM series"):
        return _decode(paths, work_dir, limits).volume


def read_dicom_series_with_headers(paths: Sequence[Path], work_dir: Path,
                                   limits: DecodeLimits = DEFAULT_LIMITS) -> DicomSeries:
    """`read_dicom_series` and the series' headers in one pass.

    Returns:
        A `DicomSeries`: `volume` as `read_dicom_series` returns it, and `headers`, one dataset per slice in
        the order of the volume's k axis, without pixel data, bulk (binary) values or private elements
        (`dicom_headers.strip_header`): the `source` of `write_dicom_seg`, storable with `save_headers`.

    Raises:
        InvalidImage: (400) as `read_dicom_series`.
        PayloadTooLarge: (413) as `read_dicom_series`.
    """
    with malformed_is_invalid("the DICOM series"):
        return _decode(paths, work_dir, limits)


def read_series_headers(paths: Sequence[Path], work_dir: Path, limits: DecodeLimits = DEFAULT_LIMITS) -> list[Dataset]:
    """The headers of one series, sorted exactly as `read_dicom_series` sorts its slices; no pixel is decoded.

    Args:
        paths: the uploaded files, as for `read_dicom_series`.
        work_dir: where zips are expanded.
        limits: `max_dicom_files`, `max_bytes` (zip expansion) and `dicom_timeout_s`.

    Returns:
        One dataset per slice, `headers[k]` for the volume's slice k (see `read_dicom_series_with_headers`).

    Raises:
        InvalidImage: (400) as `read_dicom_series`, except for errors only decoding the pixels finds.
        PayloadTooLarge: (413) too many files or bytes, or past the deadline.
    """
    with malformed_is_invalid("the DICOM series"):
        return _headers(paths, work_dir, limits)


__all__ = ["SEGMENTATION_CLASSES", "DicomSeries", "expand_zips", "orientation", "read_dicom_series",
           "read_dicom_series_with_headers", "read_series_headers", "slice_affine", "slice_tolerance_mm"]

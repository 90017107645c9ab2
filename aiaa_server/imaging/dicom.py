"""A DICOM series (one file per slice, or a zip of them) → one `Volume` in NIfTI index order and RAS.

Slices are sorted by their position along the slice normal (ImageOrientationPatient row × column), not by
file order or InstanceNumber; voxel values get RescaleSlope/Intercept applied (CT → HU).

Every bound is checked before the work it guards: zips are expanded counting the bytes actually written
(in all, per member, and against the archive's size), a file must start like DICOM before pydicom parses
it, headers are read first (pixel data left on disk) so that Columns × Rows × slices is checked before any
pixel is decoded, and the whole series shares one deadline (`DecodeLimits.dicom_timeout_s`), checked
between files and on every read pydicom makes.
"""

from __future__ import annotations

import io
import logging
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.filereader import read_partial
from pydicom.tag import BaseTag, Tag

from aiaa_server.errors import AIAAError, InvalidImage, PayloadTooLarge
from aiaa_server.imaging.formats import ZIP_MAGIC, ImageFormat, looks_like_dicom
from aiaa_server.imaging.io import LPS_TO_RAS, Volume, check_affine
from aiaa_server.imaging.limits import DEFAULT_LIMITS, DecodeLimits, check_shape

log = logging.getLogger(__name__)

MAX_MEMBER_BYTES = 2**30  # one extracted file: a single-frame slice is far smaller
MAX_ZIP_RATIO = 200  # extracted bytes per byte of zip archive, checked once past RATIO_FLOOR_BYTES
RATIO_FLOOR_BYTES = 16 * 2**20  # small series of blank slices may compress better than any real one
MAX_HEADER_READS = 100_000  # reads pydicom makes for one file's header (1-2 per element; a CT slice needs ~100)
POSITION_TOLERANCE_MM = 1e-3
PIXEL_DATA = Tag(0x7FE0, 0x0010)
_DEFER_BYTES = 4096  # values longer than this (the pixel data) stay on disk until they are used


class _Deadline:
    """The one time bound of a series decode (`limits.dicom_timeout_s`)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def check(self) -> None:
        if time.monotonic() >= self.end:
            raise PayloadTooLarge(
                f"decoding the DICOM series took longer than {self.seconds:g} s (the limit dicom_timeout_s); "
                "send fewer or smaller files", limit="dicom_timeout_s")


class _GuardedFile(io.BufferedReader):
    """A file as pydicom reads it: every read checks the deadline and counts toward MAX_HEADER_READS (zeros
    parse as millions of empty elements). A BufferedReader, so pydicom reopens it by name for deferred values."""

    def __init__(self, path: Path, deadline: _Deadline) -> None:
        super().__init__(io.FileIO(str(path), "rb"))
        self._deadline = deadline
        self._reads = 0

    def read(self, size: int | None = -1) -> bytes:
        self._reads += 1
        if self._reads > MAX_HEADER_READS:
            raise InvalidImage(f"a file of the series has an implausibly long header (over {MAX_HEADER_READS} "
                               "reads): not a DICOM image slice")
        self._deadline.check()
        return super().read(size)


@dataclass
class _Slice:
    dataset: Dataset  # header; the pixel data is read from the file when decoded
    position: np.ndarray  # ImagePositionPatient (LPS, mm)


@dataclass
class _Budget:
    """What the files of one series have used so far, against `limits`."""

    limits: DecodeLimits
    files: int = 0
    zipped: int = 0  # bytes of the zip archives opened
    extracted: int = 0  # bytes written out of them

    def count(self, files: int) -> None:
        self.files += files
        if self.files > self.limits.max_dicom_files:
            raise PayloadTooLarge(f"the DICOM upload holds more than {self.limits.max_dicom_files} files "
                                  "(the limit max_dicom_files)", limit="max_dicom_files")

    def grow(self, chunk: int, member_total: int) -> None:
        """Count `chunk` bytes just extracted; `member_total` is what the current member has given so far."""
        self.extracted += chunk
        if member_total > MAX_MEMBER_BYTES:
            raise PayloadTooLarge(f"a file in the zip archive expands past {MAX_MEMBER_BYTES // 2**20} MiB")
        if self.extracted > self.limits.max_bytes:
            raise PayloadTooLarge(f"the zip archives expand past {self.limits.max_bytes / 2**20:.6g} MiB "
                                  "(the server option --max_image_mb raises it)", limit="max_image_mb")
        if self.extracted > RATIO_FLOOR_BYTES and self.extracted > MAX_ZIP_RATIO * self.zipped:
            raise PayloadTooLarge(f"the zip archive expands more than {MAX_ZIP_RATIO} times its size: "
                                  "refused as a zip bomb")


def _is_zip(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(4) == ZIP_MAGIC


def _extract(path: Path, target: Path, budget: _Budget, deadline: _Deadline) -> list[Path]:
    files = []
    target.mkdir(parents=True, exist_ok=True)
    budget.zipped += path.stat().st_size
    with zipfile.ZipFile(path) as archive:
        members = [m for m in archive.infolist() if not m.is_dir()]
        budget.count(len(members) - 1)  # the archive itself was counted as one file
        for number, member in enumerate(members):
            deadline.check()
            out = target / f"m{number:06d}"  # never trust member names for paths (zip slip)
            written = 0
            with archive.open(member) as source, open(out, "wb") as sink:
                while chunk := source.read(2**20):  # sizes from the bytes read: declared sizes can lie
                    written += len(chunk)
                    budget.grow(len(chunk), written)
                    sink.write(chunk)
            files.append(out)
    return files


def _expand(paths: Sequence[Path], work_dir: Path, limits: DecodeLimits, deadline: _Deadline) -> list[Path]:
    budget = _Budget(limits)
    budget.count(len(paths))
    files: list[Path] = []
    for index, path in enumerate(paths):
        if not _is_zip(path):
            files.append(path)
            continue
        try:
            files.extend(_extract(path, work_dir / f"zip{index}", budget, deadline))
        except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError) as exc:
            raise InvalidImage(f"could not read the zip archive: {exc}") from exc
    return files


def expand_zips(paths: Sequence[Path], work_dir: Path, limits: DecodeLimits = DEFAULT_LIMITS) -> list[Path]:
    """Replace each zip by the files it holds, extracted under `work_dir` with numbered names.

    Args:
        paths: uploaded files; those starting with the zip signature are expanded.
        work_dir: where the members are written (member names are never used as paths).
        limits: `max_dicom_files` bounds the files in all; `max_bytes` the bytes extracted in all;
            `dicom_timeout_s` the time taken.

    Returns:
        The non-zip paths and the extracted files, in upload order.

    Raises:
        InvalidImage: a corrupt archive.
        PayloadTooLarge: too many files, too many bytes, a member over MAX_MEMBER_BYTES, or an archive
            expanding more than MAX_ZIP_RATIO times its size.
    """
    return _expand(paths, work_dir, limits, _Deadline(limits.dicom_timeout_s))


def _past_pixel_data() -> Callable[[BaseTag, str | None, int], bool]:
    """Stop parsing at the first element after Pixel Data: some scanners pad files with megabytes of zeros
    there, which would parse as millions of empty elements (only padding and signatures may follow it)."""
    seen = False

    def stop(tag: BaseTag, _vr: str | None, _length: int) -> bool:
        nonlocal seen
        if seen:
            return True
        seen = tag == PIXEL_DATA
        return False

    return stop


def _read_header(path: Path, deadline: _Deadline) -> Dataset:
    with open(path, "rb") as handle:
        if not looks_like_dicom(handle.read(132)):  # before pydicom: force=True parses anything, slowly
            raise InvalidImage("a file of the series is not DICOM (no DICM marker, no DICOM element at its start)")
    try:
        with _GuardedFile(path, deadline) as handle:
            return read_partial(handle, stop_when=_past_pixel_data(), force=True, defer_size=_DEFER_BYTES)
    except AIAAError:
        raise
    except Exception as exc:
        raise InvalidImage(f"a file of the series is not DICOM: {exc}") from exc


def _read_slices(paths: Sequence[Path], deadline: _Deadline) -> list[_Slice]:
    slices: list[_Slice] = []
    for path in paths:
        deadline.check()
        dataset = _read_header(path, deadline)
        if "PixelData" not in dataset:
            continue  # DICOMDIR, structured reports, presentation states…
        if int(getattr(dataset, "NumberOfFrames", 1) or 1) > 1:
            raise InvalidImage("multi-frame (enhanced) DICOM objects are not supported; send one file per slice")
        if int(getattr(dataset, "SamplesPerPixel", 1) or 1) != 1:
            raise InvalidImage("only single-channel (grayscale) DICOM images are supported")
        for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns"):
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


def _pixels(ds: Dataset) -> np.ndarray:
    try:
        pixels = ds.pixel_array
    except Exception as exc:  # compressed transfer syntax without a decoder, truncated data…
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


def _voxels(slices: list[_Slice], limits: DecodeLimits, deadline: _Deadline) -> np.ndarray:
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


def _affine(slices: list[_Slice], row: np.ndarray, col: np.ndarray, normal: np.ndarray) -> np.ndarray:
    """Voxel → RAS of slices sorted along `normal`."""
    first = slices[0].dataset
    positions = np.stack([s.position for s in slices])
    row_spacing, col_spacing = (float(v) for v in first.PixelSpacing)  # between rows, between columns
    lps = np.eye(4)
    lps[:3, 0] = row * col_spacing  # i runs along a row, i.e. across columns
    lps[:3, 1] = col * row_spacing
    lps[:3, 2] = _slice_step(positions, normal, first)
    lps[:3, 3] = positions[0]
    return LPS_TO_RAS @ lps


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
        InvalidImage: (400) a file that is not DICOM, several series, inconsistent or unplaceable slices.
        PayloadTooLarge: (413) over a limit, the limit named; raised before the pixels are decoded.
    """
    try:
        return _read_series(paths, work_dir, limits)
    except AIAAError:
        raise
    except Exception as exc:  # pydicom raises many types for malformed values (a non-numeric position, ...)
        raise InvalidImage(f"could not decode the DICOM series: {exc}") from exc


def _read_series(paths: Sequence[Path], work_dir: Path, limits: DecodeLimits) -> Volume:
    deadline = _Deadline(limits.dicom_timeout_s)
    work_dir.mkdir(parents=True, exist_ok=True)
    slices = _single_series(_read_slices(_expand(paths, work_dir, limits, deadline), deadline))
    row, col, normal = _orientation(slices[0].dataset)
    _check_consistent(slices, row, col)
    slices.sort(key=lambda s: float(s.position @ normal))
    affine = _affine(slices, row, col, normal)
    check_affine(affine)
    first = slices[0].dataset
    return Volume(
        array=_voxels(slices, limits, deadline),
        affine=affine,
        format=ImageFormat.DICOM,
        name="series",
        extra={"slices": len(slices), "modality": str(getattr(first, "Modality", "")),
               "series_uid": str(getattr(first, "SeriesInstanceUID", ""))},
    )


__all__ = ["expand_zips", "read_dicom_series"]

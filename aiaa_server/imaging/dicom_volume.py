"""A DICOM series stored as one volume file: decode the series, encode it in the save format, decode that.

Sessions (`aiaa_server.sessions`) keep a DICOM upload as a single NIfTI/NRRD file; the volume they cache is
the one decoded from that file (not the DICOM arrays), so every click sees exactly the stored header and dtype.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from aiaa_server.imaging.dicom import read_dicom_series_with_headers
from aiaa_server.imaging.dicom_headers import save_headers
from aiaa_server.imaging.formats import ImageFormat
from aiaa_server.imaging.io import Volume, encode_volume, read_volume
from aiaa_server.imaging.limits import DEFAULT_LIMITS, DecodeLimits

__all__ = ["StoredSeries", "dicom_series_to_file"]


class StoredSeries(NamedTuple):
    """What `dicom_series_to_file` stored: the file's decoded volume, the series' slice count and its ids
    (SeriesInstanceUID, StudyInstanceUID, PatientID: those the files had)."""

    volume: Volume
    slices: Any
    ids: dict[str, str] = {}  # noqa: RUF012 - a NamedTuple default, never mutated


def dicom_series_to_file(
    paths: Sequence[Path],
    work_dir: Path,
    out_path: Path,
    fmt: ImageFormat,
    gzip_level: int = 1,
    limits: DecodeLimits = DEFAULT_LIMITS,
    headers_path: Path | None = None,
) -> StoredSeries:
    """Decode one DICOM series, write it to `out_path` in `fmt`, and decode the written file.

    Args:
        paths: the uploaded files: one per slice, zips of them, or both (see `read_dicom_series`).
        work_dir: where zips are expanded; removed once the series is decoded.
        out_path: the volume file to write (its name is also the decoded volume's name).
        fmt: the save format: `ImageFormat.NIFTI` (uncompressed), `NIFTI_GZ` or `NRRD` (gzip-compressed).
        gzip_level: the gzip level of the compressed formats.
        limits: the decode bounds, for the DICOM series and for re-reading the written file.
        headers_path: where to keep the series' headers (`save_headers`, in the volume's slice order) for a
            DICOM SEG of a result later; None keeps none.

    Returns:
        A `StoredSeries`: `volume`, the written file decoded (array [i, j, k] in the series' dtype, its
        voxel → RAS affine), and `slices`, the series' slice count (`"?"` when unknown).

    Raises:
        InvalidImage: (400) the files are not one decodable DICOM series.
        PayloadTooLarge: (413) the series is over a limit in `limits`.
    """
    series, headers = read_dicom_series_with_headers(paths, work_dir, limits=limits)
    shutil.rmtree(work_dir, ignore_errors=True)
    if headers_path is not None:
        save_headers(headers, headers_path)
    payload = encode_volume(series.array, series, fmt, dtype=series.array.dtype,
                            compress=fmt is not ImageFormat.NIFTI, gzip_level=gzip_level)
    out_path.write_bytes(payload)
    # Decode what was stored (not the DICOM arrays) so clicks see exactly the file's header and dtype.
    volume = read_volume(out_path, out_path.name, limits=limits)
    return StoredSeries(volume, series.extra.get("slices", "?"), dict(series.extra.get("ids", {})))

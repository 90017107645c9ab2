"""Limits every decoder checks before it allocates (a pure value object, passed in by the caller), and the
bounded read that fills the array a decoder allocated.

The defaults fit the largest volumes annotators send (1024 × 1024 × 2000 voxels); the server builds one
`DecodeLimits` from its settings (`--max_image_voxels`, `--max_image_mb`, ...) and hands it down.
`check_shape` and `check_png_pixels` are the one place the size limits are compared, so every format
refuses an oversized image with the same message naming the option that raises the limit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from aiaa_server.errors import InvalidImage, PayloadTooLarge

DEFAULT_MAX_VOXELS = 1024 * 1024 * 2000


@dataclass(frozen=True)
class DecodeLimits:
    """Bounds for decoding one uploaded image.

    Args:
        max_voxels: most voxels (all dimensions multiplied) one image may have.
        max_bytes: most bytes the decoded voxel array may take (the decompressed data too).
        max_png_pixels: most pixels of a PNG (width × height), checked from its header.
        max_dicom_files: most files (slices) of one DICOM series, zips expanded.
        dicom_timeout_s: seconds decoding one DICOM series may take before it is refused.
    """

    max_voxels: int = DEFAULT_MAX_VOXELS
    max_bytes: int = 8 * 2**30
    max_png_pixels: int = 2**26
    max_dicom_files: int = 20000
    dicom_timeout_s: float = 300.0


DEFAULT_LIMITS = DecodeLimits()


def _mib(nbytes: int) -> str:
    return f"{nbytes / 2**20:.6g} MiB"


def check_shape(shape: Sequence[int], itemsize: int, limits: DecodeLimits = DEFAULT_LIMITS,
                what: str = "image") -> int:
    """Refuse an image from its declared shape, before anything is allocated or decompressed for it.

    Args:
        shape: the declared size of every dimension, in any axis order (e.g. NIfTI [i, j, k], PNG [row, column]).
        itemsize: bytes one voxel of the decoded array takes (e.g. 2 for int16, 8 once scaled to float64).
        limits: the bounds to apply.
        what: how the message names the image (e.g. "NRRD image", "DICOM series").

    Returns:
        The byte size of the decoded array (voxels × itemsize).

    Raises:
        InvalidImage: fewer than 2 dimensions, or a dimension below 1 (no voxels).
        PayloadTooLarge: more voxels than `limits.max_voxels` (`--max_image_voxels`) or more bytes than
            `limits.max_bytes` (`--max_image_mb`).
    """
    dims = [int(size) for size in shape]  # Python ints: a hostile header's product must not overflow
    if len(dims) < 2:
        raise InvalidImage(f"{what} has shape {dims}: images need at least 2 dimensions", shape=dims)
    if min(dims) < 1:
        raise InvalidImage(f"{what} has shape {dims}: every dimension needs at least one voxel", shape=dims)
    voxels = math.prod(dims)
    if voxels > limits.max_voxels:
        raise PayloadTooLarge(
            f"{what} has shape {dims} = {voxels} voxels, over the limit of {limits.max_voxels} voxels "
            "(the server option --max_image_voxels raises it)", limit="max_image_voxels", shape=dims)
    nbytes = voxels * int(itemsize)
    if nbytes > limits.max_bytes:
        raise PayloadTooLarge(
            f"{what} of shape {dims} needs {_mib(nbytes)} decoded, over the limit of {_mib(limits.max_bytes)} "
            "(the server option --max_image_mb raises it)", limit="max_image_mb", shape=dims)
    return nbytes


def check_png_pixels(rows: int, columns: int, limits: DecodeLimits = DEFAULT_LIMITS) -> None:
    """Refuse a PNG whose header declares more than `limits.max_png_pixels` (`--max_png_pixels`) pixels.

    Args:
        rows: the image height from the PNG header.
        columns: the image width from the PNG header.
        limits: the bounds to apply.

    Raises:
        InvalidImage: a zero width or height.
        PayloadTooLarge: width × height over the limit.
    """
    if rows < 1 or columns < 1:
        raise InvalidImage(f"PNG declares {columns} x {rows} pixels: both must be at least 1")
    if rows * columns > limits.max_png_pixels:
        raise PayloadTooLarge(
            f"PNG declares {columns} x {rows} = {rows * columns} pixels, over the limit of {limits.max_png_pixels} "
            "(the server option --max_png_pixels raises it)", limit="max_png_pixels", shape=[rows, columns])


def read_exactly(stream: Any, array: np.ndarray, chunk: int = 16 * 2**20) -> None:
    """Fill `array` with its raw bytes from `stream` (a file or a decompressing reader), reading no further.

    Args:
        stream: anything with `readinto`; a gzip/bzip2 reader then decompresses at most `array.nbytes`
            (plus its internal buffer) whatever the compressed data would expand to.
        array: a C- or Fortran-contiguous array; its bytes are filled in memory order.
        chunk: bytes per `readinto` call (igzip decompresses one huge call into a temporary of its size).

    Raises:
        InvalidImage: the stream ends before the array is full (truncated file or lying header).
    """
    if not (array.flags.c_contiguous or array.flags.f_contiguous):
        raise ValueError("read_exactly fills contiguous arrays only")
    view = memoryview((array if array.flags.c_contiguous else array.T).reshape(-1).view(np.uint8))
    done = 0
    while done < len(view):
        read = stream.readinto(view[done : done + chunk])
        if not read:
            raise InvalidImage(f"the image data ends after {done} of the {len(view)} bytes its header declares "
                               "(truncated file?)")
        done += read


__all__ = ["DEFAULT_LIMITS", "DEFAULT_MAX_VOXELS", "DecodeLimits", "check_png_pixels", "check_shape", "read_exactly"]

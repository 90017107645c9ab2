"""Limits every decoder checks before it allocates: a pure value object, passed in by the caller.

The defaults fit the largest volumes annotators send (1024 × 1024 × 2000 voxels); the server builds one
`DecodeLimits` from its settings (`--max_image_voxels`, `--max_image_mb`, ...) and hands it down.
"""

from __future__ import annotations

from dataclasses import dataclass

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


__all__ = ["DEFAULT_MAX_VOXELS", "DecodeLimits"]

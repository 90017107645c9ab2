"""NIfTI/NRRD volumes with known geometry and known content."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from aiaa_server.imaging.masks import dice  # re-exported: the tests import it from here

__all__ = ["cube_volume", "dice", "interior_click", "lps_affine", "save_nifti"]


def lps_affine(spacing: tuple[float, float, float], origin: tuple[float, float, float] = (90.0, 110.0, -40.0)) -> np.ndarray:
    """The common DICOM-derived NIfTI layout: i → patient left... stored as diag(-sx, -sy, sz) in RAS."""
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    affine[:3, 3] = origin
    return affine


def cube_volume(
    shape: tuple[int, int, int] = (96, 80, 40),
    box: tuple[slice, slice, slice] = (slice(30, 60), slice(20, 50), slice(10, 30)),
    background: float = -800.0,
    foreground: float = 300.0,
) -> tuple[np.ndarray, np.ndarray]:
    """int16 HU volume with one bright box, and the box's mask."""
    image = np.full(shape, background, dtype=np.int16)
    mask = np.zeros(shape, dtype=np.uint8)
    image[box] = foreground
    mask[box] = 1
    return image, mask


def save_nifti(path: Path, array: np.ndarray, affine: np.ndarray) -> Path:
    image = nib.Nifti1Image(array, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    nib.save(image, str(path))
    return path


def interior_click(image: np.ndarray, truth: np.ndarray, spacing: tuple[float, ...]) -> list[int]:
    """Where an annotator clicks an organ: deep inside it, on a voxel of its typical intensity (not in a vessel
    or the renal sinus); [x, y, z] voxel indices."""
    values = image[truth]
    typical = truth & (np.abs(ndimage.gaussian_filter(image, 1.0) - np.median(values)) < 0.5 * values.std())
    depth = ndimage.distance_transform_edt(typical, sampling=spacing)
    return [int(i) for i in np.unravel_index(int(np.argmax(depth)), truth.shape)]

"""Geometry and NIfTI writing shared by the conversions: affines, grid checks, nearest-neighbour resampling.

Conventions of every file this package writes:

- array axis order [i, j, k]: NIfTI index order, i fastest on disk (the server's `Volume.array` order);
  a 2D-per-slice source stored [slice, row, column] is transposed to [column, row, slice].
- world: NIfTI RAS+ millimetres (+x to the patient's right, +y anterior, +z superior); sources in LPS
  (DICOM, NRRD `left-posterior-superior`, ITK) are converted with diag(-1, -1, 1).
- the affine (voxel [i, j, k] -> RAS mm) is written as both the sform and the qform, with no intensity
  scaling (slope 1, intercept 0): the stored voxels are the source's values.
- label maps are uint8 on exactly their image's grid (same shape and affine).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
AXIS_CODES = {"R": (1.0, 0.0, 0.0), "L": (-1.0, 0.0, 0.0), "A": (0.0, 1.0, 0.0), "P": (0.0, -1.0, 0.0),
              "S": (0.0, 0.0, 1.0), "I": (0.0, 0.0, -1.0)}
SCANNER, MNI = 1, 4  # NIfTI xform codes: scanner-based anatomical coordinates; MNI 152 normalised space


def affine_from_geometry(spacing: Sequence[float], origin: Sequence[float], direction: np.ndarray | None = None,
                         lps: bool = False) -> np.ndarray:
    """The 4 x 4 voxel [i, j, k] -> RAS+ mm affine of an ITK/NRRD/DICOM-style geometry.

    Args:
        spacing: voxel size in mm along i, j, k.
        origin: world position (mm) of the centre of voxel [0, 0, 0].
        direction: 3 x 3, column n the unit vector of array axis n in world coordinates (identity if None).
        lps: whether `origin` and `direction` are in LPS (DICOM, ITK, NRRD `left-posterior-superior`);
            if False they are already RAS.

    Returns:
        affine with affine[:3, n] = direction[:, n] * spacing[n] and affine[:3, 3] = origin, in RAS.
    """
    matrix = np.eye(3) if direction is None else np.asarray(direction, dtype=np.float64)
    affine = np.eye(4)
    affine[:3, :3] = matrix * np.asarray(spacing, dtype=np.float64)[None, :]
    affine[:3, 3] = np.asarray(origin, dtype=np.float64)
    return LPS_TO_RAS @ affine if lps else affine


def affine_from_axcodes(shape: Sequence[int], spacing: Sequence[float], axcodes: str,
                        origin: Sequence[float] | None = None) -> np.ndarray:
    """The RAS+ affine of an axis-aligned volume whose axes run towards `axcodes` (nibabel's letters).

    Args:
        shape: (I, J, K) voxels along the array axes i, j, k.
        spacing: voxel size in mm along i, j, k.
        axcodes: three letters, the direction each array axis increases towards, e.g. "LAS": i towards the
            patient's left, j anterior, k superior.
        origin: RAS position of voxel [0, 0, 0]; None centres the volume on the world origin (a source that
            stores no position, e.g. an InVesalius project).

    Returns:
        The 4 x 4 voxel -> RAS mm affine.
    """
    direction = np.stack([np.asarray(AXIS_CODES[c]) for c in axcodes.upper()], axis=1)
    affine = affine_from_geometry(spacing, (0.0, 0.0, 0.0), direction)
    if origin is None:
        centre = (np.asarray(shape, dtype=np.float64) - 1) / 2
        affine[:3, 3] = -affine[:3, :3] @ centre
    else:
        affine[:3, 3] = origin
    return affine


def spacing_of(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size in mm along i, j, k: the norms of the affine's first three columns."""
    return tuple(float(v) for v in np.linalg.norm(np.asarray(affine)[:3, :3], axis=0))  # type: ignore[return-value]


def same_grid(shape_a: Sequence[int], affine_a: np.ndarray, shape_b: Sequence[int], affine_b: np.ndarray,
              tol_mm: float = 1e-3) -> bool:
    """Whether two volumes share their voxel grid: equal shapes and affines within `tol_mm` mm."""
    return tuple(shape_a) == tuple(shape_b) and bool(np.allclose(affine_a, affine_b, atol=tol_mm, rtol=0))


def resample_nearest(labels: np.ndarray, labels_affine: np.ndarray, shape: Sequence[int],
                     affine: np.ndarray) -> np.ndarray:
    """Resample a label map onto another grid by nearest neighbour (labels are never blended).

    Args:
        labels: [i, j, k] label map on the grid of `labels_affine`.
        labels_affine: its voxel -> world affine.
        shape: (I, J, K) of the target grid.
        affine: the target's voxel -> world affine (the same world as `labels_affine`).

    Returns:
        [I, J, K] labels of `labels.dtype`; target voxels whose centre falls outside `labels` get 0.
    """
    target_to_source = np.linalg.inv(labels_affine) @ np.asarray(affine, dtype=np.float64)
    return ndimage.affine_transform(labels, target_to_source[:3, :3], offset=target_to_source[:3, 3],
                                    output_shape=tuple(int(s) for s in shape), order=0, mode="constant", cval=0,
                                    output=labels.dtype)


def labels_on_grid(labels: np.ndarray, labels_affine: np.ndarray, shape: Sequence[int],
                   affine: np.ndarray) -> tuple[np.ndarray, bool]:
    """`labels` as uint8 on the image grid (`shape`, `affine`): as they are when already on it, else resampled
    nearest-neighbour; the flag says whether they had to be resampled."""
    if np.any(labels < 0) or np.any(labels > 255):
        raise ValueError("label values must lie in 0..255")
    labels = np.asarray(labels).astype(np.uint8)
    if same_grid(labels.shape, labels_affine, shape, affine):
        return labels, False
    return resample_nearest(labels, labels_affine, shape, affine), True


def save_nifti(array: np.ndarray, affine: np.ndarray, path: Path, xform_code: int = SCANNER) -> Path:
    """Write `array` ([i, j, k], its own dtype, unscaled) with `affine` (voxel -> RAS mm) as a NIfTI-1 file.

    The file is written next to `path` under a temporary name and renamed, so a reader never sees half a
    file. `xform_code` is stored for both the sform and the qform (1 scanner, 4 MNI152).

    Returns:
        `path`.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    image = nib.Nifti1Image(np.asarray(array), np.asarray(affine, dtype=np.float64))
    image.header.set_data_dtype(array.dtype)
    image.header.set_slope_inter(1.0, 0.0)
    image.header.set_xyzt_units("mm")
    image.set_sform(affine, code=xform_code)
    image.set_qform(affine, code=xform_code)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    try:
        nib.save(image, str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_nifti(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The voxels ([i, j, k], stored dtype unless the file scales them) and voxel -> RAS affine of a NIfTI file."""
    image = nib.load(str(path))
    slope, inter = image.dataobj.slope, image.dataobj.inter  # type: ignore[attr-defined]
    unscaled = slope in (1.0, None) and inter in (0.0, None)
    data = image.dataobj.get_unscaled() if unscaled else image.get_fdata(dtype=np.float32)  # type: ignore[attr-defined]
    return np.asarray(data), image.affine


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 6-connected component of a binary mask, its enclosed holes filled."""
    components, count = ndimage.label(mask)
    if count == 0:
        return np.zeros(mask.shape, dtype=bool)
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    return ndimage.binary_fill_holes(components == int(np.argmax(sizes)))


def volume_facts(array: np.ndarray, affine: np.ndarray) -> dict[str, object]:
    """What the manifest records of a written array: shape, spacing (mm), dtype and orientation (axcodes)."""
    return {"shape": [int(s) for s in array.shape], "spacing": [round(s, 6) for s in spacing_of(affine)],
            "dtype": str(array.dtype), "axcodes": "".join(nib.aff2axcodes(affine))}

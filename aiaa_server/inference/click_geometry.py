"""Geometry of the click models' network grids: where a crop sits in the input, and the click heat-maps.

A `CropGeometry` holds the homogeneous matrix mapping network-grid voxel indices to input voxel indices.
Clicks go into the grid through its inverse; the result comes back through the matrix itself.  These are
plain numpy helpers: the demo models' training scripts use them too, so training sees what serving sees.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from aiaa_server.imaging.sampling import reached_range


@dataclass(frozen=True)
class CropGeometry:
    """How a network grid sits in the input: `matrix` maps grid voxel indices to input voxel indices
    (homogeneous, (n+1)×(n+1) for an n-D grid); 2D grids lie in the input slice `z = slice_index`."""

    matrix: np.ndarray
    grid_shape: tuple[int, ...]
    input_shape: tuple[int, int, int]
    slice_index: int | None = None

    @property
    def plane_shape(self) -> tuple[int, ...]:
        return self.input_shape[:2] if self.slice_index is not None else self.input_shape

    def to_grid(self, points: np.ndarray) -> np.ndarray:
        """Input voxel indices (N, n) → grid voxel coordinates (N, n), float."""
        return apply_matrix(np.linalg.inv(self.matrix), points)

    def footprint(self) -> tuple[np.ndarray, np.ndarray]:
        """The input index box [lo, hi) covered by the grid, clipped to the input."""
        first, last = reached_range(self.matrix, [0.0] * len(self.grid_shape), [s - 1.0 for s in self.grid_shape])
        return np.maximum(first, 0), np.minimum(last + 1, np.asarray(self.plane_shape))


@dataclass(frozen=True)
class CropPass:
    """A further DeepGrow 3D pass (`inference.crop_growth`): DeepgrowCropd samples its `spatial_size` at
    `scale` times its `pixdim`, centred on `centre` ((3,) input voxel coordinates [x, y, z]) moved as little
    as needed to keep the clicks inside the crop (see `keep_clicks_inside`)."""

    scale: float
    centre: np.ndarray


def apply_matrix(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Map points through a homogeneous matrix.

    Args:
        matrix: (n+1) × (n+1) homogeneous matrix.
        points: (N, n) points, or anything reshapeable to it.

    Returns:
        (N, n) float64 mapped points.
    """
    points = np.asarray(points, dtype=np.float64).reshape(-1, matrix.shape[0] - 1)
    return points @ matrix[:-1, :-1].T + matrix[:-1, -1]


def gaussian_heatmap(points: np.ndarray, shape: Sequence[int], sigma: float) -> np.ndarray:
    """Max over points of exp(-d²/2σ²).

    Args:
        points: (N, n) grid voxel coordinates.
        shape: the n spatial sizes of the grid.
        sigma: the Gaussian's width in grid voxels.

    Returns:
        float32 array of `shape`, in [0, 1]; zeros when there is no point.
    """
    heat = np.zeros(tuple(shape), dtype=np.float32)
    radius = int(np.ceil(4 * sigma))
    for point in np.asarray(points, dtype=np.float64).reshape(-1, len(shape)):
        lo = np.maximum(np.floor(point).astype(int) - radius, 0)
        hi = np.minimum(np.ceil(point).astype(int) + radius + 1, shape)
        if np.any(hi <= lo):
            continue
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        d2 = sum(
            ((np.arange(a, b) - p) ** 2).reshape([-1 if i == axis else 1 for i in range(len(shape))])
            for axis, (a, b, p) in enumerate(zip(lo, hi, point))
        )
        np.maximum(heat[box], np.exp(-d2 / (2 * sigma * sigma)).astype(np.float32), out=heat[box])
    return heat


def guidance_channel(points: np.ndarray, shape: Sequence[int], sigma: float,
                     value_range: Sequence[float] = (0.0, 1.0)) -> np.ndarray:
    """One guidance channel: `gaussian_heatmap`, min-max rescaled to `value_range` unless that is [0, 1].

    Args:
        points: (N, n) grid voxel coordinates.
        shape: the n spatial sizes of the grid.
        sigma: the Gaussian's width in grid voxels.
        value_range: (low, high) of the channel; with no point the channel is all `low`.

    Returns:
        float32 array of `shape`.
    """
    heat = gaussian_heatmap(points, shape, sigma)
    low, high = float(value_range[0]), float(value_range[1])
    if (low, high) == (0.0, 1.0):
        return heat
    span = float(heat.max() - heat.min())
    unit = (heat - heat.min()) / span if span > 0 else np.zeros_like(heat)
    return (low + (high - low) * unit).astype(np.float32)


def spacing_of(affine: np.ndarray) -> np.ndarray:
    """The voxel size in mm along each axis of a 4×4 voxel → world affine, shape (3,)."""
    return np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)


def deepgrow_crop_affine(centre_world: np.ndarray, spatial_size: Sequence[int], pixdim: Sequence[float]) -> np.ndarray:
    """RAS-aligned 4×4 affine of a `spatial_size` grid at `pixdim` mm whose centre is `centre_world` (3,)."""
    affine = np.eye(4)
    affine[:3, :3] = np.diag(np.asarray(pixdim, dtype=np.float64))
    affine[:3, 3] = centre_world - affine[:3, :3] @ ((np.asarray(spatial_size) - 1) / 2.0)
    return affine


def deepgrow_centre(foreground: np.ndarray, background: np.ndarray, current: np.ndarray | None,
                    extent_mm: np.ndarray, margin_mm: float = 16.0) -> np.ndarray:
    """World centre of the DeepGrow 3D crop.

    Args:
        foreground, background: (N, 3) world coordinates of the clicks.
        current: (1, 3) world coordinates of the newest click, or None.
        extent_mm: (3,) size of the crop in mm.
        margin_mm: how far inside the crop the clicks' box must stay.

    Returns:
        (3,) the foreground clicks' box centre (all clicks' when there is no foreground click); the newest
        click when the box does not fit in the crop with the margin.
    """
    clicks = foreground if len(foreground) else np.concatenate([background, current if current is not None
                                                                 else np.zeros((0, 3))])
    lo, hi = clicks.min(axis=0), clicks.max(axis=0)
    centre = (lo + hi) / 2.0
    if current is not None and np.any(np.abs(current[0] - centre) > extent_mm / 2.0 - margin_mm):
        return current[0]
    return centre


def keep_clicks_inside(centre: np.ndarray, clicks: np.ndarray, extent_mm: np.ndarray, margin_mm: float = 16.0
                       ) -> np.ndarray:
    """`centre` moved (per axis, as little as possible) so that the clicks stay `margin_mm` inside the crop.

    Args:
        centre: (3,) the wanted world centre of the crop.
        clicks: (N, 3) world coordinates of the clicks to keep inside (N may be 0).
        extent_mm: (3,) size of the crop in mm.
        margin_mm: how far inside the crop the clicks must stay.

    Returns:
        (3,) world centre; on an axis where the clicks span more than the crop allows, their box centre.
    """
    if not len(clicks):
        return np.asarray(centre, dtype=np.float64)
    lo, hi = clicks.min(axis=0), clicks.max(axis=0)
    reach = np.maximum(np.asarray(extent_mm, dtype=np.float64) / 2.0 - margin_mm, 0.0)
    first, last = hi - reach, lo + reach
    return np.where(first <= last, np.clip(centre, first, last), (lo + hi) / 2.0)


def slice_of_clicks(fg: np.ndarray, bg: np.ndarray, current: np.ndarray) -> int:
    """The slice a 2D DeepGrow call works on: current_point z, else the newest foreground/background click z.

    Args:
        fg, bg, current: (N, 3) input voxel indices [x, y, z]; at least one of them holds a click (as
            `DeepgrowClicks` guarantees).
    """
    newest = next(clicks for clicks in (current, fg, bg) if len(clicks))
    return int(newest[-1, 2])


def dextr_box(points: np.ndarray, spacing: np.ndarray, shape: Sequence[int], pad_mm: float
              ) -> tuple[np.ndarray, np.ndarray]:
    """Index box [lo, hi] (inclusive) of the points (N, 3) padded by `pad_mm` per axis, clipped to the image.

    Args:
        points: (N, 3) input voxel indices.
        spacing: (3,) voxel size in mm.
        shape: the input's (X, Y, Z) size.
        pad_mm: padding in mm (divided by the spacing per axis, rounded up).
    """
    pad = np.ceil(pad_mm / spacing)
    lo = np.maximum(points.min(axis=0) - pad, 0)
    hi = np.minimum(points.max(axis=0) + pad, np.asarray(shape) - 1)
    return lo, hi


def box_matrix(lo: np.ndarray, hi: np.ndarray, grid_shape: Sequence[int]) -> np.ndarray:
    """Grid voxel → input voxel (n+1)×(n+1) matrix of a grid spanning the inclusive index box [lo, hi]
    (corner-aligned)."""
    n = len(grid_shape)
    matrix = np.eye(n + 1)
    scale = (np.asarray(hi, dtype=np.float64) - lo) / np.maximum(np.asarray(grid_shape) - 1, 1)
    matrix[:n, :n] = np.diag(scale)
    matrix[:n, n] = lo
    return matrix

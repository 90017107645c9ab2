"""The click models' results: a network-grid probability pasted back on the input grid, and the foreground
components no click lands in (dropped by `KeepClickedComponentsd`)."""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from aiaa_server.imaging.masks import foreground_box
from aiaa_server.imaging.sampling import reached_range, sample_grid
from aiaa_server.inference.click_geometry import CropGeometry


def paste_to_input(probability: torch.Tensor, geometry: CropGeometry, threshold: float = 0.5
                   ) -> tuple[np.ndarray, list[list[int]]]:
    """Put a network-grid probability map back on the input grid.

    Args:
        probability: (1, *grid) probabilities on `geometry`'s grid.
        geometry: where the grid sits in the input.
        threshold: voxels whose interpolated probability reaches it are foreground.

    Returns:
        a uint8 mask of the input shape (X, Y, Z) in Fortran order (as NIfTI stores it, so encoding it is a
        plain copy), and the covered input box `[[x0, x1], [y0, y1], [z0, z1]]` (end-exclusive).
    """
    lo, hi = geometry.footprint()
    mask = np.zeros(geometry.input_shape, dtype=np.uint8, order="F")
    if np.any(hi <= lo):
        return mask, [[0, 0]] * 3
    if geometry.slice_index is None:
        crop = [[int(a), int(b)] for a, b in zip(lo, hi)]
    else:
        z = geometry.slice_index
        crop = [[int(lo[0]), int(hi[0])], [int(lo[1]), int(hi[1])], [z, z + 1]]
    box = _positive_box(probability[0], geometry, threshold, lo, hi)
    if box is None:
        return mask, crop
    box_lo, box_hi = box
    box_shape = tuple(int(b - a) for a, b in zip(box_lo, box_hi))
    n = len(box_shape)
    to_box = np.eye(n + 1)
    to_box[:n, n] = box_lo
    values = sample_grid(probability.float(), np.linalg.inv(geometry.matrix) @ to_box, box_shape,
                         padding_mode="zeros")[0]
    inside = (values >= threshold).numpy()
    region = tuple(slice(int(a), int(b)) for a, b in zip(box_lo, box_hi))
    if geometry.slice_index is not None:
        region = (*region, geometry.slice_index)
    mask[region] = inside
    return mask, crop


def _positive_box(probability: torch.Tensor, geometry: CropGeometry, threshold: float, lo: np.ndarray,
                  hi: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """The input box [lo, hi) outside which the interpolated probability is below `threshold`, or None when
    it is below everywhere.  Linear interpolation is a weighted mean of the neighbouring grid voxels, so an
    input voxel can only reach the threshold within one grid voxel of a grid voxel that does."""
    if threshold <= 0:
        return lo, hi
    above = foreground_box((probability >= threshold).numpy())
    if above is None:
        return None
    first, last = reached_range(geometry.matrix, [b.start - 1.0 for b in above], [b.stop for b in above])
    box_lo = np.maximum(first, lo)
    box_hi = np.minimum(last + 1, hi)
    if np.any(box_hi <= box_lo):
        return None
    return box_lo, box_hi


def unclicked_components(foreground: np.ndarray, clicks: np.ndarray
                         ) -> tuple[tuple[slice, ...], np.ndarray] | None:
    """The foreground components no click lands in.

    Args:
        foreground: boolean mask of n axes.
        clicks: (N, n) integer voxel indices of the foreground clicks, in the mask's index space.

    Returns:
        (box, boolean map within the box) of the components to drop; None when there is nothing to drop (no
        foreground, no click inside it, or every component clicked).
    """
    clicks = clicks.reshape(-1, foreground.ndim)
    if not len(clicks):
        return None
    box = foreground_box(foreground)
    if box is None:
        return None
    components, count = ndimage.label(foreground[box])
    local = clicks - np.array([b.start for b in box])
    inside = np.all((local >= 0) & (local < np.array(components.shape)), axis=1)
    hit = {int(components[tuple(c)]) for c in local[inside]} - {0}
    if not hit or len(hit) == count:
        return None
    return box, (components > 0) & ~np.isin(components, sorted(hit))

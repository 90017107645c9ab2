"""Binary erosion and dilation by the 6-neighbour cross, with plain array slicing.

Several times faster than `scipy.ndimage.binary_erosion` on large boolean volumes (no generic structuring
element), which matters on the click path: the region grower opens and grows masks of up to 256³ voxels a
few times per click.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _shifted_pairs(shape: Sequence[int]) -> list[tuple[tuple[slice, ...], tuple[slice, ...]]]:
    """(target, source) slice pairs of the face-neighbour shifts of an array of `shape` (two per axis)."""
    pairs = []
    for axis in range(len(shape)):
        ahead = tuple(slice(1, None) if a == axis else slice(None) for a in range(len(shape)))
        behind = tuple(slice(None, -1) if a == axis else slice(None) for a in range(len(shape)))
        pairs += [(ahead, behind), (behind, ahead)]
    return pairs


def erode_cross(mask: np.ndarray) -> np.ndarray:
    """Erosion by the face-neighbour cross (one step).

    Args:
        mask: boolean array of any number of axes.

    Returns:
        A new boolean array: the voxels of `mask` whose face neighbours are all in it; outside the array counts
        as inside the mask (its faces do not erode).
    """
    out = mask.copy()
    for target, source in _shifted_pairs(mask.shape):
        out[target] &= mask[source]
    return out


def dilate_cross(mask: np.ndarray, within: np.ndarray | None = None) -> np.ndarray:
    """Dilation by the face-neighbour cross (one step), optionally kept inside `within`.

    Args:
        mask: boolean array of any number of axes.
        within: boolean array of the same shape the result is limited to; None: no limit.

    Returns:
        A new boolean array: `mask` and its face neighbours (and `within`).
    """
    out = mask.copy()
    for target, source in _shifted_pairs(mask.shape):
        out[target] |= mask[source]
    return out if within is None else out & within


__all__ = ["dilate_cross", "erode_cross"]

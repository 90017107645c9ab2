"""Facts about label masks that clients read back: extreme points and bounding boxes ([x, y, z] voxels)."""

from __future__ import annotations

import numpy as np


def _extent(mask: np.ndarray, axis: int) -> tuple[int, int] | None:
    others = tuple(a for a in range(mask.ndim) if a != axis)
    present = np.flatnonzero(mask.any(axis=others))
    if present.size == 0:
        return None
    return int(present[0]), int(present[-1])


def _point_on_face(mask: np.ndarray, axis: int, index: int) -> list[int]:
    """The foreground voxel of the slice `index` along `axis` closest to that slice's foreground centroid."""
    face = np.take(mask, index, axis=axis)
    coords = np.argwhere(face)
    centre = coords.mean(axis=0)
    chosen = coords[np.argmin(((coords - centre) ** 2).sum(axis=1))]
    point = [int(c) for c in chosen]
    point.insert(axis, index)
    return point


def extreme_points(mask: np.ndarray) -> list[list[int]]:
    """The 6 extreme points of the foreground: min and max along each axis, as [x, y, z] voxel indices."""
    foreground = np.asarray(mask) > 0
    points: list[list[int]] = []
    for axis in range(foreground.ndim):
        extent = _extent(foreground, axis)
        if extent is None:
            return []
        points.append(_point_on_face(foreground, axis, extent[0]))
        points.append(_point_on_face(foreground, axis, extent[1]))
    return points


def bounding_box(mask: np.ndarray) -> list[list[int]]:
    """`[[min x, y, z], [max x, y, z]]` (inclusive) of the foreground, `[]` when empty."""
    foreground = np.asarray(mask) > 0
    lows, highs = [], []
    for axis in range(foreground.ndim):
        extent = _extent(foreground, axis)
        if extent is None:
            return []
        lows.append(extent[0])
        highs.append(extent[1])
    return [lows, highs]

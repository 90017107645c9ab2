"""Facts about label masks that clients read back: extreme points and bounding boxes ([x, y, z] voxels)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

MAX_CENTROID_LABELS = 1024  # a model has at most a few hundred labels; bounds the per-label work


def _point_on_face(mask: np.ndarray, axis: int, index: int) -> list[int]:
    """The foreground voxel of the slice `index` along `axis` closest to that slice's foreground centroid."""
    face = mask[(slice(None),) * axis + (index,)]  # a view: np.take would copy through the array's strides
    coords = np.argwhere(face)
    centre = coords.mean(axis=0)
    chosen = coords[np.argmin(((coords - centre) ** 2).sum(axis=1))]
    point = [int(c) for c in chosen]
    point.insert(axis, index)
    return point


def extreme_points(mask: np.ndarray) -> list[list[int]]:
    """The 6 extreme points of the foreground: min and max along each axis, as [x, y, z] voxel indices.

    Args:
        mask: (X, Y, Z) label mask in NIfTI index order (a 2D (X, Y) one gives 4 points); foreground is > 0.

    Returns:
        [min x, max x, min y, max y, min z, max z] points, each the foreground voxel on that face of the
        bounding box nearest the face's foreground centroid; `[]` when the mask is empty.
    """
    array = np.asarray(mask)
    box = foreground_box(array)
    if box is None:
        return []
    inside = array[box] > 0  # the faces are searched within the box only: no volume-sized boolean copy
    origin = [extent.start for extent in box]
    points: list[list[int]] = []
    for axis, extent in enumerate(inside.shape):
        for index in (0, extent - 1):
            point = _point_on_face(inside, axis, index)
            points.append([int(p + o) for p, o in zip(point, origin)])
    return points


def foreground_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """The smallest index box holding every voxel > 0 (None when there is none).

    Axes are narrowed one after the other, last axis first (contiguous in a Fortran-ordered NIfTI mask), so
    a small object in a large volume costs about one pass over the volume. Reductions read the mask as it
    is (no volume-sized boolean copy)."""
    array = np.asarray(mask)
    box = [slice(0, n) for n in array.shape]
    for axis in reversed(range(array.ndim)):
        others = tuple(a for a in range(array.ndim) if a != axis)
        present = np.flatnonzero(array[tuple(box)].max(axis=others) > 0) if array.size else np.zeros(0)
        if present.size == 0:
            return None
        box[axis] = slice(int(present[0]), int(present[-1]) + 1)
    return tuple(box)


def bounding_box(mask: np.ndarray) -> list[list[int]]:
    """`[[min x, y, z], [max x, y, z]]` (inclusive voxel indices) of the voxels > 0 of an (X, Y, Z) mask, `[]` when
    empty (a 2D (X, Y) mask gives `[[min x, y], [max x, y]]`)."""
    box = foreground_box(mask)
    if box is None:
        return []
    return [[b.start for b in box], [b.stop - 1 for b in box]]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap 2|A∩B| / (|A| + |B|) of two same-shape masks, foreground being voxels > 0.

    1.0 when both masks are empty (they agree); 0.0 when exactly one is. Used by the tests and the demo
    models' evaluation scripts to score a predicted mask against the truth.
    """
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def label_centroids(labels: np.ndarray, count: int) -> dict[int, list[int]]:
    """The mean voxel index of each label value 1..`count` present in `labels`.

    Works label by label inside its bounding box on per-axis voxel counts, so it needs no full-size temporary.

    Args:
        labels: (X, Y, Z) integer label map.
        count: the highest label value looked for (at most MAX_CENTROID_LABELS).

    Returns:
        `{value: [x, y, z]}` (truncated means, as MONAI Label's `GetCentroidsd`) for each value that occurs.
    """
    count = min(count, MAX_CENTROID_LABELS)
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer) or labels.dtype.itemsize > 4:
        labels = labels.astype(np.int32)
    if labels.flags.f_contiguous and not labels.flags.c_contiguous:  # NIfTI's order: scan it in memory order
        boxes = [box[::-1] if box is not None else None for box in ndimage.find_objects(labels.T, max_label=count)]
    else:  # values above `count` are ignored
        boxes = ndimage.find_objects(labels, max_label=count)
    centroids = {}
    for value, box in enumerate(boxes, start=1):
        if box is None:
            continue
        inside = labels[box] == value
        total = int(inside.sum())
        axes = range(inside.ndim)
        centroids[value] = [int(start.start + np.dot(np.arange(inside.shape[axis]),
                                                     inside.sum(axis=tuple(a for a in axes if a != axis))) // total)
                            for axis, start in zip(axes, box, strict=True)]
    return centroids

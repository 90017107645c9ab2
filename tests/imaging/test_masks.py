"""Extreme points, bounding boxes and label centroids."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from aiaa_server.imaging.masks import bounding_box, extreme_points, foreground_box, label_centroids


def test_extreme_points_of_a_blob() -> None:
    mask = np.zeros((30, 20, 10), np.uint8)
    zz, yy, xx = np.meshgrid(np.arange(30), np.arange(20), np.arange(10), indexing="ij")
    mask[((zz - 15) / 8) ** 2 + ((yy - 9) / 6) ** 2 + ((xx - 4) / 3) ** 2 <= 1] = 1
    points = extreme_points(mask)
    assert len(points) == 6
    assert all(mask[tuple(p)] for p in points)
    foreground = np.argwhere(mask)
    for axis in range(3):
        assert points[2 * axis][axis] == foreground[:, axis].min()
        assert points[2 * axis + 1][axis] == foreground[:, axis].max()
    assert bounding_box(mask) == [foreground.min(0).tolist(), foreground.max(0).tolist()]


def test_empty_mask_has_no_points() -> None:
    empty = np.zeros((5, 5, 5))
    assert extreme_points(empty) == []
    assert bounding_box(empty) == []


@pytest.mark.parametrize("order", ["C", "F"])
def test_foreground_box_is_the_tightest_box(order: str) -> None:
    mask = np.zeros((30, 40, 20), np.uint8, order=order)
    mask[3, 10:12, 7] = 1
    mask[20, 35, 15] = 2
    assert foreground_box(mask) == (slice(3, 21), slice(10, 36), slice(7, 16))
    assert foreground_box(np.zeros((4, 4), bool)) is None
    assert bounding_box(mask) == [[3, 10, 7], [20, 35, 15]]


def test_extreme_points_are_the_same_in_either_memory_order() -> None:
    labels = np.zeros((30, 20, 10), dtype=np.uint8)
    labels[5:12, 3:9, 2:7] = 1
    labels[20, 15, 8] = 2
    assert extreme_points(np.asfortranarray(labels)) == extreme_points(labels)
    assert extreme_points(labels)[1] == [20, 15, 8]  # max x: the lone voxel


def test_label_centroids_are_the_mean_voxel_index_of_each_present_label() -> None:
    labels = np.zeros((20, 16, 12), dtype=np.uint8)
    labels[2:6, 4:8, 1:3] = 1
    labels[10:19, 0:1, 5:12] = 3
    labels[0, 0, 0] = 9  # above the model's labels: ignored
    assert label_centroids(labels, 3) == {1: [3, 5, 1], 3: [14, 0, 8]}
    assert label_centroids(labels.astype(np.float32), 3) == {1: [3, 5, 1], 3: [14, 0, 8]}
    assert label_centroids(np.asfortranarray(labels), 3) == {1: [3, 5, 1], 3: [14, 0, 8]}  # NIfTI's layout
    assert label_centroids(np.zeros((4, 4, 4), dtype=np.uint8), 2) == {}


def test_box_and_points_make_no_volume_sized_copy() -> None:
    """A full-size mask (75 MiB for 512×512×300) is searched as it is: no boolean copy of the volume."""
    mask = np.zeros((256, 256, 120), np.uint8, order="F")
    mask[100:140, 90:150, 30:70] = 1
    tracemalloc.start()
    try:
        points, box = extreme_points(mask), bounding_box(mask)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert box == [[100, 90, 30], [139, 149, 69]]
    assert [p[0] for p in points[:2]] == [100, 139]
    assert peak < mask.nbytes / 4  # the box (96 000 voxels) and per-axis reductions only


def test_only_positive_values_are_foreground() -> None:
    mask = np.zeros((10, 10, 10), np.int16)
    mask[2, 3, 4] = -1
    mask[5:7, 5, 5] = 3
    assert bounding_box(mask) == [[5, 5, 5], [6, 5, 5]]
    assert extreme_points(mask)[0] == [5, 5, 5]

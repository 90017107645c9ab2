"""aiaa.transforms: restoring results onto the client's grid."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import SpatialResample

from aiaa_server.inference.transforms import restore_to_grid


def _monai_nearest(array: np.ndarray, source: np.ndarray, target: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    moved = SpatialResample(mode="nearest", padding_mode="zeros", dtype=torch.float32)(
        MetaTensor(torch.as_tensor(array[None]).float(), affine=torch.as_tensor(source)),
        dst_affine=torch.as_tensor(target), spatial_size=shape,
    )
    return moved.as_tensor()[0].round().to(torch.uint8).numpy()


@pytest.mark.parametrize(
    "target",
    [
        np.diag([0.83, 0.91, 2.47, 1.0]),                                                    # scale only
        np.array([[-0.83, 0, 0, 30.1], [0, -0.91, 0, 25.3], [0, 0, 2.47, -4.2], [0, 0, 0, 1]]),  # LPS flips
        np.array([[0, 0.71, 0, 3.1], [1.13, 0, 0, -2.2], [0, 0, -2.03, 40.1], [0, 0, 0, 1]]),    # permutation
    ],
)
def test_axis_aligned_restore_matches_monai_resampling(target: np.ndarray) -> None:
    """Same voxels as MONAI's grid resampling (geometries chosen without exact half-voxel ties, where the two
    may round differently)."""
    rng = np.random.default_rng(3)
    labels = (rng.random((24, 20, 12)) > 0.6).astype(np.uint8)
    source = np.diag([2.0, 2.0, 2.0, 1.0])
    source[:3, 3] = [-10.0, -8.0, -6.0]
    shape = (50, 44, 20)
    fast = restore_to_grid(torch.as_tensor(labels), source, target, shape, "nearest")
    assert fast.shape == shape
    np.testing.assert_array_equal(fast, _monai_nearest(labels, source, target, shape))


def test_oblique_grids_fall_back_to_monai() -> None:
    angle = np.deg2rad(20)
    target = np.eye(4)
    target[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    labels = np.zeros((16, 16, 8), np.uint8)
    labels[4:12, 4:12, 2:6] = 1
    source = np.eye(4)
    restored = restore_to_grid(torch.as_tensor(labels), source, target, (16, 16, 8), "nearest")
    np.testing.assert_array_equal(restored, _monai_nearest(labels, source, target, (16, 16, 8)))

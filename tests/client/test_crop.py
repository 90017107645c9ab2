"""Client-side DExtr3D crop math (protocol 7.2 mode 1) without a server."""

from __future__ import annotations

import numpy as np
import pytest
from aiaa_client.crop import (
    crop_affine,
    crop_and_resample,
    paste_back,
    plan_crop,
    resample_linear,
    scale_points,
    unscale_points,
)

POINTS = [[30, 35, 20], [59, 35, 20], [45, 20, 20], [45, 49, 20], [45, 35, 10], [45, 35, 29]]


def test_pad_is_millimetres_converted_per_axis_and_clipped():
    plan = plan_crop(POINTS, (96, 80, 40), (0.8, 0.9, 2.5), pad=20.0)
    assert plan.start == (30 - 25, 0, 10 - 8)  # j would be 20 - 22 < 0: clipped
    assert plan.stop == (59 + 25 + 1, 49 + 22 + 1, 29 + 8 + 1)
    assert plan.roi == (128, 128, 128)
    clipped = plan_crop(POINTS, (60, 50, 30), (1.0, 1.0, 1.0), pad=100.0)
    assert (clipped.start, clipped.stop) == ((0, 0, 0), (60, 50, 30))


def test_points_scale_into_roi_grid():
    plan = plan_crop(POINTS, (96, 80, 40), (1.0, 1.0, 1.0), pad=0.0, roi=(60, 60, 40))
    assert plan.size == (30, 30, 20)
    scaled = scale_points(POINTS, plan)
    assert scaled[0] == [0, 30, 20] and scaled[1] == [58, 30, 20] and scaled[5] == [30, 30, 38]
    assert all(0 <= v < r for p in scaled for v, r in zip(p, plan.roi))


def test_crop_affine_maps_resampled_voxels_to_the_same_world_points():
    affine = np.diag([-0.8, -0.9, 2.5, 1.0])
    affine[:3, 3] = (90, 110, -40)
    plan = plan_crop(POINTS, (96, 80, 40), (0.8, 0.9, 2.5), roi=(40, 36, 18))
    small = crop_affine(affine, plan)
    # resampled voxel j sits on crop voxel j * scale = full voxel start + j * scale
    j = np.array([10, 12, 6])
    full_index = np.array(plan.start) + j * np.array(plan.scale)
    assert np.allclose(small @ [*j, 1], affine @ [*full_index, 1])


def test_identity_resample_and_exact_round_trip():
    rng = np.random.default_rng(0)
    volume = rng.normal(size=(20, 18, 12)).astype(np.float32)
    assert np.allclose(resample_linear(volume, volume.shape, (1.0, 1.0, 1.0)), volume)
    plan = plan_crop([[3, 3, 3], [15, 14, 9]], volume.shape, (1.0, 1.0, 1.0), pad=1.0, roi=(15, 14, 9))
    crop = crop_and_resample(volume, plan)
    assert np.allclose(crop, volume[2:17, 2:16, 2:11])
    mask = (crop > 0).astype(np.uint8)
    full = paste_back(mask, plan, volume.shape)
    assert np.array_equal(full[2:17, 2:16, 2:11], mask) and full.sum() == mask.sum()


def test_linear_resample_interpolates_between_voxels():
    ramp = np.arange(11, dtype=np.float32)[:, None, None] * np.ones((1, 2, 2), np.float32)
    half = resample_linear(ramp, (21, 2, 2), (0.5, 1.0, 1.0))
    assert np.allclose(half[:, 0, 0], np.arange(21) * 0.5)


def test_upsampled_mask_goes_back_nearest():
    plan = plan_crop([[0, 0, 0], [9, 9, 9]], (10, 10, 10), (1.0, 1.0, 1.0), pad=0.0, roi=(20, 20, 20))
    mask = np.zeros((20, 20, 20), np.uint8)
    mask[:10] = 1  # crop voxels 0..4 along i
    full = paste_back(mask, plan, (10, 10, 10))
    assert full[:5].all() and not full[5:].any()


def test_bad_inputs():
    with pytest.raises(ValueError):
        plan_crop([], (10, 10, 10), (1, 1, 1))
    with pytest.raises(ValueError):
        plan_crop([[50, 0, 0]], (10, 10, 10), (1, 1, 1), pad=0.0)
    plan = plan_crop(POINTS, (96, 80, 40), (1, 1, 1))
    with pytest.raises(ValueError, match="mask"):
        paste_back(np.zeros((10, 10, 10)), plan, (96, 80, 40))


def test_unscaled_points_land_back_on_the_full_image_grid():
    plan = plan_crop(POINTS, (96, 80, 40), (0.8, 0.9, 2.5), pad=20.0, roi=(64, 64, 64))
    back = unscale_points(scale_points(POINTS, plan), plan)
    for original, mapped in zip(POINTS, back):
        # one crop-grid voxel spans `scale` full-image voxels: the round trip is exact to that resolution
        assert all(abs(o - m) <= s for o, m, s in zip(original, mapped, plan.scale))
        assert all(a <= m < b for m, a, b in zip(mapped, plan.start, plan.stop))

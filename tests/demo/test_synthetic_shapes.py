"""The synthetic shape generator and the simulated clicks used to train/evaluate the interactive models."""

from __future__ import annotations

import numpy as np
import pytest

from aiaa_demo.synthetic_shapes import (
    ALL_FAMILIES,
    HELDOUT_FAMILIES,
    TRAIN_FAMILIES,
    Clicks,
    dice,
    extreme_points,
    first_click,
    make_scene,
    next_click,
    pick_object,
)


def test_scene_is_deterministic_per_seed() -> None:
    a = make_scene(np.random.default_rng(7), shape=(48, 48, 32))
    b = make_scene(np.random.default_rng(7), shape=(48, 48, 32))
    c = make_scene(np.random.default_rng(8), shape=(48, 48, 32))
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert not np.array_equal(a.image, c.image)


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_each_family_produces_labelled_objects_brighter_or_darker_than_surroundings(family: str) -> None:
    scene = make_scene(np.random.default_rng(1), shape=(64, 64, 48), spacing=(2.0, 2.0, 2.0), families=[family],
                       noise_hu=(1.0, 2.0))
    assert scene.image.dtype == np.float32 and scene.labels.shape == scene.image.shape
    assert set(scene.families) == {family}
    sizes = scene.object_sizes()
    assert len(sizes) == len(scene.families) and sizes.max() > 200
    label = int(np.argmax(sizes)) + 1
    inside = scene.image[scene.labels == label].mean()
    outside = scene.image[scene.labels == 0].mean()
    assert abs(inside - outside) > 20.0  # objects differ from the background in HU


def test_heldout_families_are_not_training_families() -> None:
    assert not set(HELDOUT_FAMILIES) & set(TRAIN_FAMILIES)


def test_affine_follows_spacing_and_layout() -> None:
    scene = make_scene(np.random.default_rng(2), shape=(40, 30, 20), spacing=(0.8, 0.9, 2.5), lps=True)
    np.testing.assert_allclose(np.diag(scene.affine)[:3], [-0.8, -0.9, 2.5])
    assert scene.spacing == pytest.approx((0.8, 0.9, 2.5))


def _ball(shape: tuple[int, int, int] = (40, 40, 40), centre=(20, 20, 20), radius: float = 10.0) -> np.ndarray:
    grid = np.indices(shape)
    return sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius ** 2


def test_first_click_is_deep_inside() -> None:
    mask = _ball()
    assert first_click(mask) == [20, 20, 20]
    jittered = first_click(mask, np.random.default_rng(0), jitter=0.3)
    assert mask[tuple(jittered)]
    assert np.linalg.norm(np.subtract(jittered, 20)) <= 10 * 0.3 + 1


def test_next_click_targets_the_largest_error() -> None:
    truth = _ball()
    missing = truth.copy()
    missing[:20] = False  # half the ball predicted: a false-negative region
    is_fg, point = next_click(truth, missing)
    assert is_fg and truth[tuple(point)] and not missing[tuple(point)]
    leaking = truth | _ball(centre=(20, 20, 34), radius=6)
    is_fg, point = next_click(truth, leaking)
    assert not is_fg and leaking[tuple(point)] and not truth[tuple(point)]
    assert next_click(truth, truth) is None


def test_extreme_points_lie_on_the_bounding_faces() -> None:
    mask = _ball(radius=8)
    points = extreme_points(mask)
    assert len(points) == 6
    assert all(mask[tuple(p)] for p in points)
    assert min(p[0] for p in points) == 12 and max(p[0] for p in points) == 28


def test_clicks_params_and_dice() -> None:
    clicks = Clicks(foreground=[[1, 2, 3]], current=[1, 2, 3])
    assert clicks.params() == {"foreground": [[1, 2, 3]], "background": [], "current_point": [[1, 2, 3]]}
    a = np.zeros((4, 4, 4), bool)
    a[:2] = True
    assert dice(a, a) == 1.0 and dice(a, ~a) == 0.0


def test_pick_object_skips_tiny_objects() -> None:
    scene = make_scene(np.random.default_rng(3), shape=(48, 48, 48))
    label = pick_object(np.random.default_rng(0), scene, min_voxels=50)
    assert label is not None and scene.object_sizes()[label - 1] >= 50
    assert pick_object(np.random.default_rng(0), scene, min_voxels=10**9) is None

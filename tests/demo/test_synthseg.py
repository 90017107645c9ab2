"""SynthSeg-style training scenes: held-out regions gone from the label maps, painted scenes, targets."""

from __future__ import annotations

import numpy as np
import pytest

from aiaa_demo.datasets import FETCH_HINT, available, default_cache
from aiaa_demo.synthseg import (
    HEAD,
    WHITE_MATTER,
    LabelMap,
    aal_head_map,
    choose_target,
    held_out_values,
    mixed_scene,
    paint,
    painted_scene,
    remove_labels,
)


def _boxes_map(rng: np.random.Generator) -> LabelMap:
    """Three touching boxes (labels 1, 2, 3) and a small cube (4) in a 60³ map at 1.5 mm."""
    labels = np.zeros((60, 60, 60), dtype=np.uint8)
    labels[10:30, 10:50, 10:50] = 1
    labels[30:50, 10:50, 10:30] = 2
    labels[30:50, 10:50, 30:50] = 3
    labels[52:56, 52:56, 52:56] = 4
    return LabelMap.build("boxes", labels, np.full(3, 1.5), (1, 2, 3, 4), rng)


def test_held_out_values_are_the_evaluated_regions_on_both_sides() -> None:
    names = {"Amygdala_L": 41, "Amygdala_R": 42, "Putamen_R": 74, "Cerebelum_Crus1_L": 91, "Vermis_1_2": 109,
             "Temporal_Mid_L": 85, "Temporal_Sup_L": 81, "Precentral_L": 1}
    assert sorted(held_out_values(names)) == [41, 42, 74, 85, 91]


def test_remove_labels_fills_removed_voxels_with_their_nearest_other_label() -> None:
    labels = np.zeros((9, 1, 1), dtype=np.uint8)
    labels[:3, 0, 0], labels[3:6, 0, 0], labels[6:, 0, 0] = 1, 7, 2
    out = remove_labels(labels, [7])
    assert 7 not in out
    assert out[:, 0, 0].tolist() == [1, 1, 1, 1, 1, 2, 2, 2, 2] or out[:, 0, 0].tolist() == [1, 1, 1, 1, 2, 2, 2, 2, 2]
    assert (out[labels != 7] == labels[labels != 7]).all()


def test_label_map_points_lie_inside_their_labels() -> None:
    source = _boxes_map(np.random.default_rng(0))
    assert source.targets == (1, 2, 3, 4)
    for value, points in source.points.items():
        assert len(points) == min(64, int((source.labels == value).sum()))
        assert (source.labels[tuple(points.T)] == value).all()


def test_choose_target_is_the_seed_label_or_its_union_with_touching_labels() -> None:
    labels = _boxes_map(np.random.default_rng(0)).labels
    seen = set()
    for seed in range(30):
        target = choose_target(np.random.default_rng(seed), labels, 2, (1, 2, 3, 4))
        values = frozenset(np.unique(labels[target]).tolist())
        assert 2 in values and 4 not in values and 0 not in values  # 4 does not touch 2
        seen.add(values)
    assert frozenset({2}) in seen and len(seen) > 1


def test_paint_gives_each_label_its_own_intensity_up_to_noise() -> None:
    labels = _boxes_map(np.random.default_rng(0)).labels
    target = labels == 1
    image = paint(np.random.default_rng(1), labels, np.full(3, 1.5), target)
    assert image.shape == labels.shape and image.dtype == np.float32 and np.isfinite(image).all()
    assert -300 < image.min() and image.max() < 1300
    assert float(image.std()) > 1.0  # not constant


def test_painted_scenes_are_seeded_and_their_targets_are_labels_of_the_scene() -> None:
    bank = [_boxes_map(np.random.default_rng(0))]
    scene, target = painted_scene(np.random.default_rng(5), bank)
    again, target_again = painted_scene(np.random.default_rng(5), bank)
    np.testing.assert_array_equal(scene.image, again.image)
    np.testing.assert_array_equal(target, target_again)
    assert target.shape == scene.image.shape == scene.labels.shape and target.any()
    assert (scene.labels[target] > 0).all()
    assert target.sum() * float(np.prod(scene.spacing)) >= 15.0
    assert max(scene.image.shape) <= 112


def test_mixed_scenes_include_synthetic_shape_scenes() -> None:
    bank = [_boxes_map(np.random.default_rng(0))]
    scene, target = mixed_scene(np.random.default_rng(2), bank, synthetic_share=1.0)
    assert scene.families and target.any() and target.shape == scene.image.shape


def test_the_aal_training_map_has_no_held_out_region() -> None:
    if not {"colin27_aal", "colin27_brain"} <= set(available()):
        pytest.skip(f"colin27 volumes not in the dataset cache {default_cache()}: {FETCH_HINT}")
    from aiaa_demo.datasets import load

    _, _, aal, names = load("colin27_aal")
    source = aal_head_map(None, np.random.default_rng(0))
    held = held_out_values(names)
    assert len(held) == 30  # 6 regions x 2 sides + the 18 cerebellar hemisphere lobules (vermis kept)
    assert not np.isin(source.labels, held).any() and not set(held) & set(source.targets)
    assert {WHITE_MATTER, HEAD} <= set(source.targets)
    kept = (aal > 0) & ~np.isin(aal, held)
    assert (source.labels[kept] == aal[kept]).all()

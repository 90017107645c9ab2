"""Confidence-connected region growing (`imaging.region_growing`) on synthetic volumes with a known answer."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from scipy import ndimage

from aiaa_server.imaging.masks import dice
from aiaa_server.imaging.region_growing import RegionGrowError, RegionGrowParams, grow_region, roi_box

SPACING = (1.0, 1.0, 1.5)


@dataclass
class TwoSpheres:
    """A sphere (100 HU) touching a slightly brighter neighbour (115 HU) in fat, blurred and noisy."""

    image: np.ndarray
    sphere: np.ndarray
    neighbour: np.ndarray
    centre: list[int]
    neighbour_centre: list[int]


def two_spheres(seed: int = 0, shape: tuple[int, int, int] = (64, 56, 40)) -> TwoSpheres:
    rng = np.random.default_rng(seed)
    mm = [np.arange(n) * s for n, s in zip(shape, SPACING)]
    x, y, z = np.meshgrid(*mm, indexing="ij")
    centre_mm, neighbour_mm = np.array([24.0, 28.0, 30.0]), np.array([44.0, 28.0, 30.0])
    sphere = (x - centre_mm[0]) ** 2 + (y - centre_mm[1]) ** 2 + (z - centre_mm[2]) ** 2 <= 12.0**2
    neighbour = ((x - neighbour_mm[0]) ** 2 + (y - neighbour_mm[1]) ** 2 + (z - neighbour_mm[2]) ** 2 <= 9.0**2) & ~sphere
    image = np.full(shape, -100.0, dtype=np.float32)
    image[sphere] = 100.0
    image[neighbour] = 115.0
    image = ndimage.gaussian_filter(image, sigma=0.6)
    image += rng.normal(0.0, 6.0, shape).astype(np.float32)
    return TwoSpheres(image, sphere, neighbour, _voxel(centre_mm), _voxel(neighbour_mm))


def _voxel(point_mm: np.ndarray) -> list[int]:
    return [round(p / s) for p, s in zip(point_mm.tolist(), SPACING)]


@pytest.fixture(scope="module")
def scene() -> TwoSpheres:
    return two_spheres()


def test_one_click_segments_the_sphere_and_not_its_neighbour(scene: TwoSpheres) -> None:
    before = scene.image.copy()
    result = grow_region(scene.image, SPACING, [scene.centre])
    assert result.mask.shape == scene.image.shape and result.mask.dtype == np.uint8
    assert result.mask.flags.f_contiguous
    assert dice(result.mask, scene.sphere) > 0.9
    assert np.count_nonzero(result.mask[scene.neighbour]) < 0.05 * scene.neighbour.sum()
    np.testing.assert_array_equal(scene.image, before)  # the input is never changed


def test_a_background_click_on_a_leak_cuts_it(scene: TwoSpheres) -> None:
    loose = RegionGrowParams(k=6.0)  # wide enough to leak into the 15 HU brighter neighbour
    leaked = grow_region(scene.image, SPACING, [scene.centre], params=loose).mask > 0
    assert leaked[scene.neighbour].mean() > 0.8
    assert dice(leaked, scene.sphere) < 0.85
    cut = grow_region(scene.image, SPACING, [scene.centre], [scene.neighbour_centre], params=loose).mask > 0
    assert not cut[tuple(scene.neighbour_centre)]
    assert cut[scene.neighbour].mean() < 0.1
    assert dice(cut, scene.sphere) > 0.9


def test_intensity_scale_does_not_matter_mr_like(scene: TwoSpheres) -> None:
    """MR has arbitrary units: only the image's own statistics are used, so a positive affine change of the
    intensities (here to 0-4 "units") gives the same region."""
    ct = grow_region(scene.image, SPACING, [scene.centre]).mask
    mr_image = (scene.image + 200.0) * 0.01
    mr = grow_region(mr_image, SPACING, [scene.centre]).mask
    assert dice(mr, scene.sphere) > 0.9
    assert dice(mr, ct) > 0.99


def test_several_foreground_clicks_and_a_background_click_on_the_same_voxel(scene: TwoSpheres) -> None:
    inside = [scene.centre, [scene.centre[0] - 5, scene.centre[1], scene.centre[2]]]
    result = grow_region(scene.image, SPACING, inside, [scene.centre]).mask
    assert result[tuple(scene.centre)] == 1  # foreground wins on a voxel clicked both ways
    assert dice(result, scene.sphere) > 0.9


def test_no_foreground_click_gives_an_empty_mask(scene: TwoSpheres) -> None:
    for background in ([], [scene.centre]):
        result = grow_region(scene.image, SPACING, [], background)
        assert not result.mask.any() and result.mask.shape == scene.image.shape
        assert result.roi == [[0, 0]] * 3


def test_a_click_on_the_edge_of_the_image() -> None:
    image = np.zeros((40, 30, 20), np.float32)
    image[:12, :10, :8] = 50.0  # a noise-free box in the corner
    result = grow_region(image, (1.0, 1.0, 1.0), [[0, 0, 0]])
    expected = np.zeros(image.shape, bool)
    expected[:12, :10, :8] = True
    assert dice(result.mask, expected) > 0.9 and not result.mask[~expected].any()
    assert all(lo == 0 for lo, _ in result.roi)
    corner = grow_region(image, (1.0, 1.0, 1.0), [[39, 29, 19]])  # the far corner, in the flat background
    assert corner.mask[39, 29, 19] == 1 and corner.mask[:12, :10, :8].sum() < 0.05 * expected.sum()
    assert [hi for _, hi in corner.roi] == [40, 30, 20]


@pytest.mark.parametrize("point", [[64, 0, 0], [0, 56, 0], [0, 0, 40], [-1, 5, 5], [3, 3]])
def test_clicks_outside_the_image_are_refused(scene: TwoSpheres, point: list[int]) -> None:
    with pytest.raises(RegionGrowError):
        grow_region(scene.image, SPACING, [scene.centre], [point])
    with pytest.raises(RegionGrowError):
        grow_region(scene.image, SPACING, [point])


def test_the_roi_bounds_the_work_and_the_result(scene: TwoSpheres) -> None:
    small = grow_region(scene.image, SPACING, [scene.centre], params=RegionGrowParams(roi_mm=12.0))
    (x0, x1), (y0, y1), (z0, z1) = small.roi
    assert (x1 - x0, y1 - y0, z1 - z0) == (12, 12, 8)  # 12 mm at 1 x 1 x 1.5 mm
    outside = small.mask.copy()
    outside[x0:x1, y0:y1, z0:z1] = 0
    assert not outside.any() and small.mask.any()
    capped = grow_region(scene.image, SPACING, [scene.centre], params=RegionGrowParams(max_roi_voxels=20**3))
    size = [hi - lo for lo, hi in capped.roi]
    assert np.prod(size) <= 20**3 and all(lo <= c < hi for c, (lo, hi) in zip(scene.centre, capped.roi))


def test_roi_box_holds_every_click_and_refuses_clicks_spanning_too_much() -> None:
    clicks = np.array([[2, 3, 4], [50, 40, 30]])
    lo, hi = roi_box(clicks, (64, 64, 64), np.ones(3), roi_mm=8.0, max_voxels=64**3)
    assert np.all(lo <= clicks.min(axis=0)) and np.all(hi > clicks.max(axis=0))
    lo, hi = roi_box(clicks[:1], (64, 64, 64), np.ones(3), roi_mm=1000.0, max_voxels=1000)
    assert np.prod(hi - lo) <= 1000 and np.all(lo <= clicks[0]) and np.all(hi > clicks[0])
    with pytest.raises(RegionGrowError, match="max_roi_voxels"):
        roi_box(clicks, (64, 64, 64), np.ones(3), roi_mm=8.0, max_voxels=1000)


def test_no_iterations_and_no_smoothing_still_grow(scene: TwoSpheres) -> None:
    bare = RegionGrowParams(iterations=0, smoothing_mm=0.0, opening_voxels=0, boundary_mm=0.0, fill_holes=False)
    result = grow_region(scene.image, SPACING, [scene.centre], params=bare).mask
    assert result[tuple(scene.centre)] == 1
    assert 0.3 < dice(result, scene.sphere) <= 1.0


@pytest.mark.parametrize("spacing", [(1e-30, 1e-30, 1e-30), (1e30, 1.0, 1.0), (0.01, 0.01, 500.0)])
def test_extreme_spacings_stay_bounded(scene: TwoSpheres, spacing: tuple[float, float, float]) -> None:
    result = grow_region(scene.image, spacing, [scene.centre], params=RegionGrowParams(max_roi_voxels=32**3))
    assert result.mask[tuple(scene.centre)] == 1
    assert np.prod([hi - lo for lo, hi in result.roi]) <= 32**3


def test_a_flat_image_grows_everywhere_connected() -> None:
    image = np.full((20, 20, 20), 7.0, np.float32)
    assert grow_region(image, (1.0, 1.0, 1.0), [[10, 10, 10]]).mask.all()


@pytest.mark.parametrize("bad", [
    {"k": 0}, {"k": -1.0}, {"k": float("nan")}, {"k": 1e9}, {"k": "2"}, {"iterations": 10**9},
    {"iterations": -1}, {"iterations": 2.5}, {"smoothing_mm": float("inf")}, {"smoothing_mm": -1.0},
    {"seed_radius_mm": 0.0}, {"roi_mm": 1e12}, {"roi_mm": 0}, {"max_roi_voxels": 0}, {"max_roi_voxels": 2**40},
    {"opening_voxels": 100}, {"boundary_mm": 1e6}, {"fill_holes": "yes"}, {"iterations": True},
    {"reach": -1.0}, {"reach": 11.0}, {"reach": float("nan")},
])
def test_parameters_out_of_range_are_refused(bad: dict) -> None:
    with pytest.raises((ValueError, TypeError)):
        RegionGrowParams(**bad)


def test_image_and_spacing_must_be_3d() -> None:
    with pytest.raises(RegionGrowError, match="3D"):
        grow_region(np.zeros((5, 5), np.float32), (1.0, 1.0, 1.0), [[1, 1, 0]])
    with pytest.raises(RegionGrowError, match="spacing"):
        grow_region(np.zeros((5, 5, 5), np.float32), (1.0, 0.0, 1.0), [[1, 1, 1]])


def _blobs(centres_mm: list[tuple[float, float, float]], radii_mm: list[float], values: list[float],
           shape: tuple[int, int, int] = (64, 48, 40), seed: int = 0) -> tuple[np.ndarray, list[np.ndarray]]:
    """Balls (each over the earlier ones) in fat (-100), blurred and noisy, on the SPACING grid."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, SPACING)], indexing="ij")
    image = np.full(shape, -100.0, dtype=np.float32)
    masks = []
    for (cx, cy, cz), radius, value in zip(centres_mm, radii_mm, values):
        ball = (x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2 <= radius**2
        image[ball] = value
        masks.append(ball)
    masks = [m & ~np.logical_or.reduce(masks[i + 1:], initial=False) for i, m in enumerate(masks)]
    image = ndimage.gaussian_filter(image, sigma=0.6) + rng.normal(0.0, 6.0, shape).astype(np.float32)
    return image, masks


def test_a_background_click_removes_the_touching_blob_it_lies_in_and_keeps_the_clicked_one() -> None:
    image, (left, right) = _blobs([(20.0, 24.0, 30.0), (38.0, 24.0, 30.0)], [11.0, 11.0], [100.0, 100.0])
    click, leak = _voxel(np.array([18.0, 24.0, 30.0])), _voxel(np.array([41.0, 24.0, 30.0]))
    leaked = grow_region(image, SPACING, [click]).mask > 0
    assert leaked[left].mean() > 0.8 and leaked[right].mean() > 0.8  # one structure to the grower
    cut = grow_region(image, SPACING, [click], [leak]).mask > 0
    assert not cut[tuple(leak)]
    assert (cut & leaked)[left].sum() >= 0.95 * leaked[left].sum()  # the cut runs along the neck
    assert cut[right].mean() < 0.2


def test_a_background_click_in_a_small_leak_keeps_the_good_region() -> None:
    image, (organ, bump) = _blobs([(30.0, 24.0, 30.0), (43.0, 24.0, 30.0)], [12.0, 4.0], [100.0, 100.0])
    click, leak = _voxel(np.array([30.0, 24.0, 30.0])), _voxel(np.array([44.0, 24.0, 30.0]))
    leaked = grow_region(image, SPACING, [click]).mask > 0
    assert leaked[bump].mean() > 0.5
    cut = grow_region(image, SPACING, [click], [leak]).mask > 0
    assert not cut[tuple(leak)]
    assert (cut & leaked)[organ].sum() >= 0.9 * leaked[organ].sum()  # the good region stays
    assert cut[bump].mean() < 0.2


def test_a_foreground_click_in_a_missed_part_adds_it_and_keeps_the_region(scene: TwoSpheres) -> None:
    first = grow_region(scene.image, SPACING, [scene.centre]).mask > 0
    assert first[scene.neighbour].mean() < 0.05  # the brighter neighbour is missed
    both = grow_region(scene.image, SPACING, [scene.centre, scene.neighbour_centre]).mask > 0
    assert both[first].mean() > 0.99  # a later foreground click never takes away what the earlier one grew
    assert both[scene.neighbour].mean() > 0.8
    assert both[~(scene.sphere | scene.neighbour)].sum() < 0.1 * scene.neighbour.sum()

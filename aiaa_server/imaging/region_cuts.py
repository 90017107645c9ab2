"""Helpers of `region_growing`: seed neighbourhoods, the opening that breaks thin bridges, the partial-volume
boundary refinement, and the background clicks' cut (a marker watershed on a landscape low deep inside the
region and high at its necks and strong edges). Every size is bounded: the balls by MAX_KERNEL_VOXELS voxels
per axis, the markers by MAX_STATISTIC_SEEDS clicks of each kind."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage
from skimage.segmentation import watershed

from aiaa_server.imaging.masks import foreground_box
from aiaa_server.imaging.morphology import dilate_cross, erode_cross

MAX_KERNEL_VOXELS = 8  # Gaussian sigma / seed radius in voxels, per axis, at most this
MAX_STATISTIC_SEEDS = 64  # clicks of each kind whose neighbourhoods are used, at most
MARKER_SHARE = 0.4  # a cut's marker reaches at most this share of the way to the nearest opposite click

def ball(spacing: np.ndarray, radius_mm: float) -> np.ndarray:
    """(K, 3) voxel offsets within `radius_mm` (an ellipsoid of at most MAX_KERNEL_VOXELS per axis), the
    centre always among them."""
    radius = np.minimum(np.floor(radius_mm / spacing), MAX_KERNEL_VOXELS).astype(np.int64)
    offsets = np.stack(np.meshgrid(*(np.arange(-r, r + 1) for r in radius), indexing="ij"), axis=-1).reshape(-1, 3)
    return offsets[(((offsets * spacing) ** 2).sum(axis=1) <= radius_mm**2) | ~offsets.any(axis=1)]


def neighbourhoods(seeds: np.ndarray, ball: np.ndarray, shape: Sequence[int]) -> tuple[np.ndarray, ...]:
    """Index arrays of the voxels within `ball` of at most MAX_STATISTIC_SEEDS of `seeds` (spread over the
    list), clipped to `shape`."""
    chosen = seeds[np.linspace(0, len(seeds) - 1, min(len(seeds), MAX_STATISTIC_SEEDS)).astype(int)]
    voxels = (chosen[:, None, :] + ball[None, :, :]).reshape(-1, 3)
    return tuple(np.clip(voxels, 0, np.asarray(shape) - 1).T)


def clicked_components(candidate: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """The face-connected components of `candidate` holding a seed."""
    components, count = ndimage.label(candidate)
    keep = np.zeros(count + 1, dtype=bool)
    keep[components[tuple(seeds.T)]] = True
    keep[0] = False
    return keep[components]


def opened_components(candidate: np.ndarray, seeds: np.ndarray, radius: int) -> np.ndarray:
    """The components of `candidate` holding a seed, with the bridges thinner than about 2·radius+1 voxels
    broken: opened by `radius` voxels (6-neighbour cross), the parts holding a seed kept and grown back by
    `radius` voxels within the components; the plain clicked components without opening, or when the opening
    removes every seed."""
    grown = clicked_components(candidate, seeds)
    if radius <= 0 or not grown.any():
        return grown
    box = foreground_box(grown)
    assert box is not None
    start = np.array([s.start for s in box])
    inside = grown[box]
    opened = inside
    for _ in range(radius):
        opened = erode_cross(opened)
    for _ in range(radius):
        opened = dilate_cross(opened, inside)
    core = clicked_components(opened, seeds - start)
    if not core.any():
        return grown  # the clicked structure is thinner than the opening
    core[tuple((seeds - start).T)] = True  # a click in a thin part keeps at least its neighbourhood
    for _ in range(radius):
        core = dilate_cross(core, inside)
    result = np.zeros_like(grown)
    result[box] = core
    return result


def grown_box(region: np.ndarray, margin: int) -> tuple[slice, ...]:
    """The bounding box of the non-empty `region` grown by `margin` voxels, clipped to the array."""
    box = foreground_box(region)
    assert box is not None
    return tuple(slice(max(b.start - margin, 0), min(b.stop + margin, n)) for b, n in zip(box, region.shape))


def refine_boundary(region: np.ndarray, smoothed: np.ndarray, mean: float, spread: float, steps: int
                     ) -> np.ndarray:
    """Grow `region` by up to `steps` face-neighbour layers over the partial-volume rim that the narrow
    mean ± `spread` interval of a homogeneous region leaves out. A voxel of a layer joins when its intensity lies
    between the half-way point to what surrounds it (the mean of the next layer's voxels in its 3×3×3
    neighbourhood) and the far end of the interval: closer to the region than to its surroundings, and never
    on the other side of the region's intensity."""
    if steps <= 0 or not region.any():
        return region
    box = grown_box(region, steps + 2)
    inside, values = region[box].copy(), smoothed[box]
    for _ in range(steps):
        layer = dilate_cross(inside) & ~inside
        beyond = dilate_cross(inside | layer) & ~(inside | layer)
        if not layer.any() or not beyond.any():
            break
        count = ndimage.uniform_filter(beyond.astype(np.float32), size=3, mode="constant")
        total = ndimage.uniform_filter(np.where(beyond, values, 0).astype(np.float32), size=3, mode="constant")
        around = np.where(count > 0, total / np.maximum(count, 1e-6), np.float32(np.median(values[beyond])))
        halfway = (np.float32(mean) + around) / 2
        below = halfway <= mean  # the surroundings are darker: the rim runs from half-way up to the region
        taken = layer & np.where(below, (values >= halfway) & (values <= mean + spread),
                                 (values <= halfway) & (values >= mean - spread))
        if not taken.any():
            break
        inside |= taken
    refined = region.copy()
    refined[box] = inside
    return refined


def cut_landscape(inside: np.ndarray, values: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """Where a cut through `inside` runs: low deep inside it (`depth`, the distance to its boundary, over its
    largest), high at its necks and on strong edges (the gradient magnitude over its 90th percentile inside)."""
    magnitude = ndimage.gaussian_gradient_magnitude(values, sigma=1.0, mode="nearest")
    scale = float(np.percentile(magnitude[inside], 90)) if inside.any() else 0.0
    return magnitude / np.float32(scale if scale > 0 else 1.0) - depth / np.float32(max(float(depth.max()), 1e-6))


def cut_by_background(region: np.ndarray, smoothed: np.ndarray, spacing: np.ndarray, foreground: np.ndarray,
                       background: np.ndarray, radius_mm: float) -> np.ndarray:
    """`region` without the leaks the background clicks lie in (step 4): a marker watershed on
    `cut_landscape`, flooded from the foreground and the background clicks inside `region`, gives each voxel to
    the clicks on its side of the narrowest neck or strongest edge between them, and the background's share
    is removed (nothing is when no background click, or no foreground click, lies in the region). The markers
    are the clicks' balls of `radius_mm` within the region, each at most MARKER_SHARE of the way to the nearest
    click of the other kind (the clicked voxels win over the balls, a voxel clicked both ways stays foreground),
    so a background click near the structure never takes the structure's side, and a click on a noisy voxel
    does not start its flood behind a ridge of noise."""
    background = background[region[tuple(background.T)]][:MAX_STATISTIC_SEEDS]
    foreground = foreground[region[tuple(foreground.T)]][:MAX_STATISTIC_SEEDS]
    if not len(background) or not len(foreground):
        return region
    box = grown_box(region, 1)
    start = np.array([s.start for s in box])
    inside = region[box]
    markers = np.zeros(inside.shape, dtype=np.int32)
    for label, seeds, others in ((2, background, foreground), (1, foreground, background)):
        for seed in seeds:
            apart = float(np.sqrt((((others - seed) * spacing) ** 2).sum(axis=1).min()))
            reach = ball(spacing, min(radius_mm, MARKER_SHARE * apart))
            markers[neighbourhoods((seed - start)[None], reach, inside.shape)] = label
    markers[tuple((background - start).T)] = 2
    markers[tuple((foreground - start).T)] = 1
    markers[~inside] = 0
    depth = ndimage.distance_transform_edt(inside, sampling=spacing).astype(np.float32)
    flooded = watershed(cut_landscape(inside, smoothed[box], depth), markers, mask=inside, connectivity=1)
    cut = region.copy()
    cut[box] &= flooded != 2
    return cut

"""Weight-free interactive segmentation: confidence-connected region growing from clicks.

In the spirit of ITK's ConfidenceConnected filter, on any modality (CT in HU, MR in arbitrary units: only
statistics of the image itself are used):

1. a region of interest (ROI) of about `roi_mm` around the foreground clicks, at most `max_roi_voxels`
   voxels (the whole work happens inside it, on the input grid: nothing is resampled);
2. light Gaussian smoothing (`smoothing_mm`);
3. the intensity mean and standard deviation of the voxels within `seed_radius_mm` of the foreground
   clicks;
4. the voxels within mean ± k·std, connected (face neighbours) to a foreground click, form the region,
   after an opening of `opening_voxels` that breaks thin bridges into neighbouring structures;
   background clicks cut it: a marker watershed on the gradient magnitude, flooded from the neighbourhoods
   of the foreground and the background clicks inside the region, gives each voxel to the clicks it is
   closer to along the image (the cut follows the strongest edge between them);
5. the mean and standard deviation are re-estimated on the region and step 4 repeated, at most
   `iterations` times (stopping early when the region no longer changes);
6. the boundary is refined over `boundary_mm` + 2·`smoothing_mm` (voxels closer in intensity to the region
   than to their surroundings join it: the partial-volume and smoothing rim that a homogeneous organ's
   narrow interval leaves out), enclosed holes are filled, background clicks cut again, and the region is
   pasted back onto the full input grid.

Every size is bounded before anything is allocated: the ROI by `max_roi_voxels`, the smoothing kernel and
the seed neighbourhoods by a fixed number of voxels, the seeds used for the first statistics by
MAX_STATISTIC_SEEDS.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.segmentation import watershed

from aiaa_server.imaging.masks import foreground_box
from aiaa_server.imaging.morphology import dilate_cross, erode_cross

MAX_ROI_MM = 4096.0
MAX_ROI_VOXELS = 512**3
MAX_ITERATIONS = 20
MAX_K = 10.0
MAX_SMOOTHING_MM = 10.0
MAX_SEED_RADIUS_MM = 50.0
MAX_KERNEL_VOXELS = 8  # Gaussian sigma / seed radius in voxels, per axis, at most this
MAX_STATISTIC_SEEDS = 64  # foreground clicks whose neighbourhoods give the first statistics
MIN_STATISTIC_VOXELS = 27  # a region smaller than this keeps the statistics it was grown with
MAX_OPENING_VOXELS = 3
MAX_BOUNDARY_MM = 10.0
STD_FLOOR_FRACTION = 1e-3  # of the ROI's robust intensity range: a flat seed neighbourhood still grows
PERCENTILE_SAMPLES = 2**20  # voxels sampled for that range


class RegionGrowError(ValueError):
    """The clicks or the image cannot be used (a click outside the image, clicks spanning too large a box)."""


@dataclass(frozen=True)
class RegionGrowParams:
    """The algorithm's parameters, checked on creation: ValueError naming the first one out of range (or not a
    number), TypeError for a `fill_holes` that is not a boolean.

    Attributes:
        k: the region keeps voxels within mean ± k·std of its intensity statistics; in (0, 10].
        iterations: how many times the statistics are re-estimated on the region; 0 to 20.
        smoothing_mm: Gaussian sigma in mm before growing (at most 8 voxels per axis); 0 (off) to 10.
        seed_radius_mm: radius of the neighbourhood of each foreground click that gives the first statistics
            (at least the click's voxel, at most 8 voxels per axis); in (0, 50].
        roi_mm: edge of the cubic region of interest around the foreground clicks, in mm (grown to hold all
            foreground clicks, clipped to the image); in (0, 4096].
        max_roi_voxels: the most voxels the ROI may hold (it shrinks around the clicks to fit); 1 to 512³.
        opening_voxels: radius (voxels, 6-neighbour steps) of the opening that breaks thin bridges to
            neighbouring structures of similar intensity; 0 (off) to 3. A structure thinner than the opening
            everywhere is grown without it.
        boundary_mm: the partial-volume rim (mm) over which the region may extend into voxels closer in
            intensity to it than to their surroundings; the blur of the smoothing (2·smoothing_mm) is added to it,
            at most 8 voxel layers in all; 0 (off) to 10.
        fill_holes: fill cavities the region encloses (vessels, cysts inside an organ).
    """

    k: float = 2.5
    iterations: int = 4
    smoothing_mm: float = 1.0
    seed_radius_mm: float = 4.0
    roi_mm: float = 256.0
    max_roi_voxels: int = 256**3
    fill_holes: bool = True
    opening_voxels: int = 1
    boundary_mm: float = 1.5

    def __post_init__(self) -> None:
        _check_number("k", self.k, 0.0, MAX_K, low_open=True)
        _check_number("smoothing_mm", self.smoothing_mm, 0.0, MAX_SMOOTHING_MM)
        _check_number("seed_radius_mm", self.seed_radius_mm, 0.0, MAX_SEED_RADIUS_MM, low_open=True)
        _check_number("roi_mm", self.roi_mm, 0.0, MAX_ROI_MM, low_open=True)
        _check_integer("iterations", self.iterations, 0, MAX_ITERATIONS)
        _check_integer("max_roi_voxels", self.max_roi_voxels, 1, MAX_ROI_VOXELS)
        _check_integer("opening_voxels", self.opening_voxels, 0, MAX_OPENING_VOXELS)
        _check_number("boundary_mm", self.boundary_mm, 0.0, MAX_BOUNDARY_MM)
        if not isinstance(self.fill_holes, bool):
            raise TypeError(f"fill_holes must be true or false, got {self.fill_holes!r}")


def _check_number(name: str, value: object, low: float, high: float, low_open: bool = False) -> None:
    number = value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    if number is None or not math.isfinite(number) or number > high or number < low or (low_open and number == low):
        bound = "(" if low_open else "["
        raise ValueError(f"{name} must be a number in {bound}{low:g}, {high:g}], got {value!r}")


def _check_integer(name: str, value: object, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer in [{low}, {high}], got {value!r}")


@dataclass(frozen=True)
class RegionGrowResult:
    """The grown region on the full input grid (uint8, Fortran order as NIfTI stores it) and the ROI box it
    was grown in, `[[x0, x1], [y0, y1], [z0, z1]]` (end-exclusive input voxel indices; all zero without
    foreground clicks)."""

    mask: np.ndarray
    roi: list[list[int]]


def click_array(points: Sequence[Sequence[float]] | np.ndarray, shape: Sequence[int], name: str) -> np.ndarray:
    """`points` as an (N, 3) int array of voxel indices (rounded).

    Raises:
        RegionGrowError: a point that is not 3 numbers, or one outside an image of `shape`.
    """
    array = np.asarray(points, dtype=np.float64)
    if array.size == 0:
        return np.zeros((0, 3), dtype=np.int64)
    if array.ndim != 2 or array.shape[1] != 3 or not np.all(np.isfinite(array)):
        raise RegionGrowError(f"{name}: points must be [x, y, z] voxel indices")
    indices = np.rint(array).astype(np.int64)
    outside = np.any((indices < 0) | (indices >= np.asarray(shape)), axis=1)
    if outside.any():
        point = indices[int(np.argmax(outside))].tolist()
        raise RegionGrowError(f"{name}: point {point} is outside the image (shape {list(shape)})")
    return indices


def roi_box(foreground: np.ndarray, shape: Sequence[int], spacing: np.ndarray, roi_mm: float,
            max_voxels: int) -> tuple[np.ndarray, np.ndarray]:
    """The ROI [lo, hi) (voxel indices): `roi_mm` per axis around the foreground clicks' box, grown to hold
    every click, clipped to the image, and shrunk (never below the clicks' box) to at most `max_voxels`.

    Raises:
        RegionGrowError: the foreground clicks alone span more than `max_voxels`.
    """
    shape_array = np.asarray(shape, dtype=np.int64)
    first, last = foreground.min(axis=0), foreground.max(axis=0)
    span = last - first + 1
    if math.prod(int(s) for s in span) > max_voxels:
        raise RegionGrowError(f"the foreground clicks span {span.tolist()} voxels, more than the {max_voxels} "
                              "voxels a region may be grown in (max_roi_voxels)")
    wanted = np.minimum(np.ceil(roi_mm / spacing), shape_array).astype(np.int64)  # no overflow for tiny voxels
    size = np.minimum(np.maximum(wanted, span), shape_array)
    for _ in range(64):  # each step shrinks the free part by at least one voxel per axis or by a factor
        if math.prod(int(s) for s in size) <= max_voxels:
            break
        factor = (max_voxels / math.prod(float(s) for s in size)) ** (1.0 / 3.0)
        size = np.maximum(span, np.minimum(size - 1, np.floor(size * factor).astype(np.int64)))
    else:
        raise RegionGrowError(f"no region of at most {max_voxels} voxels holds the foreground clicks")
    lo = np.clip(first - (size - span) // 2, 0, shape_array - size)
    return lo, lo + size


def _smoothed(roi: np.ndarray, spacing: np.ndarray, smoothing_mm: float) -> np.ndarray:
    values = np.asarray(roi, dtype=np.float32)
    if smoothing_mm <= 0:
        return values.copy()
    sigma = np.minimum(smoothing_mm / spacing, MAX_KERNEL_VOXELS)
    sigma = np.where(sigma >= 0.25, sigma, 0.0)  # below a quarter voxel the kernel is the identity
    return ndimage.gaussian_filter(values, sigma=sigma, truncate=3.0, mode="nearest", output=np.float32)


def _ball(spacing: np.ndarray, radius_mm: float) -> np.ndarray:
    """(K, 3) voxel offsets within `radius_mm` (an ellipsoid of at most MAX_KERNEL_VOXELS per axis), the
    centre always among them."""
    radius = np.minimum(np.floor(radius_mm / spacing), MAX_KERNEL_VOXELS).astype(np.int64)
    offsets = np.stack(np.meshgrid(*(np.arange(-r, r + 1) for r in radius), indexing="ij"), axis=-1).reshape(-1, 3)
    return offsets[(((offsets * spacing) ** 2).sum(axis=1) <= radius_mm**2) | ~offsets.any(axis=1)]


def _neighbourhoods(seeds: np.ndarray, ball: np.ndarray, shape: Sequence[int]) -> tuple[np.ndarray, ...]:
    """Index arrays of the voxels within `ball` of at most MAX_STATISTIC_SEEDS of `seeds` (spread over the
    list), clipped to `shape`."""
    chosen = seeds[np.linspace(0, len(seeds) - 1, min(len(seeds), MAX_STATISTIC_SEEDS)).astype(int)]
    voxels = (chosen[:, None, :] + ball[None, :, :]).reshape(-1, 3)
    return tuple(np.clip(voxels, 0, np.asarray(shape) - 1).T)


def _statistics(values: np.ndarray, floor: float) -> tuple[float, float]:
    values = values.astype(np.float64)
    return float(values.mean()), max(float(values.std()), floor)


def _clicked_components(candidate: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """The face-connected components of `candidate` holding a seed."""
    components, count = ndimage.label(candidate)
    keep = np.zeros(count + 1, dtype=bool)
    keep[components[tuple(seeds.T)]] = True
    keep[0] = False
    return keep[components]


def _opened_components(candidate: np.ndarray, seeds: np.ndarray, radius: int) -> np.ndarray:
    """The components of `candidate` holding a seed, with the bridges thinner than about 2·radius+1 voxels
    broken: opened by `radius` voxels (6-neighbour cross), the parts holding a seed kept and grown back by
    `radius` voxels within the components; the plain clicked components without opening, or when the opening
    removes every seed."""
    grown = _clicked_components(candidate, seeds)
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
    core = _clicked_components(opened, seeds - start)
    if not core.any():
        return grown  # the clicked structure is thinner than the opening
    core[tuple((seeds - start).T)] = True  # a click in a thin part keeps at least its neighbourhood
    for _ in range(radius):
        core = dilate_cross(core, inside)
    result = np.zeros_like(grown)
    result[box] = core
    return result


def _grown_box(region: np.ndarray, margin: int) -> tuple[slice, ...]:
    """The bounding box of the non-empty `region` grown by `margin` voxels, clipped to the array."""
    box = foreground_box(region)
    assert box is not None
    return tuple(slice(max(b.start - margin, 0), min(b.stop + margin, n)) for b, n in zip(box, region.shape))


def _refine_boundary(region: np.ndarray, smoothed: np.ndarray, mean: float, spread: float, steps: int
                     ) -> np.ndarray:
    """Grow `region` by up to `steps` face-neighbour layers over the partial-volume rim that the narrow
    mean ± `spread` interval of a homogeneous region leaves out. A voxel of a layer joins when its intensity lies
    between the half-way point to what surrounds it (the mean of the next layer's voxels in its 3×3×3
    neighbourhood) and the far end of the interval: closer to the region than to its surroundings, and never
    on the other side of the region's intensity."""
    if steps <= 0 or not region.any():
        return region
    box = _grown_box(region, steps + 2)
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


def _cut_by_background(region: np.ndarray, smoothed: np.ndarray, ball: np.ndarray, foreground: np.ndarray,
                       background: np.ndarray) -> np.ndarray:
    """`region` without the voxels a marker watershed on the gradient magnitude gives to the background clicks
    that lie in it (the whole region when none does). The markers are the clicks' `ball` neighbourhoods within
    the region (the clicked voxels themselves win where they overlap), so a click on a noisy voxel does not
    start its flood behind a ridge of noise."""
    background = background[region[tuple(background.T)]]
    foreground = foreground[region[tuple(foreground.T)]]
    if not len(background) or not len(foreground):
        return region
    box = _grown_box(region, 0)
    start = np.array([s.start for s in box])
    inside = region[box]
    magnitude = ndimage.gaussian_gradient_magnitude(smoothed[box], sigma=1.0, mode="nearest")
    markers = np.zeros(inside.shape, dtype=np.int32)
    for label, seeds in ((2, background), (1, foreground)):
        markers[_neighbourhoods(seeds - start, ball, inside.shape)] = label
    markers[tuple((background - start).T)] = 2
    markers[tuple((foreground - start).T)] = 1  # a voxel clicked both ways stays foreground
    markers[~inside] = 0
    flooded = watershed(magnitude, markers, mask=inside, connectivity=1)
    cut = np.zeros_like(region)
    cut[box] = flooded == 1
    return cut


def grow_region(image: np.ndarray, spacing: Sequence[float], foreground: Sequence[Sequence[float]] | np.ndarray,
                background: Sequence[Sequence[float]] | np.ndarray = (),
                params: RegionGrowParams | None = None) -> RegionGrowResult:
    """Segment the structure under the foreground clicks (see the module docstring for the algorithm).

    Args:
        image: (X, Y, Z) intensities (any unit: CT HU, MR arbitrary units).
        spacing: voxel size along the three axes, in mm (positive).
        foreground: (N, 3) [x, y, z] voxel indices of the clicks on the structure; none: an empty mask.
        background: (M, 3) [x, y, z] voxel indices of clicks the region must not reach.
        params: the algorithm's parameters; None: the defaults.

    Returns:
        The mask on `image`'s grid and the ROI it was grown in.

    Raises:
        RegionGrowError: a click outside the image, clicks spanning more than `max_roi_voxels`, or an image
            that is not 3D.
    """
    params = params or RegionGrowParams()
    if image.ndim != 3:
        raise RegionGrowError(f"region growing needs a 3D image, got shape {list(image.shape)}")
    spacing_array = np.asarray(spacing, dtype=np.float64)
    if spacing_array.shape != (3,) or not np.all(np.isfinite(spacing_array) & (spacing_array > 0)):
        raise RegionGrowError(f"voxel spacing must be 3 positive numbers, got {list(spacing)}")
    fg = click_array(foreground, image.shape, "foreground")
    bg = click_array(background, image.shape, "background")
    mask = np.zeros(image.shape, dtype=np.uint8, order="F")
    if not len(fg):
        return RegionGrowResult(mask, [[0, 0]] * 3)
    lo, hi = roi_box(fg, image.shape, spacing_array, params.roi_mm, params.max_roi_voxels)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    smoothed = _smoothed(image[box], spacing_array, params.smoothing_mm)
    fg_local = np.unique(fg - lo, axis=0)
    bg_local = bg - lo
    bg_local = bg_local[np.all((bg_local >= 0) & (bg_local < hi - lo), axis=1)]
    step = max(1, smoothed.size // PERCENTILE_SAMPLES)
    low_q, high_q = np.percentile(smoothed.ravel()[::step], [0.5, 99.5])
    floor = max(float(high_q - low_q) * STD_FLOOR_FRACTION, 1e-6)
    ball = _ball(spacing_array, params.seed_radius_mm)
    mean, std = _statistics(smoothed[_neighbourhoods(fg_local, ball, smoothed.shape)], floor)
    region = np.zeros(smoothed.shape, dtype=bool)
    for _ in range(params.iterations + 1):
        candidate = np.abs(smoothed - np.float32(mean)) <= np.float32(params.k * std)
        candidate[tuple(fg_local.T)] = True
        grown = _opened_components(candidate, fg_local, params.opening_voxels)
        if len(bg_local):
            grown = _cut_by_background(grown, smoothed, ball, fg_local, bg_local)
        if np.array_equal(grown, region):
            break
        region = grown
        if np.count_nonzero(region) < MIN_STATISTIC_VOXELS:
            break  # too few voxels to estimate from: keep what the click's neighbourhood gave
        mean, std = _statistics(smoothed[region], floor)
    reach = params.boundary_mm + 2.0 * params.smoothing_mm if params.boundary_mm > 0 else 0.0
    steps = math.ceil(min(reach / float(spacing_array.min()), MAX_KERNEL_VOXELS))
    region = _refine_boundary(region, smoothed, mean, params.k * std, steps)
    if params.fill_holes and region.any():
        found = _grown_box(region, 0)
        region[found] = ndimage.binary_fill_holes(region[found])
    if len(bg_local):  # what the last steps added is held to the background clicks too
        region = _cut_by_background(region, smoothed, ball, fg_local, bg_local)
    mask[box] = region
    return RegionGrowResult(mask, [[int(a), int(b)] for a, b in zip(lo, hi)])


__all__ = ["RegionGrowError", "RegionGrowParams", "RegionGrowResult", "click_array", "grow_region", "roi_box"]

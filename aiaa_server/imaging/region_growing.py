"""Weight-free interactive segmentation: confidence-connected region growing from clicks.

In the spirit of ITK's ConfidenceConnected filter, on any modality (CT in HU, MR in arbitrary units: only
statistics of the image itself are used):

1. a region of interest (ROI) of about `roi_mm` around the foreground clicks, at most `max_roi_voxels`
   voxels (the whole work happens inside it, on the input grid: nothing is resampled);
2. light Gaussian smoothing (`smoothing_mm`);
3. each foreground click, in the order they were made, grows its own region from its own statistics, so a
   click in a missed part adds that part; a click inside what the earlier clicks grew only marks the
   structure for the cuts (at most MAX_GROWN_CLICKS clicks grow, later ones add their voxel):

   a. the intensity mean and standard deviation of the click's neighbourhood: the largest of the balls of
      `seed_radius_mm`, its half, quarter, ... whose spread is at most SEED_SPREAD_GROWTH times that of the
      next smaller one (a click beside an edge takes its statistics from its own side), with a spread of at
      least SEED_SPREAD_FLOOR times the largest ball's;
   b. its reach: the median over RAY_COUNT directions of the distance from the click to the first voxel
      outside mean ± k·std. The click's zone is the ball of `reach` times that (at least `seed_radius_mm`);
      a later click's zone is also at most LATER_REACH times its distance to what the earlier clicks grew (a
      click beside the result extends it locally: a missed rim is thin);
   c. in the zone, the voxels within mean ± k·std connected (face neighbours) to the click, after an opening
      of `opening_voxels` that breaks thin bridges into neighbouring structures, form the region; mean and
      standard deviation are re-estimated on it and this is repeated, at most `iterations` times (stopping
      early when the region no longer changes);
   d. a region that reaches the rim of its zone may be an organ larger than the reach: it is grown again
      without the zone and kept if that growth stops by itself (for the first click at most MAX_FREE_RATIO
      times the zone's voxels, MAX_EDGE_RATIO times if it touches the ROI's edge; for a later click at most
      MAX_EDGE_RATIO times and off the ROI's edge). One that does not stop is a leak into tissue of the same
      intensity (a grey-matter nucleus into all the grey matter): the zone's region is kept;
   e. a region holding a background click is grown again from the click's statistics with the background
      clicks' cut (step 4) applied before each re-estimation, so a leak takes no part in the statistics; what
      both growths hold is kept;
   f. the boundary is refined over `boundary_mm` + 2·`smoothing_mm` (voxels closer in intensity to the
      region than to their surroundings join it: the partial-volume and smoothing rim that a homogeneous
      organ's narrow interval leaves out) and enclosed holes are filled;

4. background clicks only remove: each click's region is flooded by a marker watershed from the
   neighbourhoods of the foreground and the background clicks in it (each at most MARKER_SHARE of the way to
   the nearest click of the other kind), on a landscape low deep inside the region and high at its necks and
   strong edges; each voxel goes to the clicks on its side of the narrowest neck or strongest edge between
   them, the background clicks' share (the leak each lies in) is removed, never the foreground clicks'
   neighbourhoods, and the clicks' regions are joined (a later click never takes away what an earlier one grew);
5. the region is pasted back onto the full input grid.

Every size is bounded before anything is allocated: the ROI by `max_roi_voxels`, the smoothing kernel and
the seed neighbourhoods by a fixed number of voxels, the rays by MAX_RAY_SAMPLES samples, the clicks that
grow by MAX_GROWN_CLICKS, the cut's markers by MAX_STATISTIC_SEEDS clicks of each kind. The opening, the
boundary refinement and the cut are in `region_cuts`, the rays and zones in `region_zones`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from aiaa_server.imaging.checks import check_integer, check_number
from aiaa_server.imaging.morphology import erode_cross
from aiaa_server.imaging.region_cuts import (
    MAX_KERNEL_VOXELS,
    ball,
    cut_by_background,
    grown_box,
    neighbourhoods,
    opened_components,
    refine_boundary,
)
from aiaa_server.imaging.region_zones import (
    distance_to,
    first_occurrences,
    points_inside,
    ray_extent,
    touches_edge,
    zone,
    zone_box,
)

MAX_ROI_MM = 4096.0
MAX_ROI_VOXELS = 512**3
MAX_ITERATIONS = 20
MAX_K = 10.0
MAX_SMOOTHING_MM = 10.0
MAX_SEED_RADIUS_MM = 50.0
MIN_STATISTIC_VOXELS = 27  # a region smaller than this keeps the statistics it was grown with
MAX_OPENING_VOXELS = 3
MAX_BOUNDARY_MM = 10.0
STD_FLOOR_FRACTION = 1e-3  # of the ROI's robust intensity range: a flat seed neighbourhood still grows
PERCENTILE_SAMPLES = 2**20  # voxels sampled for that range
MAX_REACH = 10.0
MAX_SEED_HALVINGS = 4  # seed neighbourhoods tried: the seed radius, its half, quarter, eighth, and one voxel
MIN_SEED_VOXELS = 9  # a smaller neighbourhood than this (an in-plane 3×3 patch) gives no usable spread
SEED_SPREAD_GROWTH = 1.5  # a larger seed neighbourhood is used while its spread grows at most this much
SEED_SPREAD_FLOOR = 0.5  # of the largest neighbourhood's spread: the least spread a smaller one gives
LATER_REACH = 2.0  # a later click's zone: at most this times its distance to what the earlier clicks grew
MAX_FREE_RATIO = 500.0  # the first click's region, grown without its zone, may hold this many zones' voxels
MAX_EDGE_RATIO = 20.0  # ... this many if it touches the ROI's edge; a later click's this many, off the edge
MAX_GROWN_CLICKS = 16  # foreground clicks grown from their own statistics; later ones only add their voxel
LATER_FREE_BOX = 8.0  # a later click's region grown without its zone stays in this many zone radii


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
        reach: each foreground click grows within this many times its reach (the median distance from the
            click to the first voxel outside its first interval, over RAY_COUNT directions), unless its region
            stops by itself; 0 (off: every click grows bounded by the ROI only) to 10.
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
    reach: float = 2.0

    def __post_init__(self) -> None:
        check_number("k", self.k, 0.0, MAX_K, low_open=True)
        check_number("smoothing_mm", self.smoothing_mm, 0.0, MAX_SMOOTHING_MM)
        check_number("seed_radius_mm", self.seed_radius_mm, 0.0, MAX_SEED_RADIUS_MM, low_open=True)
        check_number("roi_mm", self.roi_mm, 0.0, MAX_ROI_MM, low_open=True)
        check_integer("iterations", self.iterations, 0, MAX_ITERATIONS)
        check_integer("max_roi_voxels", self.max_roi_voxels, 1, MAX_ROI_VOXELS)
        check_integer("opening_voxels", self.opening_voxels, 0, MAX_OPENING_VOXELS)
        check_number("boundary_mm", self.boundary_mm, 0.0, MAX_BOUNDARY_MM)
        check_number("reach", self.reach, 0.0, MAX_REACH)
        if not isinstance(self.fill_holes, bool):
            raise TypeError(f"fill_holes must be true or false, got {self.fill_holes!r}")


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


def _statistics(values: np.ndarray, floor: float) -> tuple[float, float]:
    values = values.astype(np.float64)
    return float(values.mean()), max(float(values.std()), floor)


def _seed_statistics(smoothed: np.ndarray, click: np.ndarray, spacing: np.ndarray, radius_mm: float,
                     floor: float) -> tuple[float, float]:
    """Mean and standard deviation of the click's neighbourhood (step 3a): the largest of the balls of
    `radius_mm`, its half, quarter, ... and the click's nearest neighbours (those of at least MIN_SEED_VOXELS
    voxels, the largest always) whose spread is at most SEED_SPREAD_GROWTH times that of the next smaller one,
    with a spread of at least SEED_SPREAD_FLOOR times the largest ball's. A click beside an edge (a missed rim,
    a lesion smaller than the ball) thus takes its statistics from its own side of the edge, not from a
    mixture of both, while a smooth image still gets an interval as wide as its texture."""
    radii = [radius_mm]
    while len(radii) < MAX_SEED_HALVINGS and radii[-1] / 2 >= float(spacing.min()):
        radii.append(radii[-1] / 2)
    radii.append(float(spacing.min()))  # the click and its nearest neighbours
    balls = [ball(spacing, r) for r in radii]
    balls = balls[:1] + [b for b in balls[1:] if len(b) >= MIN_SEED_VOXELS]
    stats = [_statistics(smoothed[neighbourhoods(click[None], b, smoothed.shape)], floor) for b in balls]
    chosen = len(stats) - 1
    while chosen > 0 and stats[chosen - 1][1] <= SEED_SPREAD_GROWTH * stats[chosen][1]:
        chosen -= 1
    mean, std = stats[chosen]
    return mean, max(std, SEED_SPREAD_FLOOR * stats[0][1])


@dataclass
class _Growth:
    region: np.ndarray
    mean: float
    std: float
    stopped: bool  # it outgrew its limit (see `_grow`) and was abandoned


def _grow(values: np.ndarray, zone: np.ndarray | None, click: np.ndarray, mean: float, std: float, floor: float,
          params: RegionGrowParams, limit: int | None = None, edge_limit: int | None = None,
          cut: Callable[[np.ndarray], np.ndarray] | None = None) -> _Growth:
    """Step 3c: the click's confidence-connected region in `values` (within `zone`), its statistics
    re-estimated up to `iterations` times, each region first passed through `cut` when given. It is abandoned
    (stopped=True) as soon as it holds more than `limit` voxels, or more than `edge_limit` while touching the
    edge of `values`."""
    region = np.zeros(values.shape, dtype=bool)
    for _ in range(params.iterations + 1):
        candidate = np.abs(values - np.float32(mean)) <= np.float32(params.k * std)
        if zone is not None:
            candidate &= zone
        candidate[tuple(click)] = True
        grown = opened_components(candidate, click[None], params.opening_voxels)
        size = np.count_nonzero(grown)
        if (limit is not None and size > limit) or (edge_limit is not None and size > edge_limit
                                                    and touches_edge(grown)):
            return _Growth(grown, mean, std, True)
        if cut is not None:
            grown = cut(grown)
            size = np.count_nonzero(grown)
        if np.array_equal(grown, region):
            break
        region = grown
        if size < MIN_STATISTIC_VOXELS:
            break  # too few voxels to estimate from: keep what the click's neighbourhood gave
        mean, std = _statistics(values[region], floor)
    return _Growth(region, mean, std, False)


def _grow_from_click(smoothed: np.ndarray, click: np.ndarray, spacing: np.ndarray, floor: float,
                     params: RegionGrowParams, foreground: np.ndarray, background: np.ndarray,
                     limit_mm: float = math.inf) -> np.ndarray:
    """The region one foreground click grows from its own statistics (step 3 of the module docstring), as a
    mask of `smoothed`'s shape; `limit_mm` bounds its zone (a later click: LATER_REACH times its distance to what
    the earlier clicks grew)."""
    mean, std = _seed_statistics(smoothed, click, spacing, params.seed_radius_mm, floor)
    box, inside = tuple(slice(0, n) for n in smoothed.shape), None  # where it grows: the ROI, or its zone
    growth = None
    if params.reach > 0:
        longest = min(params.roi_mm / 2.0, float((np.asarray(smoothed.shape) * spacing).max()))
        low, high = np.float32(mean) - np.float32(params.k * std), np.float32(mean) + np.float32(params.k * std)
        extent = ray_extent(smoothed, click, spacing, float(low), float(high), longest)
        radius = min(max(params.reach * extent, params.seed_radius_mm), longest, max(limit_mm, float(spacing.max())))
        box, inside = zone(smoothed.shape, click, spacing, radius)
        growth = _grow(smoothed[box], inside, click - np.array([s.start for s in box]), mean, std, floor, params)
        if (growth.region & ~erode_cross(inside)).any():  # it reaches the zone's rim: does it stop by itself?
            zone_voxels = np.count_nonzero(inside)
            first = math.isinf(limit_mm)  # a later click's region must stay small and inside a bounded box
            free_box = (tuple(slice(0, n) for n in smoothed.shape) if first
                        else zone_box(smoothed.shape, click, spacing, LATER_FREE_BOX * radius))
            free = _grow(smoothed[free_box], None, click - np.array([s.start for s in free_box]), growth.mean,
                         growth.std, floor, params, int((MAX_FREE_RATIO if first else MAX_EDGE_RATIO) * zone_voxels),
                         int(MAX_EDGE_RATIO * zone_voxels) if first else 0)
            if not free.stopped:
                growth, box, inside = free, free_box, None
    corner = np.array([b.start for b in box])
    if growth is None:
        growth = _grow(smoothed, None, click, mean, std, floor, params)
    bg_box, fg_box = points_inside(background, box), points_inside(foreground, box)
    if len(bg_box) and growth.region[tuple(bg_box.T)].any():  # step 3e: grown again, the leaks cut each time
        values = smoothed[box]
        guarded = _grow(values, inside, click - corner, mean, std, floor, params,
                        cut=lambda r: cut_by_background(r, values, spacing, fg_box, bg_box, params.seed_radius_mm))
        growth = _Growth(growth.region & guarded.region, guarded.mean, guarded.std, False)
    reach = params.boundary_mm + 2.0 * params.smoothing_mm if params.boundary_mm > 0 else 0.0
    steps = math.ceil(min(reach / float(spacing.min()), MAX_KERNEL_VOXELS))
    region = refine_boundary(growth.region, smoothed[box], growth.mean, params.k * growth.std, steps)
    if params.fill_holes and region.any():
        found = grown_box(region, 0)
        region[found] = ndimage.binary_fill_holes(region[found])
    full = np.zeros(smoothed.shape, dtype=bool)
    full[box] = region
    return full


def grow_region(image: np.ndarray, spacing: Sequence[float], foreground: Sequence[Sequence[float]] | np.ndarray,
                background: Sequence[Sequence[float]] | np.ndarray = (),
                params: RegionGrowParams | None = None) -> RegionGrowResult:
    """Segment the structure under the foreground clicks (see the module docstring for the algorithm).

    Args:
        image: (X, Y, Z) intensities (any unit: CT HU, MR arbitrary units).
        spacing: voxel size along the three axes, in mm (positive).
        foreground: (N, 3) [x, y, z] voxel indices of the clicks on the structure, in the order they were made;
            none: an empty mask.
        background: (M, 3) [x, y, z] voxel indices of clicks on leaks: each removes the leak it lies in.
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
    fg_local = first_occurrences(fg - lo)
    bg_local = bg - lo
    bg_local = bg_local[np.all((bg_local >= 0) & (bg_local < hi - lo), axis=1)]
    step = max(1, smoothed.size // PERCENTILE_SAMPLES)
    low_q, high_q = np.percentile(smoothed.ravel()[::step], [0.5, 99.5])
    floor = max(float(high_q - low_q) * STD_FLOOR_FRACTION, 1e-6)
    region = np.zeros(smoothed.shape, dtype=bool)
    grown = 0
    for click in fg_local:
        if region[tuple(click)]:
            continue  # inside what an earlier click grew: it only marks the structure for the cuts
        if grown == MAX_GROWN_CLICKS:
            region[tuple(click)] = True
            continue
        limit = LATER_REACH * distance_to(region, click, spacing_array) if grown else math.inf
        part = _grow_from_click(smoothed, click, spacing_array, floor, params, fg_local, bg_local, limit)
        if len(bg_local):
            part = cut_by_background(part, smoothed, spacing_array, fg_local, bg_local, params.seed_radius_mm)
        region |= part
        grown += 1
    mask[box] = region
    return RegionGrowResult(mask, [[int(a), int(b)] for a, b in zip(lo, hi)])


__all__ = ["RegionGrowError", "RegionGrowParams", "RegionGrowResult", "click_array", "grow_region", "roi_box"]

"""Helpers of `region_growing`: a click's reach along rays, its zone, and distances between clicks and
regions. Every size is bounded: RAY_COUNT rays of at most MAX_RAY_SAMPLES samples each."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

RAY_COUNT = 64  # directions in which a click's reach is measured
MAX_RAY_SAMPLES = 512  # samples along each ray, at most

def points_inside(points: np.ndarray, box: tuple[slice, ...]) -> np.ndarray:
    """The `points` inside `box`, relative to its corner."""
    start = np.array([b.start for b in box])
    stop = np.array([b.stop for b in box])
    return points[np.all((points >= start) & (points < stop), axis=1)] - start


def first_occurrences(points: np.ndarray) -> np.ndarray:
    """`points` without repeats, in the order they first appear (the order the clicks were made)."""
    if not len(points):
        return points
    _, first = np.unique(points, axis=0, return_index=True)
    return points[np.sort(first)]


def ray_directions(count: int) -> np.ndarray:
    """(count, 3) unit vectors spread evenly over the sphere (a Fibonacci lattice)."""
    index = np.arange(count) + 0.5
    polar = np.arccos(1.0 - 2.0 * index / count)
    azimuth = np.pi * (1.0 + math.sqrt(5.0)) * index
    return np.stack([np.cos(azimuth) * np.sin(polar), np.sin(azimuth) * np.sin(polar), np.cos(polar)], axis=1)


RAY_DIRECTIONS = ray_directions(RAY_COUNT)


def ray_extent(smoothed: np.ndarray, click: np.ndarray, spacing: np.ndarray, low: float, high: float,
                longest_mm: float) -> float:
    """The click's reach (step 3b): the median over the RAY_COUNT directions of the distance (mm) from `click`
    to the first voxel whose intensity is outside [`low`, `high`], each ray at most `longest_mm` long (at most
    MAX_RAY_SAMPLES samples). The median ignores the few directions in which the intensity runs on into a
    neighbour; rays that leave the array first tell nothing and are left out (all of them: `longest_mm`)."""
    step = max(0.5 * float(spacing.min()), longest_mm / MAX_RAY_SAMPLES)
    distances = np.arange(1, max(int(longest_mm / step), 1) + 1) * step
    voxels = np.rint(click + RAY_DIRECTIONS[:, None, :] * distances[None, :, None] / spacing).astype(np.int64)
    inside = np.all((voxels >= 0) & (voxels < np.asarray(smoothed.shape)), axis=2)
    values = smoothed[tuple(np.where(inside[..., None], voxels, 0).transpose(2, 0, 1))]
    held = inside & (values >= low) & (values <= high)
    leaves = ~held
    first = np.where(leaves.any(axis=1), np.argmax(leaves, axis=1), len(distances))
    known = (first == len(distances)) | inside[np.arange(len(first)), np.minimum(first, len(distances) - 1)]
    ends = np.append(distances, longest_mm)[first]
    return float(np.median(ends[known])) if known.any() else longest_mm


def zone_box(shape: Sequence[int], click: np.ndarray, spacing: np.ndarray, radius_mm: float
              ) -> tuple[slice, ...]:
    """The box (clipped to `shape`) of the ball of `radius_mm` around `click`."""
    half = np.ceil(radius_mm / spacing).astype(np.int64)
    lo = np.maximum(click - half, 0)
    hi = np.minimum(click + half + 1, np.asarray(shape))
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def zone(shape: Sequence[int], click: np.ndarray, spacing: np.ndarray, radius_mm: float
          ) -> tuple[tuple[slice, ...], np.ndarray]:
    """The box (clipped to `shape`) of the ball of `radius_mm` around `click`, and the ball's mask in it."""
    box = zone_box(shape, click, spacing, radius_mm)
    axes = [((np.arange(b.start, b.stop) - c) * s) ** 2 for b, c, s in zip(box, click, spacing)]
    inside = (axes[0][:, None, None] + axes[1][None, :, None] + axes[2][None, None, :]) <= radius_mm**2
    return box, inside


def touches_edge(region: np.ndarray) -> bool:
    """Whether `region` holds a voxel on a face of its array."""
    return any(region.take(0, axis=a).any() or region.take(-1, axis=a).any() for a in range(region.ndim))


def distance_to(region: np.ndarray, point: np.ndarray, spacing: np.ndarray) -> float:
    """The distance (mm) from `point` to the nearest voxel of `region` (inf when it has none), searched in
    boxes around the point that double in size until the nearest voxel found is certainly the nearest."""
    half = 4
    while True:
        lo = np.maximum(point - half, 0)
        hi = np.minimum(point + half + 1, np.asarray(region.shape))
        whole = bool(np.all(lo == 0) and np.all(hi == np.asarray(region.shape)))
        found = np.argwhere(region[tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))])
        if len(found):
            nearest = float(np.sqrt((((found + lo - point) * spacing) ** 2).sum(axis=1).min()))
            if whole or nearest <= half * float(spacing.min()):
                return nearest
        elif whole:
            return math.inf
        half *= 2

"""Polygons -> masks for `/v1/fixpolygon` (protocol 7.6): outline edges and even-odd fill, in bounded batches.

Every 2D array here is indexed `[x, y]` (x = NIfTI i / PNG column), as in `aiaa_server.imaging.polygons`;
polygon vertices `[x, y]` index it directly, and 3D masks are `[x, y, z]` with polygons listed per z slice.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from aiaa_server.imaging.polygons import PolygonError

# Costs grow with this bound, never with a coordinate's value.
MAX_RASTER_PIXELS = 2**22  # edge pixels one request may rasterise (fill crossings are fewer)


def polygons_to_slice(polygons: Sequence[Sequence[Sequence[int]]], shape: tuple[int, int]) -> np.ndarray:
    """Rasterise polygons onto an [x, y] grid: interior plus the edges themselves (vertices are mask pixels).
    Vertices may lie at most one image size outside the grid and the edges may not be longer than
    MAX_RASTER_PIXELS in all (PolygonError otherwise).

    Args:
        polygons: polygons of [x, y] vertices (pixels); polygons of 1-2 vertices draw only their edges.
        shape: (X, Y) of the grid, i.e. (columns, rows) of a PNG.

    Returns:
        (X, Y) uint8 mask of 0 and 1 (even-odd fill, union over polygons); parts outside the grid are clipped.
    """
    outlines = _Outlines.of(polygons)
    _check_raster([outlines], shape)
    return outlines.rasterise(shape)


def polygons_to_mask(slices: Sequence[Sequence[Sequence[Sequence[int]]]], shape: tuple[int, int, int]) -> np.ndarray:
    """`polygons_to_slice` for every z slice of a volume.

    Args:
        slices: per z slice, its polygons of [x, y] vertices; slices past `shape[2]` are ignored, missing
            ones left empty.
        shape: (X, Y, Z) of the volume.

    Returns:
        (X, Y, Z) uint8 mask of 0 and 1, Fortran order (what the NIfTI writer stores without a copy).

    Raises:
        PolygonError: a vertex more than one image size outside a slice, or edges over MAX_RASTER_PIXELS
            over all slices.
    """
    per_slice = [_Outlines.of(polygons) for polygons in slices[: shape[2]]]
    _check_raster(per_slice, shape[:2])
    mask = np.zeros(shape, dtype=np.uint8, order="F")  # slices contiguous; the NIfTI writer wants F order
    for z, outlines in enumerate(per_slice):
        mask[:, :, z] = outlines.rasterise(shape[:2])
    return mask


_BATCH = 2**20  # pixels / fill crossings rasterised at once: bounds the temporary arrays


@dataclass(frozen=True)
class _Outlines:
    """The polygons of one slice as closed edges: edge k runs from start[k] to end[k] of polygon[k]."""

    start: np.ndarray  # (E, 2) float vertices
    end: np.ndarray
    polygon: np.ndarray  # (E,) polygon number; a polygon's edges are consecutive

    @classmethod
    def of(cls, polygons: Sequence[Sequence[Sequence[float]]]) -> _Outlines:
        counts = np.array([len(p) for p in polygons], dtype=np.int64)
        points = np.asarray([v for p in polygons for v in p], dtype=np.float64).reshape(-1, 2)
        first = np.repeat(np.cumsum(counts) - counts, counts)
        following = np.arange(len(points)) + 1
        closing = following == first + np.repeat(counts, counts)
        following[closing] = first[closing]
        return cls(points, points[following], np.repeat(np.arange(len(counts)), counts))

    def edge_pixels(self) -> np.ndarray:
        """(E,) pixels of each edge's line: what rasterising it costs."""
        return np.abs(np.round(self.end) - np.round(self.start)).max(axis=1).astype(np.int64) + 1

    def rasterise(self, shape: tuple[int, int]) -> np.ndarray:
        mask = np.zeros(shape, dtype=np.uint8)
        if len(self.start):
            _fill_polygons(mask, self)
            _draw_edges(mask, np.round(self.start).astype(np.int64), np.round(self.end).astype(np.int64))
        return mask


def _check_raster(slices: list[_Outlines], shape: Sequence[int]) -> None:
    """Refuse vertices far outside the grid and edges longer than MAX_RASTER_PIXELS in all: rasterising costs
    time and memory in proportion to edge lengths, which a few far-apart vertices can make huge."""
    size = np.asarray(shape[:2], dtype=np.float64)
    cost = 0
    for outlines in slices:
        outside = np.flatnonzero(((outlines.start < -size) | (outlines.start >= 2 * size)).any(axis=1))
        if len(outside):
            raise PolygonError(
                f"poly: vertex {[int(c) for c in outlines.start[outside[0]]]} is outside the image (shape "
                f"{[int(s) for s in size]}); vertices may lie at most one image size outside it"
            )
        cost += int(outlines.edge_pixels().sum())
    if cost > MAX_RASTER_PIXELS:
        raise PolygonError(f"poly: the polygons' edges are too long to rasterise ({cost} pixels, at most "
                           f"{MAX_RASTER_PIXELS})")


def _batches(costs: np.ndarray, limit: int = _BATCH) -> Iterator[tuple[int, int]]:
    """Consecutive index ranges [lo, hi) of `costs` summing to at most `limit` (a costlier item stands alone)."""
    totals = np.cumsum(costs)
    lo = 0
    while lo < len(costs):
        done = int(totals[lo - 1]) if lo else 0
        hi = max(int(np.searchsorted(totals, done + limit, side="right")), lo + 1)
        yield lo, hi
        lo = hi


def _draw_edges(mask: np.ndarray, start: np.ndarray, end: np.ndarray) -> None:
    """Bresenham lines from start[k] to end[k], exactly the pixels of skimage.draw.line, all edges at once."""
    for lo, hi in _batches(np.abs(end - start).max(axis=1) + 1):
        rows, columns = _line_pixels(start[lo:hi], end[lo:hi])
        inside = (rows >= 0) & (columns >= 0) & (rows < mask.shape[0]) & (columns < mask.shape[1])
        mask[rows[inside], columns[inside]] = 1


def _line_pixels(start: np.ndarray, end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    steep = np.abs(end[:, 0] - start[:, 0]) > np.abs(end[:, 1] - start[:, 1])  # x (rows) is the major axis
    flat_rows, flat_columns = _major_minor_pixels(start[~steep, 1], end[~steep, 1], start[~steep, 0], end[~steep, 0])
    steep_columns, steep_rows = _major_minor_pixels(start[steep, 0], end[steep, 0], start[steep, 1], end[steep, 1])
    return np.concatenate([flat_rows, steep_rows]), np.concatenate([flat_columns, steep_columns])


def _major_minor_pixels(major0: np.ndarray, major1: np.ndarray, minor0: np.ndarray, minor1: np.ndarray
                        ) -> tuple[np.ndarray, np.ndarray]:
    """(minor, major) pixel coordinates of lines whose |major extent| >= |minor extent|: Bresenham's minor
    position after i major steps, in closed form (integer arithmetic)."""
    major_length, minor_length = np.abs(major1 - major0), np.abs(minor1 - minor0)
    steps = major_length + 1
    i = np.arange(int(steps.sum())) - np.repeat(np.cumsum(steps) - steps, steps)
    length = np.repeat(major_length, steps)
    minor_steps = (2 * np.repeat(minor_length, steps) * i + length) // np.maximum(2 * length, 1)
    major = np.repeat(major0, steps) + np.repeat(np.where(major1 > major0, 1, -1), steps) * i
    minor = np.repeat(minor0, steps) + np.repeat(np.where(minor1 > minor0, 1, -1), steps) * minor_steps
    return minor, major


def _fill_polygons(mask: np.ndarray, outlines: _Outlines) -> None:
    """Set the pixels inside each polygon of >= 3 vertices (even-odd rule, union over polygons) by scanlines:
    cost grows with the rows the edges span, not with (bounding box area x vertices) like a per-pixel test.
    Pixels exactly on an edge may be left out; the caller draws the edges."""
    height = mask.shape[0]
    vertices = np.bincount(outlines.polygon)
    keep = vertices[outlines.polygon] >= 3
    start, end, polygon = outlines.start[keep], outlines.end[keep], outlines.polygon[keep]
    first = np.maximum(np.ceil(np.minimum(start[:, 0], end[:, 0])), 0).astype(np.int64)  # rows x0 <= r < x1
    stop = np.minimum(np.ceil(np.maximum(start[:, 0], end[:, 0])), height).astype(np.int64)
    rows_spanned = np.maximum(stop - first, 0)
    polygon_cost = np.bincount(polygon, weights=rows_spanned, minlength=len(vertices))
    edge_offsets = np.searchsorted(polygon, np.arange(len(vertices) + 1))
    for lo, hi in _batches(polygon_cost):
        edges = slice(edge_offsets[lo], edge_offsets[hi])
        starts, ends = _polygon_spans(start[edges], end[edges], polygon[edges] - lo, first[edges],
                                      rows_spanned[edges], mask.shape)
        _paint_spans(mask, starts, ends)


def _polygon_spans(start: np.ndarray, end: np.ndarray, polygon: np.ndarray, first: np.ndarray,
                   rows_spanned: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Per polygon and row, the pixels inside it: between its 1st and 2nd, 3rd and 4th ... crossing of the row
    (a pixel c is inside when an odd number of crossings lie at or before it, i.e. ceil(crossing) <= c).
    Returned as flat indices row * (width + 1) + column of each span's first pixel and of its end."""
    height, width = shape
    row = np.arange(int(rows_spanned.sum())) - np.repeat(np.cumsum(rows_spanned) - rows_spanned, rows_spanned)
    x0, x1 = np.repeat(start[:, 0], rows_spanned), np.repeat(end[:, 0], rows_spanned)
    y0, y1 = np.repeat(start[:, 1], rows_spanned), np.repeat(end[:, 1], rows_spanned)
    row += np.repeat(first, rows_spanned)
    crossing = y0 + (row - x0) * (y1 - y0) / (x1 - x0)
    column = np.clip(np.ceil(crossing), 0, width).astype(np.int64)
    # One sortable key per crossing; each (polygon, row) has an even number of crossings, so after sorting
    # consecutive pairs are the spans. The key stays below 2**62 for any mask that fits in memory.
    cells = width + 1
    key = np.sort((np.repeat(polygon, rows_spanned) * height + row) * cells + column)
    flat = key % (height * cells)
    return flat[0::2], flat[1::2]


def _paint_spans(mask: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> None:
    """Set the pixels of flat spans [start, end) (row * (width + 1) + column): +1/-1 at the span ends and a
    running sum along each row, in bands of rows so the counts stay small."""
    height, width = mask.shape
    cells = width + 1
    starts, ends = np.sort(starts), np.sort(ends)
    if not len(starts):
        return
    first_row, last_row = int(starts[0] // cells), int(ends[-1] // cells)
    band = max(1, min(_BATCH // cells, last_row + 1 - first_row))
    for low in range(first_row, last_row + 1, band):
        bounds = [low * cells, (low + band) * cells]
        opened = starts[slice(*np.searchsorted(starts, bounds))] - bounds[0]
        closed = ends[slice(*np.searchsorted(ends, bounds))] - bounds[0]
        if not len(opened):
            continue
        counts = np.bincount(opened, minlength=band * cells) - np.bincount(closed, minlength=band * cells)
        covered = np.cumsum(counts.reshape(band, cells), axis=1)[:, :width] > 0
        rows_here = min(band, height - low)
        mask[low:low + rows_here] |= covered[:rows_here]

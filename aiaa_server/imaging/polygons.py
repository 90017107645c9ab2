"""Mask -> polygon tracing and vertex moves for `/v1/mask2polygon` and `/v1/fixpolygon` (protocol 7.5, 7.6).

Polygons back to masks: `aiaa_server.imaging.polygon_raster`.

Every 2D array here is indexed `[x, y]` (x = NIfTI i / PNG column), so polygon vertices `[x, y]` index it
directly; 3D masks are `[x, y, z]` and polygons are listed per z slice. Vertices are integer pixels of the
mask's boundary (foreground pixels next to background).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage
from skimage.measure import approximate_polygon, find_contours

Vertex = list[int]
Polygon = list[Vertex]
SlicePolygons = list[Polygon]

DEFAULT_MORE_POINTS = 10
EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)

# Costs below grow with these bounds, never with a coordinate's value.
MAX_POLYGONS = 100_000  # objects traced in one mask2polygon mask


class PolygonError(ValueError):
    """Polygons or masks that cannot be used: too far outside the image, too costly, too many objects."""


def tolerance_for(more_points: float) -> float:
    """Douglas–Peucker tolerance in pixels: `more_points` 10 (the clients' default) keeps vertices within
    1 px of the traced boundary; larger values keep more points, <= 0 keeps every boundary pixel."""
    return 0.0 if more_points <= 0 else 10.0 / float(more_points)


def _dedupe_cyclic(points: np.ndarray) -> np.ndarray:
    keep = np.any(points != np.roll(points, 1, axis=0), axis=1)
    if not keep.any():
        return points[:1]
    return points[keep]


def _snap_to_foreground(contour: np.ndarray, component: np.ndarray) -> np.ndarray:
    """find_contours at 0.5 gives half-pixel points between a foreground and a background pixel: pick the
    foreground one of the two (or four) neighbours."""
    lower = np.floor(contour).astype(int)
    upper = np.ceil(contour).astype(int)
    snapped = lower.copy()
    chosen = np.zeros(len(contour), dtype=bool)
    for cx in (lower[:, 0], upper[:, 0]):
        for cy in (lower[:, 1], upper[:, 1]):
            inside = (cx >= 0) & (cy >= 0) & (cx < component.shape[0]) & (cy < component.shape[1])
            hit = np.zeros(len(contour), dtype=bool)
            hit[inside] = component[cx[inside], cy[inside]]
            take = hit & ~chosen
            snapped[take] = np.stack([cx[take], cy[take]], axis=1)
            chosen |= take
    return snapped


def _component_polygon(component: np.ndarray, tolerance: float) -> Polygon:
    padded = np.pad(component, 1).astype(np.float32)
    contours = find_contours(padded, 0.5, fully_connected="high")
    outline = max(contours, key=len) - 1.0  # the outer boundary is the longest; holes are filled anyway
    points = _dedupe_cyclic(_snap_to_foreground(outline, component))
    if len(points) >= 4 and tolerance > 0:
        # Douglas-Peucker always keeps the start point: start at a real corner (farthest from the centroid).
        points = np.roll(points, -int(np.argmax(((points - points.mean(axis=0)) ** 2).sum(axis=1))), axis=0)
        closed = approximate_polygon(np.vstack([points, points[:1]]).astype(float), tolerance)
        points = _dedupe_cyclic(np.round(closed[:-1]).astype(int))
    return [[int(x), int(y)] for x, y in points]


def slice_to_polygons(
    mask: np.ndarray, more_points: float = DEFAULT_MORE_POINTS, max_polygons: int = MAX_POLYGONS
) -> SlicePolygons:
    """Outer boundary polygons of each 8-connected foreground component of a 2D [x, y] mask (at most
    `max_polygons` components: more raise PolygonError before any is traced).

    Args:
        mask: (X, Y) array; foreground is > 0.
        more_points: vertex density, see `tolerance_for`.
        max_polygons: most components traced.

    Returns:
        One polygon per component (holes filled), each a list of [x, y] boundary pixels; `[]` when empty.
    """
    foreground = np.asarray(mask) > 0
    if not foreground.any():
        return []
    labels, count = ndimage.label(foreground, structure=EIGHT_CONNECTED)
    if count > max_polygons:
        raise PolygonError(f"the mask has more than {max_polygons} separate objects")
    tolerance = tolerance_for(more_points)
    polygons: SlicePolygons = []
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        component = ndimage.binary_fill_holes(labels[box] == index)
        offset = np.array([box[0].start, box[1].start])
        polygons.append([[x + int(offset[0]), y + int(offset[1])] for x, y in _component_polygon(component, tolerance)])
    return polygons


def mask_to_polygons(mask: np.ndarray, more_points: float = DEFAULT_MORE_POINTS) -> list[SlicePolygons]:
    """Per z slice of a 3D [x, y, z] mask (or a 2D [x, y] one), its polygons (`[]` for empty slices).

    Args:
        mask: (X, Y, Z) or (X, Y) array; foreground is > 0.
        more_points: vertex density, see `tolerance_for`.

    Returns:
        Z lists of `slice_to_polygons` polygons (one list for a 2D mask).

    Raises:
        PolygonError: not 2D or 3D, or more than MAX_POLYGONS objects over all slices.
    """
    volume = np.asarray(mask)
    if volume.ndim not in (2, 3):
        raise PolygonError(f"a mask must be 2D or 3D, got shape {list(volume.shape)}")
    if volume.ndim == 2:
        volume = volume[..., None]
    slices: list[SlicePolygons] = []
    budget = MAX_POLYGONS
    for z in range(volume.shape[2]):
        slices.append(slice_to_polygons(volume[:, :, z], more_points, max_polygons=budget))
        budget -= len(slices[-1])
    return slices


def _falloff(distance: int, reach: int) -> float:
    """Weight of the move at `distance` steps from the dragged vertex: 1 at 0, linearly down to 0 past `reach`."""
    return max(0.0, 1.0 - distance / (reach + 1))


def move_vertex(
    polygons: Sequence[Sequence[Sequence[int]]],
    polygon_index: int,
    vertex_index: int,
    offset: Sequence[float],
    neighbours: int = 0,
    weight: float = 1.0,
) -> SlicePolygons:
    """Move one vertex by `offset` ([dx, dy]) and drag up to `neighbours` vertices on each side along,
    each by a linearly smaller share. Returns new polygons (the input is not modified).

    Args:
        polygons: polygons of [x, y] vertices (pixels).
        polygon_index: the polygon of the moved vertex (the caller checks the indices).
        vertex_index: the moved vertex in that polygon.
        offset: [dx, dy] in pixels.
        neighbours: vertices dragged on each side, at most (vertices - 1) // 2; vertex k steps away moves
            by 1 - k / (neighbours + 1) of the offset.
        weight: share of `offset` applied to the whole drag (`move_vertex_3d`'s slice falloff).

    Returns:
        The polygons with the moved vertices rounded to integer pixels.
    """
    updated = [[[int(c) for c in v] for v in polygon] for polygon in polygons]
    polygon = updated[polygon_index]
    count = len(polygon)
    reach = max(0, min(int(neighbours), (count - 1) // 2))  # never drag a vertex twice around a small polygon
    for step in range(-reach, reach + 1):
        share = weight * _falloff(abs(step), reach)
        vertex = polygon[(vertex_index + step) % count]
        vertex[0] = round(vertex[0] + offset[0] * share)
        vertex[1] = round(vertex[1] + offset[1] * share)
    return updated


def _nearest_vertex(polygons: Sequence[Sequence[Sequence[int]]], target: Sequence[int]) -> tuple[int, int] | None:
    best: tuple[float, int, int] | None = None
    for p, polygon in enumerate(polygons):
        for v, vertex in enumerate(polygon):
            distance = float((vertex[0] - target[0]) ** 2 + (vertex[1] - target[1]) ** 2)
            if best is None or distance < best[0]:
                best = (distance, p, v)
    return None if best is None else (best[1], best[2])


def move_vertex_3d(
    slices: Sequence[Sequence[Sequence[Sequence[int]]]],
    slice_index: int,
    polygon_index: int,
    vertex_index: int,
    offset: Sequence[float],
    neighbours: int = 0,
    neighbours_3d: int = 0,
) -> list[SlicePolygons]:
    """`move_vertex` on one slice, and on up to `neighbours_3d` slices either side the vertex nearest to the
    dragged vertex's original position follows with a share falling off linearly with slice distance.

    Args:
        slices: per z slice, its polygons of [x, y] vertices.
        slice_index: the z slice of the moved vertex.
        polygon_index: the polygon of the moved vertex in that slice.
        vertex_index: the moved vertex in that polygon.
        offset: [dx, dy] in pixels.
        neighbours: vertices dragged on each side within each slice (see `move_vertex`).
        neighbours_3d: slices on each side that follow; the one d slices away moves by
            1 - d / (neighbours_3d + 1) of the offset. Empty slices are left as they are.

    Returns:
        New per-slice polygons (the input is not modified).
    """
    updated = [[[[int(c) for c in v] for v in polygon] for polygon in polygons] for polygons in slices]
    anchor = list(updated[slice_index][polygon_index][vertex_index])
    updated[slice_index] = move_vertex(updated[slice_index], polygon_index, vertex_index, offset, neighbours)
    reach = max(0, int(neighbours_3d))
    for distance in range(1, min(reach, len(updated)) + 1):  # no slices lie farther: never loop past them
        share = _falloff(distance, reach)
        for z in (slice_index - distance, slice_index + distance):
            if not 0 <= z < len(updated) or not updated[z]:
                continue
            nearest = _nearest_vertex(updated[z], anchor)
            if nearest is not None:
                updated[z] = move_vertex(updated[z], nearest[0], nearest[1], offset, neighbours, weight=share)
    return updated


__all__ = [
    "PolygonError",
    "mask_to_polygons",
    "move_vertex",
    "move_vertex_3d",
    "slice_to_polygons",
    "tolerance_for",
]

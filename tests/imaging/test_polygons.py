"""Polygon geometry: boundary tracing, simplification, rasterisation, vertex moves; the PNG codec."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from skimage.draw import disk, line, polygon

from aiaa_server.imaging.png import decode_png, encode_png, png_shape
from aiaa_server.imaging.polygon_raster import MAX_RASTER_PIXELS, polygons_to_mask, polygons_to_slice
from aiaa_server.imaging.polygons import (
    PolygonError,
    mask_to_polygons,
    move_vertex,
    move_vertex_3d,
    slice_to_polygons,
)


def boundary(mask: np.ndarray) -> np.ndarray:
    """Foreground pixels with a background 4-neighbour (or on the image edge)."""
    foreground = mask > 0
    return foreground & ~ndimage.binary_erosion(foreground, border_value=0)


def shapes_slice() -> np.ndarray:
    mask = np.zeros((60, 50), dtype=np.uint8)
    mask[5:20, 8:25] = 1  # rectangle x 5..19, y 8..24
    rr, cc = disk((40, 30), 8, shape=mask.shape)
    mask[rr, cc] = 1
    return mask


def test_rectangle_gives_its_four_corners() -> None:
    mask = np.zeros((30, 40), dtype=np.uint8)
    mask[5:20, 8:25] = 1
    (polygon,) = slice_to_polygons(mask, 10)
    assert sorted(map(tuple, polygon)) == [(5, 8), (5, 24), (19, 8), (19, 24)]


def test_vertices_lie_on_the_boundary_and_rasterise_back() -> None:
    mask = shapes_slice()
    polygons = slice_to_polygons(mask, 10)
    assert len(polygons) == 2
    edge = boundary(mask)
    assert all(edge[x, y] for polygon in polygons for x, y in polygon)
    back = polygons_to_slice(polygons, mask.shape)
    assert (back != mask).sum() <= 0.05 * mask.sum()


def test_more_points_keeps_more_vertices() -> None:
    mask = shapes_slice()
    counts = [sum(len(p) for p in slice_to_polygons(mask, n)) for n in (2, 10, 100, 0)]
    assert counts == sorted(counts)
    assert counts[0] < counts[-1]
    every = slice_to_polygons(mask, 0)
    np.testing.assert_array_equal(polygons_to_slice(every, mask.shape), mask)  # exact with all points


def test_holes_are_filled_and_diagonal_pixels_join() -> None:
    mask = np.zeros((20, 20), dtype=np.uint8)
    mask[2:12, 2:12] = 1
    mask[5:8, 5:8] = 0
    mask[12, 12] = 1  # touches the square diagonally: same component
    assert len(slice_to_polygons(mask)) == 1


def test_volume_polygons_are_per_z_slice() -> None:
    volume = np.zeros((30, 25, 8), dtype=np.uint8)
    volume[4:14, 6:16, 2:5] = 1
    polygons = mask_to_polygons(volume)
    assert len(polygons) == 8
    assert [bool(s) for s in polygons] == [False, False, True, True, True, False, False, False]
    assert all(isinstance(c, int) for s in polygons for p in s for v in p for c in v)
    np.testing.assert_array_equal(polygons_to_mask(polygons, volume.shape), volume)


def test_move_vertex_drags_neighbours_less() -> None:
    polygon = [[10, 10], [10, 20], [10, 30], [20, 30], [30, 30], [30, 20], [30, 10], [20, 10]]
    moved = move_vertex([polygon], 0, 2, [6, -3], neighbours=2)[0]
    assert moved[2] == [16, 27]
    assert moved[1] == [14, 18] and moved[3] == [24, 28]  # 2/3 of the move
    assert moved[0] == [12, 9] and moved[4] == [32, 29]  # 1/3
    assert moved[5:] == polygon[5:]
    assert polygon[2] == [10, 30]  # input untouched


def test_move_vertex_3d_propagates_across_slices() -> None:
    square = [[10, 10], [10, 20], [20, 20], [20, 10]]
    slices = [[] for _ in range(3)] + [[list(map(list, square))] for _ in range(5)] + [[]]
    moved = move_vertex_3d(slices, 5, 0, 2, [6, 6], neighbours=0, neighbours_3d=2)
    assert moved[5][0][2] == [26, 26]
    assert moved[4][0][2] == [24, 24] and moved[6][0][2] == [24, 24]
    assert moved[3][0][2] == [22, 22] and moved[7][0][2] == [22, 22]
    assert moved[5][0][0] == [10, 10]
    assert moved[8] == [] and moved[0] == []


def skimage_rasterised(polygons: list, shape: tuple[int, int]) -> np.ndarray:
    """The reference: skimage's per-pixel polygon test plus its Bresenham edges, one polygon at a time."""
    mask = np.zeros(shape, dtype=np.uint8)
    for points in polygons:
        xs, ys = np.asarray(points, dtype=float).reshape(-1, 2).T
        if len(xs) >= 3:
            mask[polygon(xs, ys, shape=shape)] = 1
        for (x0, y0), (x1, y1) in zip(points, points[1:] + points[:1]):
            rr, cc = line(x0, y0, x1, y1)
            inside = (rr >= 0) & (cc >= 0) & (rr < shape[0]) & (cc < shape[1])
            mask[rr[inside], cc[inside]] = 1
    return mask


def test_rasterisation_matches_skimage_on_random_polygons() -> None:
    """Self-intersecting, overlapping, partly outside the grid, degenerate: the scanline fill plus vectorised
    edges give exactly the pixels of the reference."""
    rng = np.random.default_rng(5)
    for _ in range(1500):
        shape = (int(rng.integers(1, 40)), int(rng.integers(1, 40)))
        polygons = [
            np.stack([rng.integers(-shape[0] // 2, shape[0] * 3 // 2, n), rng.integers(-shape[1] // 2, shape[1] * 3 // 2, n)],
                     axis=1).tolist()
            for n in rng.integers(0, 12, int(rng.integers(0, 5)))
        ]
        np.testing.assert_array_equal(polygons_to_slice(polygons, shape), skimage_rasterised(polygons, shape))


def test_vertices_far_outside_or_long_edges_are_refused_before_rasterising() -> None:
    with pytest.raises(PolygonError, match=r"vertex \[1000000000, 0\] is outside the image"):
        polygons_to_slice([[[0, 0], [10**9, 0], [10**9, 10**9]]], (64, 64))
    band = polygons_to_slice([[[-64, 2], [127, 2], [127, 10], [-64, 10]]], (64, 64))  # one image size out: fine
    assert band[:, 2:11].all() and band.sum() == 64 * 9
    zigzag = [[0, 0], [63, 63]] * (MAX_RASTER_PIXELS // 64 // 2 + 1)
    with pytest.raises(PolygonError, match="too long to rasterise"):
        polygons_to_slice([zigzag], (64, 64))
    half = [[0, 0], [63, 63]] * (MAX_RASTER_PIXELS // 64 // 4 + 1)
    polygons_to_mask([[half], []], (64, 64, 2))  # each slice alone is within the budget ...
    with pytest.raises(PolygonError, match="too long to rasterise"):
        polygons_to_mask([[half], [half]], (64, 64, 2))  # ... the request is not


def test_propagation_past_the_last_slice_costs_nothing_and_changes_nothing() -> None:
    square = [[10, 10], [10, 20], [20, 20], [20, 10]]
    slices = [[list(map(list, square))] for _ in range(5)]
    huge = move_vertex_3d(slices, 2, 0, 2, [9, 9], neighbours_3d=10**12)
    assert [s[0][2] for s in huge] == [[29, 29]] * 5  # reach 10**12: every slice follows (almost) fully
    reach_4 = move_vertex_3d(slices, 2, 0, 2, [9, 9], neighbours_3d=4)  # shares 1 - d/5, beyond the slices too
    assert [s[0][2] for s in reach_4] == [[25, 25], [27, 27], [29, 29], [27, 27], [25, 25]]


def test_masks_with_too_many_objects_or_dimensions_are_refused() -> None:
    speckle = np.zeros((20, 20), dtype=np.uint8)
    speckle[::2, ::4] = 1  # 50 isolated pixels
    assert len(slice_to_polygons(speckle, max_polygons=50)) == 50
    with pytest.raises(PolygonError, match="more than 49 separate objects"):
        slice_to_polygons(speckle, max_polygons=49)
    with pytest.raises(PolygonError, match="2D or 3D"):
        mask_to_polygons(np.zeros(5, dtype=np.uint8))


@pytest.mark.parametrize("values", [np.array([[0, 1, 2], [255, 7, 0]], dtype=np.uint8),
                                    np.array([[0, 1000], [65535, 3]], dtype=np.uint16)])
def test_png_round_trip(values: np.ndarray) -> None:
    payload = encode_png(values)
    assert png_shape(payload) == values.shape
    decoded = decode_png(payload)
    assert decoded.dtype == values.dtype
    np.testing.assert_array_equal(decoded, values)

"""mask2polygon/fixpolygon parameters and the `poly` lists clients send, without a server."""

from __future__ import annotations

import pytest

from aiaa_server.errors import InvalidParams
from aiaa_server.services.polygon_params import (
    MAX_POLYGON_POINTS,
    FixPolygonParams,
    Mask2PolygonParams,
    check_index,
    parse_polygon_slices,
    parse_polygons,
    validate_params,
)


def test_parse_polygons_converts_and_bounds() -> None:
    assert parse_polygons([[[1, 2.9], [3, 4]]]) == [[[1, 2], [3, 4]]]
    assert parse_polygon_slices([[], [[[1, 2]]]]) == [[], [[[1, 2]]]]
    for bad, word in [
        ([[[1, float("nan")]]], "finite"), ([[[1, float("inf")]]], "finite"), ([[[1, 2**40]]], "finite"),
        ([[[1, "2"]]], "numbers"), ([[[1, True]]], "numbers"), ([[[1, 2, 3]]], r"\[x, y\]"), ([[1, 2]], r"\[x, y\]"),
        (["square"], "polygon"), ("square", "list of polygons"),
    ]:
        with pytest.raises(InvalidParams, match=word):
            parse_polygons(bad)
    with pytest.raises(InvalidParams, match=f"more than {MAX_POLYGON_POINTS} vertices"):
        parse_polygons([[["not a vertex"]] * (MAX_POLYGON_POINTS + 1)])  # counted before converting
    with pytest.raises(InvalidParams, match="polygons"):
        parse_polygon_slices([[]] * (MAX_POLYGON_POINTS + 1))


def test_parse_polygon_slices_refuses_a_flat_list() -> None:
    with pytest.raises(InvalidParams, match="list of slices"):
        parse_polygon_slices("square")


def test_validate_params_names_the_problem() -> None:
    assert validate_params(Mask2PolygonParams, {"more_points": 3, "unknown": 1}).more_points == 3
    with pytest.raises(InvalidParams, match="more_points"):
        validate_params(Mask2PolygonParams, {"more_points": float("nan")})
    with pytest.raises(InvalidParams, match="poly"):
        validate_params(FixPolygonParams, {})


def test_fixpolygon_params_accept_legacy_keys() -> None:
    params = validate_params(FixPolygonParams, {"prev_poly": [], "vertexOffset": [1, 2], "polygonIndex": 3,
                                                "vertexIndex": 4, "sliceIndex": 5})
    assert (params.poly, params.vertex_offset) == ([], [1.0, 2.0])
    assert (params.polygon_index, params.vertex_index, params.slice_index) == (3, 4, 5)


@pytest.mark.parametrize("poly, dimension, dims", [
    ([[[1, 2], [3, 4]]], None, 2),  # polygons of vertices
    ([[], [[[1, 2], [3, 4]]]], None, 3),  # slices of polygons; an empty first slice is skipped
    ([[[1, 2], [3, 4]]], 3, 3),  # `dimension` wins over the guess
])
def test_dims_guessed_from_nesting(poly: list, dimension: int | None, dims: int) -> None:
    assert FixPolygonParams(poly=poly, dimension=dimension).dims() == dims


def test_check_index() -> None:
    check_index([1, 2], 1, "vertex_index")
    with pytest.raises(InvalidParams, match=r"^vertex_index 2 is out of range \(there are 2\)$"):
        check_index([1, 2], 2, "vertex_index")

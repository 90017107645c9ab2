"""Parameters of mask2polygon and fixpolygon (protocol 7.5, 7.6) and the `poly` lists clients send."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError

from aiaa_server.errors import InvalidParams, format_validation_errors
from aiaa_server.imaging.polygons import DEFAULT_MORE_POINTS, SlicePolygons, Vertex

MAX_MORE_POINTS = 1e6  # tolerance 1e-5 px: every boundary pixel is kept long before this
MAX_POLYGON_POINTS = 100_000  # vertices in one `poly`, all polygons and slices together
MAX_POLYGONS = 100_000  # polygons plus 3D slices in one `poly`
MAX_COORDINATE = 2**31  # |coordinate| accepted before the image size is known (then: within one image size)

Offset = Annotated[float, Field(allow_inf_nan=False, ge=-MAX_COORDINATE, le=MAX_COORDINATE)]
ParamsModel = TypeVar("ParamsModel", bound=BaseModel)

MASK2POLYGON_EXAMPLE: dict[str, Any] = {"more_points": 10}
FIXPOLYGON_EXAMPLE: dict[str, Any] = {  # a 2D move: send it with a PNG of at least 31 x 31 pixels
    "poly": [[[10, 10], [10, 30], [30, 30], [30, 10]]], "vertex_offset": [3, -2], "polygon_index": 0,
    "vertex_index": 1, "propagate_neighbor": 1, "dimension": 2,
}


class Mask2PolygonParams(BaseModel):
    """`params` of `/v1/mask2polygon`: how closely the polygons follow the mask's boundary."""

    model_config = ConfigDict(extra="ignore", json_schema_extra={"examples": [MASK2POLYGON_EXAMPLE]})

    more_points: float = Field(
        DEFAULT_MORE_POINTS, allow_inf_nan=False, ge=-MAX_MORE_POINTS, le=MAX_MORE_POINTS,
        description="vertex density: polygons stay within 10/more_points pixels of the traced boundary (10, the "
        "clients' default: 1 px); larger keeps more vertices, <= 0 keeps every boundary pixel", examples=[10],
    )


class FixPolygonParams(BaseModel):
    """`params` of `/v1/fixpolygon`: the polygons, which vertex moves, and by how much. Current keys, plus the
    2019 client's camelCase ones (`prev_poly`, `vertexOffset`, `polygonIndex`, `vertexIndex`, `sliceIndex`)."""

    model_config = ConfigDict(extra="ignore", json_schema_extra={"examples": [FIXPOLYGON_EXAMPLE]})

    poly: list[Any] = Field(  # parsed once the image is read
        validation_alias=AliasChoices("poly", "prev_poly"),
        description="2D: polygons of [x, y] pixel vertices; 3D: one such list per z slice (also `prev_poly`)",
        examples=[FIXPOLYGON_EXAMPLE["poly"]],
    )
    vertex_offset: list[Offset] = Field(
        default_factory=lambda: [0.0, 0.0], validation_alias=AliasChoices("vertex_offset", "vertexOffset"),
        min_length=2, max_length=2, description="[dx, dy] in pixels added to the moved vertex", examples=[[3, -2]],
    )
    dimension: int | None = Field(
        None, ge=2, le=3, description="2 (a PNG slice) or 3 (a NIfTI/NRRD volume); default: from how `poly` nests",
        examples=[2],
    )
    polygon_index: int = Field(0, ge=0, validation_alias=AliasChoices("polygon_index", "polygonIndex"),
                               description="which polygon (of the slice) holds the vertex", examples=[0])
    vertex_index: int = Field(0, ge=0, validation_alias=AliasChoices("vertex_index", "vertexIndex"),
                              description="which vertex of that polygon moves", examples=[1])
    slice_index: int = Field(0, ge=0, validation_alias=AliasChoices("slice_index", "sliceIndex"),
                             description="3D: which z slice of `poly`", examples=[0])
    propagate_neighbor: int = Field(0, ge=0, le=MAX_POLYGON_POINTS,
                                    description="vertices on each side dragged along, each by a linearly smaller share",
                                    examples=[1])
    propagate_neighbor_3d: int = Field(0, ge=0, le=MAX_POLYGON_POINTS,
                                       description="3D: slices on each side whose nearest vertex follows (falling off)",
                                       examples=[0])

    def dims(self) -> int:
        """`dimension` when given, else guessed from how deeply `poly` nests (slices add one level)."""
        if self.dimension is not None:
            return self.dimension
        return 3 if _depth(self.poly) >= 4 else 2


def _depth(value: Any) -> int:
    depth = 0
    while isinstance(value, list):
        depth += 1
        value = next((v for v in value if isinstance(v, list) and v), value[0] if value else None)
    return depth


def validate_params(model: type[ParamsModel], params: dict[str, Any]) -> ParamsModel:
    """`params` as `model`; InvalidParams names every problem."""
    try:
        return model.model_validate(params)
    except ValidationError as exc:
        raise InvalidParams(format_validation_errors(exc, empty_loc="params")) from exc


@dataclass
class _Budget:
    """What `poly` may still hold; counts are taken before the items are converted."""

    points: int = MAX_POLYGON_POINTS
    polygons: int = MAX_POLYGONS

    def take(self, polygons: int = 0, points: int = 0) -> None:
        self.polygons -= polygons
        self.points -= points
        if self.polygons < 0:
            raise InvalidParams(f"poly has more than {MAX_POLYGONS} polygons and slices")
        if self.points < 0:
            raise InvalidParams(f"poly has more than {MAX_POLYGON_POINTS} vertices")


def _parse_vertex(value: Any) -> Vertex:
    if not isinstance(value, list) or len(value) != 2:
        raise InvalidParams(f"poly: a vertex must be [x, y], got {str(value)[:40]}")
    for coordinate in value:
        if isinstance(coordinate, bool) or not isinstance(coordinate, (int, float)):
            raise InvalidParams(f"poly: vertex coordinates must be numbers, got {str(value)[:40]}")
        if not math.isfinite(coordinate) or abs(coordinate) > MAX_COORDINATE:
            raise InvalidParams(f"poly: vertex coordinates must be finite and at most {MAX_COORDINATE}, got {value}")
    return [int(coordinate) for coordinate in value]


def _parse_slice(value: Any, budget: _Budget) -> SlicePolygons:
    if not isinstance(value, list):
        raise InvalidParams(f"poly: expected a list of polygons, got {type(value).__name__}")
    budget.take(polygons=len(value))
    polygons: SlicePolygons = []
    for polygon in value:
        if not isinstance(polygon, list):
            raise InvalidParams(f"poly: a polygon must be a list of [x, y] vertices, got {type(polygon).__name__}")
        budget.take(points=len(polygon))
        polygons.append([_parse_vertex(vertex) for vertex in polygon])
    return polygons


def parse_polygons(value: Any) -> SlicePolygons:
    """2D `poly`: polygons of [x, y] vertices (numbers, truncated to int pixels, as always), at most
    MAX_POLYGON_POINTS vertices and MAX_POLYGONS polygons; InvalidParams names the problem."""
    return _parse_slice(value, _Budget())


def parse_polygon_slices(value: Any) -> list[SlicePolygons]:
    """3D `poly`: one list of polygons per z slice, with the bounds of `parse_polygons` over all slices."""
    if not isinstance(value, list):
        raise InvalidParams(f"poly: expected a list of slices, got {type(value).__name__}")
    budget = _Budget()
    budget.take(polygons=len(value))
    return [_parse_slice(polygons, budget) for polygons in value]


def check_index(items: list[Any], index: int, what: str) -> None:
    """InvalidParams when `index` does not point into `items` (`what` names the parameter)."""
    if index >= len(items):
        raise InvalidParams(f"{what} {index} is out of range (there are {len(items)})")

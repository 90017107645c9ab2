"""`POST /v1/mask2polygon` and `POST /v1/fixpolygon` (protocol 7.5, 7.6): thin shells over
`aiaa_server.imaging.polygons`, with PNG (2D) and NIfTI/NRRD (3D) in and out."""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError

from aiaa_server.api.deps import get_services
from aiaa_server.api.forms import read_body
from aiaa_server.api.openapi import PARAMS_AND_IMAGE
from aiaa_server.api.responses import multipart_response
from aiaa_server.errors import BadRequest, InvalidImage, InvalidParams, format_validation_errors
from aiaa_server.imaging.formats import ImageFormat, client_basename, detect_format
from aiaa_server.imaging.io import Volume, encode_volume, read_volume
from aiaa_server.imaging.limits import DecodeLimits
from aiaa_server.imaging.png import decode_png, encode_png, png_shape
from aiaa_server.imaging.polygons import (
    DEFAULT_MORE_POINTS,
    PolygonError,
    SlicePolygons,
    Vertex,
    mask_to_polygons,
    move_vertex,
    move_vertex_3d,
    polygons_to_mask,
    polygons_to_slice,
)
from aiaa_server.inference.service import ImageUpload
from aiaa_server.services import Services

router = APIRouter(tags=["polygons"])

POLYGON_DOC = PARAMS_AND_IMAGE
MAX_MORE_POINTS = 1e6  # tolerance 1e-5 px: every boundary pixel is kept long before this
MAX_POLYGON_POINTS = 100_000  # vertices in one `poly`, all polygons and slices together
MAX_POLYGONS = 100_000  # polygons plus 3D slices in one `poly`
MAX_COORDINATE = 2**31  # |coordinate| accepted before the image size is known (then: within one image size)

Offset = Annotated[float, Field(allow_inf_nan=False, ge=-MAX_COORDINATE, le=MAX_COORDINATE)]


class Mask2PolygonParams(BaseModel):
    model_config = ConfigDict(extra="ignore")

    more_points: float = Field(DEFAULT_MORE_POINTS, allow_inf_nan=False, ge=-MAX_MORE_POINTS, le=MAX_MORE_POINTS)


class FixPolygonParams(BaseModel):
    """Current keys, plus the 2019 client's camelCase ones (`prev_poly`, `polygonIndex`, …)."""

    model_config = ConfigDict(extra="ignore")

    poly: list[Any] = Field(validation_alias=AliasChoices("poly", "prev_poly"))  # parsed once the image is read
    vertex_offset: list[Offset] = Field(
        default_factory=lambda: [0.0, 0.0], validation_alias=AliasChoices("vertex_offset", "vertexOffset"),
        min_length=2, max_length=2,
    )
    dimension: int | None = Field(None, ge=2, le=3)
    polygon_index: int = Field(0, ge=0, validation_alias=AliasChoices("polygon_index", "polygonIndex"))
    vertex_index: int = Field(0, ge=0, validation_alias=AliasChoices("vertex_index", "vertexIndex"))
    slice_index: int = Field(0, ge=0, validation_alias=AliasChoices("slice_index", "sliceIndex"))
    propagate_neighbor: int = Field(0, ge=0, le=MAX_POLYGON_POINTS)
    propagate_neighbor_3d: int = Field(0, ge=0, le=MAX_POLYGON_POINTS)

    def dims(self) -> int:
        if self.dimension is not None:
            return self.dimension
        return 3 if _depth(self.poly) >= 4 else 2


def _depth(value: Any) -> int:
    depth = 0
    while isinstance(value, list):
        depth += 1
        value = next((v for v in value if isinstance(v, list) and v), value[0] if value else None)
    return depth


def _validate(model: type[BaseModel], params: dict[str, Any]) -> Any:
    try:
        return model.model_validate(params)
    except ValidationError as exc:
        raise InvalidParams(format_validation_errors(exc, empty_loc="params")) from exc


# -- `poly` as clients send it ----------------------------------------------------------------------------


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


def _require_file(file: ImageUpload | None) -> ImageUpload:
    if file is None:
        raise BadRequest("no image uploaded: send the image as a multipart file part")
    return file


def _check_index(items: list[Any], index: int, what: str) -> None:
    if index >= len(items):
        raise InvalidParams(f"{what} {index} is out of range (there are {len(items)})")


# -- mask2polygon -----------------------------------------------------------------------------------------


def _mask_polygons(upload: ImageUpload, more_points: float, limits: DecodeLimits) -> list[Any]:
    if detect_format(upload.path, upload.filename) is ImageFormat.PNG:
        mask = decode_png(upload.path.read_bytes(), limits=limits).T
    else:
        mask = read_volume(upload.path, upload.filename, limits=limits).array
    if mask.ndim not in (2, 3) or mask.size == 0:
        raise InvalidImage(f"mask2polygon takes a non-empty 2D or 3D mask, got shape {list(mask.shape)}")
    try:
        return mask_to_polygons(mask, more_points)  # a 2D mask gives one slice's polygons
    except PolygonError as exc:
        raise InvalidImage(str(exc)) from exc


@router.post("/v1/mask2polygon", openapi_extra=POLYGON_DOC, summary="Binary mask → polygons per slice")
async def mask2polygon(request: Request, services: Annotated[Services, Depends(get_services)]) -> JSONResponse:
    async with read_body(request, services.settings.tmp_dir, max_bytes=services.settings.max_request_bytes) as body:
        params: Mask2PolygonParams = _validate(Mask2PolygonParams, body.params)
        upload = _require_file(body.first_file)
        polygons = await asyncio.to_thread(_mask_polygons, upload, params.more_points, services.settings.decode_limits)
    return JSONResponse(polygons)


# -- fixpolygon -------------------------------------------------------------------------------------------


def _fix_2d(upload: ImageUpload, params: FixPolygonParams, limits: DecodeLimits) -> tuple[list[Any], bytes, str]:
    rows, columns = png_shape(upload.path.read_bytes(), limits=limits)
    polygons = parse_polygons(params.poly)
    _check_index(polygons, params.polygon_index, "polygon_index")
    _check_index(polygons[params.polygon_index], params.vertex_index, "vertex_index")
    updated = move_vertex(polygons, params.polygon_index, params.vertex_index, params.vertex_offset,
                          params.propagate_neighbor)
    mask = polygons_to_slice(updated, (columns, rows))  # [x, y]; PNG rows are y
    return updated, encode_png(mask.T), "png"


def _fix_3d(upload: ImageUpload, params: FixPolygonParams, limits: DecodeLimits) -> tuple[list[Any], bytes, str]:
    volume = _usable_volume(upload, limits)
    if len(params.poly) > volume.spatial_shape[2]:
        raise InvalidParams(f"poly has {len(params.poly)} slices but the volume only {volume.spatial_shape[2]}")
    slices = parse_polygon_slices(params.poly)
    _check_index(slices, params.slice_index, "slice_index")
    _check_index(slices[params.slice_index], params.polygon_index, "polygon_index")
    _check_index(slices[params.slice_index][params.polygon_index], params.vertex_index, "vertex_index")
    updated = move_vertex_3d(slices, params.slice_index, params.polygon_index, params.vertex_index,
                             params.vertex_offset, params.propagate_neighbor, params.propagate_neighbor_3d)
    mask = polygons_to_mask(updated, volume.spatial_shape)  # type: ignore[arg-type]
    fmt = volume.format
    payload = encode_volume(mask, volume, fmt, compress=fmt is not ImageFormat.NIFTI)
    return updated, payload, fmt.value.lstrip(".")


def _usable_volume(upload: ImageUpload, limits: DecodeLimits) -> Volume:
    """A 3D volume the mask can be written on (`read_volume` already refused empty images and bad geometry)."""
    volume = read_volume(upload.path, upload.filename, limits=limits)
    if volume.array.ndim != 3:
        raise InvalidImage(f"3D fixpolygon needs a 3D volume, got shape {list(volume.spatial_shape)}")
    return volume


def _fix(upload: ImageUpload, params: FixPolygonParams, limits: DecodeLimits) -> tuple[list[Any], bytes, str]:
    fmt = detect_format(upload.path, upload.filename)
    try:
        if params.dims() == 2:
            if fmt is not ImageFormat.PNG:
                raise InvalidImage(f"2D fixpolygon takes a PNG image, got {fmt.value}")
            return _fix_2d(upload, params, limits)
        if not fmt.is_volume_format:
            raise InvalidImage(f"3D fixpolygon takes a NIfTI or NRRD volume, got {fmt.value}")
        return _fix_3d(upload, params, limits)
    except PolygonError as exc:  # too far outside the image, or too costly to rasterise
        raise InvalidParams(str(exc)) from exc


def _result_name(upload: ImageUpload, extension: str) -> str:
    stem = Path(client_basename(upload.filename) or "image").name.split(".")[0] or "image"
    return f"{stem}_fixed.{extension}"


@router.post("/v1/fixpolygon", openapi_extra=POLYGON_DOC, summary="Move a polygon vertex; get polygons and mask")
async def fixpolygon(request: Request, services: Annotated[Services, Depends(get_services)]) -> Response:
    async with read_body(request, services.settings.tmp_dir, max_bytes=services.settings.max_request_bytes) as body:
        params: FixPolygonParams = _validate(FixPolygonParams, body.params)
        upload = _require_file(body.first_file)
        updated, payload, extension = await asyncio.to_thread(_fix, upload, params, services.settings.decode_limits)
    return multipart_response({"poly": updated}, payload, _result_name(upload, extension))


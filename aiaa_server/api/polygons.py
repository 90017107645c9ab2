"""`POST /v1/mask2polygon` and `POST /v1/fixpolygon` (protocol 7.5, 7.6): thin shells over
`aiaa_server.imaging.polygons`, with PNG (2D) and NIfTI/NRRD (3D) in and out."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError

from aiaa_server.api.deps import get_services
from aiaa_server.api.forms import read_body
from aiaa_server.api.openapi import PARAMS_AND_IMAGE
from aiaa_server.api.responses import multipart_response
from aiaa_server.errors import BadRequest, InvalidImage, InvalidParams
from aiaa_server.imaging.formats import ImageFormat, client_basename, detect_format
from aiaa_server.imaging.io import encode_volume, read_volume
from aiaa_server.imaging.png import decode_png, encode_png, png_shape
from aiaa_server.imaging.polygons import (
    DEFAULT_MORE_POINTS,
    mask_to_polygons,
    move_vertex,
    move_vertex_3d,
    polygons_to_mask,
    polygons_to_slice,
    slice_to_polygons,
)
from aiaa_server.inference.service import ImageUpload
from aiaa_server.services import Services

router = APIRouter(tags=["polygons"])

POLYGON_DOC = PARAMS_AND_IMAGE


class Mask2PolygonParams(BaseModel):
    model_config = ConfigDict(extra="ignore")

    more_points: float = DEFAULT_MORE_POINTS


class FixPolygonParams(BaseModel):
    """Current keys, plus the 2019 client's camelCase ones (`prev_poly`, `polygonIndex`, …)."""

    model_config = ConfigDict(extra="ignore")

    poly: list[Any] = Field(validation_alias=AliasChoices("poly", "prev_poly"))
    vertex_offset: list[float] = Field(
        default_factory=lambda: [0.0, 0.0], validation_alias=AliasChoices("vertex_offset", "vertexOffset"),
        min_length=2, max_length=2,
    )
    dimension: int | None = Field(None, ge=2, le=3)
    polygon_index: int = Field(0, ge=0, validation_alias=AliasChoices("polygon_index", "polygonIndex"))
    vertex_index: int = Field(0, ge=0, validation_alias=AliasChoices("vertex_index", "vertexIndex"))
    slice_index: int = Field(0, ge=0, validation_alias=AliasChoices("slice_index", "sliceIndex"))
    propagate_neighbor: int = Field(0, ge=0)
    propagate_neighbor_3d: int = Field(0, ge=0)

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
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'params'}: {e['msg']}" for e in exc.errors())
        raise InvalidParams(problems) from exc


def _require_file(file: ImageUpload | None) -> ImageUpload:
    if file is None:
        raise BadRequest("no image uploaded: send the image as a multipart file part")
    return file


def _check_index(items: list[Any], index: int, what: str) -> None:
    if index >= len(items):
        raise InvalidParams(f"{what} {index} is out of range (there are {len(items)})")


# -- mask2polygon -----------------------------------------------------------------------------------------


def _mask_polygons(upload: ImageUpload, more_points: float) -> list[Any]:
    fmt = detect_format(upload.path, upload.filename)
    if fmt is ImageFormat.PNG:
        return [slice_to_polygons(decode_png(upload.path.read_bytes()).T, more_points)]
    return mask_to_polygons(read_volume(upload.path, upload.filename).array, more_points)


@router.post("/v1/mask2polygon", openapi_extra=POLYGON_DOC, summary="Binary mask → polygons per slice")
async def mask2polygon(request: Request, services: Annotated[Services, Depends(get_services)]) -> JSONResponse:
    async with read_body(request, services.settings.tmp_dir) as body:
        params: Mask2PolygonParams = _validate(Mask2PolygonParams, body.params)
        upload = _require_file(body.first_file)
        polygons = await asyncio.to_thread(_mask_polygons, upload, params.more_points)
    return JSONResponse(polygons)


# -- fixpolygon -------------------------------------------------------------------------------------------


def _fix_2d(upload: ImageUpload, params: FixPolygonParams) -> tuple[list[Any], bytes, str]:
    _check_index(params.poly, params.polygon_index, "polygon_index")
    _check_index(params.poly[params.polygon_index], params.vertex_index, "vertex_index")
    rows, columns = png_shape(upload.path.read_bytes())
    updated = move_vertex(params.poly, params.polygon_index, params.vertex_index, params.vertex_offset,
                          params.propagate_neighbor)
    mask = polygons_to_slice(updated, (columns, rows))  # [x, y]; PNG rows are y
    return updated, encode_png(mask.T), "png"


def _fix_3d(upload: ImageUpload, params: FixPolygonParams) -> tuple[list[Any], bytes, str]:
    volume = read_volume(upload.path, upload.filename)
    if volume.array.ndim != 3:
        raise InvalidImage(f"3D fixpolygon needs a 3D volume, got shape {list(volume.spatial_shape)}")
    slices = params.poly
    if len(slices) > volume.spatial_shape[2]:
        raise InvalidParams(f"poly has {len(slices)} slices but the volume only {volume.spatial_shape[2]}")
    _check_index(slices, params.slice_index, "slice_index")
    _check_index(slices[params.slice_index], params.polygon_index, "polygon_index")
    _check_index(slices[params.slice_index][params.polygon_index], params.vertex_index, "vertex_index")
    updated = move_vertex_3d(slices, params.slice_index, params.polygon_index, params.vertex_index,
                             params.vertex_offset, params.propagate_neighbor, params.propagate_neighbor_3d)
    mask = polygons_to_mask(updated, volume.spatial_shape)  # type: ignore[arg-type]
    fmt = volume.format
    payload = encode_volume(mask, volume, fmt, compress=fmt is not ImageFormat.NIFTI)
    return updated, payload, fmt.value.lstrip(".")


def _fix(upload: ImageUpload, params: FixPolygonParams) -> tuple[list[Any], bytes, str]:
    fmt = detect_format(upload.path, upload.filename)
    try:
        if params.dims() == 2:
            if fmt is not ImageFormat.PNG:
                raise InvalidImage(f"2D fixpolygon takes a PNG image, got {fmt.value}")
            return _fix_2d(upload, params)
        if not fmt.is_volume_format:
            raise InvalidImage(f"3D fixpolygon takes a NIfTI or NRRD volume, got {fmt.value}")
        return _fix_3d(upload, params)
    except (TypeError, IndexError, ValueError) as exc:  # badly nested poly lists
        raise InvalidParams(f"poly is not a list of polygons of [x, y] points: {exc}") from exc


def _result_name(upload: ImageUpload, extension: str) -> str:
    stem = Path(client_basename(upload.filename) or "image").name.split(".")[0] or "image"
    return f"{stem}_fixed.{extension}"


@router.post("/v1/fixpolygon", openapi_extra=POLYGON_DOC, summary="Move a polygon vertex; get polygons and mask")
async def fixpolygon(request: Request, services: Annotated[Services, Depends(get_services)]) -> Response:
    async with read_body(request, services.settings.tmp_dir) as body:
        params: FixPolygonParams = _validate(FixPolygonParams, body.params)
        upload = _require_file(body.first_file)
        updated, payload, extension = await asyncio.to_thread(_fix, upload, params)
    return multipart_response({"poly": updated}, payload, _result_name(upload, extension))


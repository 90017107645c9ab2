"""`POST /v1/mask2polygon` and `POST /v1/fixpolygon` (protocol 7.5, 7.6): thin shells over
`aiaa_server.services.polygons`, with PNG (2D) and NIfTI/NRRD (3D) in and out."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from aiaa_server.api.deps import PolygonsDep, SettingsDep
from aiaa_server.api.forms import read_body
from aiaa_server.api.openapi import errors, polygon_operation, ref, result_multipart
from aiaa_server.api.responses import multipart_response
from aiaa_server.api.schemas import FixPolygonResult, MaskPolygons
from aiaa_server.services.polygon_params import (
    FIXPOLYGON_EXAMPLE,
    MASK2POLYGON_EXAMPLE,
    FixPolygonParams,
    Mask2PolygonParams,
)

router = APIRouter(tags=["polygons"])

POLYGON_ERRORS = errors(400, 408, 413)
MASK2POLYGON_DOC = polygon_operation(
    Mask2PolygonParams, MASK2POLYGON_EXAMPLE, {"application/json": {"schema": ref(MaskPolygons)}},
    "the polygons of each z slice of the mask (a PNG or 2D mask is one slice)",
)
FIXPOLYGON_DOC = polygon_operation(
    FixPolygonParams, FIXPOLYGON_EXAMPLE,
    {"multipart/form-data": result_multipart(FixPolygonResult, "the mask of the moved polygons, in the input's "
                                             "format (PNG for 2D, NIfTI/NRRD for 3D) and on its grid")},
    "multipart/form-data: `params` ({\"poly\": ...}) and the mask of the polygons",
)


@router.post("/v1/mask2polygon", responses=POLYGON_ERRORS, openapi_extra=MASK2POLYGON_DOC,
             summary="Binary mask → polygons per slice")
async def mask2polygon(request: Request, settings: SettingsDep, polygons: PolygonsDep) -> JSONResponse:
    async with read_body(request, settings.tmp_dir, max_bytes=settings.max_request_bytes) as body:
        slices = await asyncio.to_thread(polygons.mask_to_polygons, body.params, body.first_file)
    return JSONResponse(slices)


@router.post("/v1/fixpolygon", response_class=Response, responses=POLYGON_ERRORS, openapi_extra=FIXPOLYGON_DOC,
             summary="Move a polygon vertex; get polygons and mask")
async def fixpolygon(request: Request, settings: SettingsDep, polygons: PolygonsDep) -> Response:
    async with read_body(request, settings.tmp_dir, max_bytes=settings.max_request_bytes) as body:
        fixed = await asyncio.to_thread(polygons.fix_polygon, body.params, body.first_file)
    return multipart_response({"poly": fixed.poly}, fixed.mask, fixed.filename)

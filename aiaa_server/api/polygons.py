"""`POST /v1/mask2polygon` and `POST /v1/fixpolygon` (protocol 7.5, 7.6): thin shells over
`aiaa_server.services.polygons`, with PNG (2D) and NIfTI/NRRD (3D) in and out."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from aiaa_server.api.deps import PolygonsDep, SettingsDep
from aiaa_server.api.forms import read_body
from aiaa_server.api.openapi import PARAMS_AND_IMAGE
from aiaa_server.api.responses import multipart_response

router = APIRouter(tags=["polygons"])

POLYGON_DOC = PARAMS_AND_IMAGE


@router.post("/v1/mask2polygon", openapi_extra=POLYGON_DOC, summary="Binary mask → polygons per slice")
async def mask2polygon(request: Request, settings: SettingsDep, polygons: PolygonsDep) -> JSONResponse:
    async with read_body(request, settings.tmp_dir, max_bytes=settings.max_request_bytes) as body:
        slices = await asyncio.to_thread(polygons.mask_to_polygons, body.params, body.first_file)
    return JSONResponse(slices)


@router.post("/v1/fixpolygon", openapi_extra=POLYGON_DOC, summary="Move a polygon vertex; get polygons and mask")
async def fixpolygon(request: Request, settings: SettingsDep, polygons: PolygonsDep) -> Response:
    async with read_body(request, settings.tmp_dir, max_bytes=settings.max_request_bytes) as body:
        fixed = await asyncio.to_thread(polygons.fix_polygon, body.params, body.first_file)
    return multipart_response({"poly": fixed.poly}, fixed.mask, fixed.filename)

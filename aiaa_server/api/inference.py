"""`POST /v1/segmentation`, `/v1/inference`: multipart in (params + image), multipart out (sec. 3–4, 7)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from aiaa_server.api.deps import ServicesDep
from aiaa_server.api.forms import read_body
from aiaa_server.api.openapi import PARAMS_AND_IMAGE
from aiaa_server.api.responses import check_output_mode, inference_response
from aiaa_server.services import Services
from aiaa_server.services.inference import Endpoint, InferenceRequest

router = APIRouter(tags=["inference"])

MULTIPART_DOC = {
    **PARAMS_AND_IMAGE,
    "responses": {"200": {"content": {"multipart/form-data": {}, "application/json": {}}}},
}


async def _run(
    endpoint: Endpoint, request: Request, services: Services, model: str | None, session_id: str | None,
    output: str | None,
) -> Response:
    mode = check_output_mode(output)
    async with read_body(request, services.settings.tmp_dir, max_bytes=services.settings.max_request_bytes) as body:
        result = await services.inference.run(
            InferenceRequest(
                endpoint=endpoint, model=model, params=body.params, upload=body.first_file, session_id=session_id
            )
        )
    return inference_response(result, mode)


ModelQuery = Annotated[str | None, Query(description="model name (see GET /v1/models)")]
SessionQuery = Annotated[str | None, Query(description="use the image stored in this session")]
OutputQuery = Annotated[str | None, Query(description="all (multipart, default) | image | json")]


@router.post("/v1/segmentation", openapi_extra=MULTIPART_DOC, summary="Automatic segmentation")
async def segmentation(
    request: Request, services: ServicesDep,
    model: ModelQuery = None, session_id: SessionQuery = None, output: OutputQuery = None,
) -> Response:
    return await _run(Endpoint.SEGMENTATION, request, services, model, session_id, output)


@router.post("/v1/inference", openapi_extra=MULTIPART_DOC, summary="Run any model (params passed through)")
async def inference(
    request: Request, services: ServicesDep,
    model: ModelQuery = None, session_id: SessionQuery = None, output: OutputQuery = None,
) -> Response:
    return await _run(Endpoint.INFERENCE, request, services, model, session_id, output)


@router.post("/v1/dextr3d", openapi_extra=MULTIPART_DOC, summary="DExtr3D annotation from >= 6 extreme points")
async def dextr3d(
    request: Request, services: ServicesDep,
    model: ModelQuery = None, session_id: SessionQuery = None, output: OutputQuery = None,
) -> Response:
    return await _run(Endpoint.DEXTR3D, request, services, model, session_id, output)


@router.post("/v1/deepgrow", openapi_extra=MULTIPART_DOC, summary="DeepGrow from foreground/background clicks")
async def deepgrow(
    request: Request, services: ServicesDep,
    model: ModelQuery = None, session_id: SessionQuery = None, output: OutputQuery = None,
) -> Response:
    return await _run(Endpoint.DEEPGROW, request, services, model, session_id, output)

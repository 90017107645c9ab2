"""`POST /v1/segmentation`, `/v1/inference`, `/v1/dextr3d`, `/v1/deepgrow`: multipart in (params + image),
multipart out (protocol sections 3–4, 7)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from aiaa_server.api import schemas
from aiaa_server.api.deps import ServicesDep
from aiaa_server.api.forms import read_body
from aiaa_server.api.openapi import errors, inference_operation
from aiaa_server.api.responses import check_output_mode, inference_response
from aiaa_server.services import Services
from aiaa_server.services.inference import Endpoint, InferenceRequest

router = APIRouter(tags=["inference"])

INFERENCE_ERRORS = errors(400, 404, 408, 413, 422, 440, 503)
SEGMENTATION_DOC = inference_operation(schemas.SegmentationParams, schemas.SEGMENTATION_EXAMPLE,
                                       schemas.DEMO_SEGMENTATION)
INFERENCE_DOC = inference_operation(schemas.InferenceParams, schemas.INFERENCE_EXAMPLE, schemas.DEMO_SEGMENTATION,
                                    classification=True)
DEXTR3D_DOC = inference_operation(schemas.Dextr3dParams, schemas.DEXTR3D_EXAMPLE, schemas.DEMO_DEXTR3D)
DEEPGROW_DOC = inference_operation(schemas.DeepgrowParams, schemas.DEEPGROW_EXAMPLE, schemas.DEMO_DEEPGROW)


async def _run(
    endpoint: Endpoint, request: Request, services: Services, model: str | None, session_id: str | None,
    output: str | None,
) -> Response:
    mode = check_output_mode(output)
    async with read_body(request, services.settings.tmp_dir, max_bytes=services.settings.max_request_bytes) as body:
        result = await services.inference.run(
            InferenceRequest(
                endpoint=endpoint, model=model, params=body.params, upload=body.first_file, session_id=session_id,
                report="fhir" if mode == "fhir" else None,
            )
        )
    return inference_response(result, mode)


# Documented in `inference_operation` (`model` required, `output` an enum), read leniently here.
ModelQuery = Annotated[str | None, Query(include_in_schema=False)]
SessionQuery = Annotated[str | None, Query(include_in_schema=False)]
OutputQuery = Annotated[str | None, Query(include_in_schema=False)]


@router.post("/v1/segmentation", summary="Automatic segmentation",
             responses=INFERENCE_ERRORS, openapi_extra=SEGMENTATION_DOC)
async def segmentation(
    request: Request, services: ServicesDep,
    model: ModelQuery = None, session_id: SessionQuery = None, output: OutputQuery = None,
) -> Response:
    return await _run(Endpoint.SEGMENTATION, request, services, model, session_id, output)


@router.post("/v1/inference", summary="Run any model (params passed through)",
             responses=INFERENCE_ERRORS, openapi_extra=INFERENCE_DOC)
async def inference(
    request: Request, services: ServicesDep,
    model: ModelQuery = None, session_id: SessionQuery = None, output: OutputQuery = None,
) -> Response:
    return await _run(Endpoint.INFERENCE, request, services, model, session_id, output)


@router.post("/v1/dextr3d", summary="DExtr3D annotation from >= 6 extreme points",
             responses=INFERENCE_ERRORS, openapi_extra=DEXTR3D_DOC)
async def dextr3d(
    request: Request, services: ServicesDep,
    model: ModelQuery = None, session_id: SessionQuery = None, output: OutputQuery = None,
) -> Response:
    return await _run(Endpoint.DEXTR3D, request, services, model, session_id, output)


@router.post("/v1/deepgrow", summary="DeepGrow from foreground/background clicks",
             responses=INFERENCE_ERRORS, openapi_extra=DEEPGROW_DOC)
async def deepgrow(
    request: Request, services: ServicesDep,
    model: ModelQuery = None, session_id: SessionQuery = None, output: OutputQuery = None,
) -> Response:
    return await _run(Endpoint.DEEPGROW, request, services, model, session_id, output)

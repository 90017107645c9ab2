"""MONAI Label's app API as its 0.8 clients (3D Slicer, OHIF v3, MITK) call it: `GET /info/`, `POST /infer/{model}`,
`POST /activelearning/{strategy}`, `GET /auth/`; `/scoring/` answers 501 (training: `api/training.py`).

The same models, pool, sessions, metrics and logs serve these routes and the AIAA ones.
"""

from __future__ import annotations

import enum
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse

from aiaa_server.api.deps import ServicesDep
from aiaa_server.api.forms import read_body
from aiaa_server.api.openapi import BINARY, errors, multipart_request
from aiaa_server.api.responses import inference_response
from aiaa_server.services.monai_label import MonaiInferRequest

router = APIRouter(tags=["MONAI Label"])

INFER_DOC = multipart_request({
    "params": {"type": "string", "description": "JSON object: foreground, background, label, params[<label>], roi, "
                                                "result_extension, result_dtype, result_compress, client_id…"},
    "file": {**BINARY, "description": "the image, instead of ?image= (a datastore id) or ?session_id="},
    "label": {**BINARY, "description": "accepted and not used (no scribbles model is served)"},
})
NOT_YET = "scoring is not available on this server: training jobs report their validation Dice (GET /train/)"


class InferOutput(str, enum.Enum):
    image = "image"
    json = "json"
    all = "all"
    dicom_seg = "dicom_seg"  # the result as a DICOM SEG of the image's source series
    dicom_sr = "dicom_sr"  # a classification as a DICOM SR (TID 1500) of the image's source series
    fhir = "fhir"  # a classification as a FHIR R4 Observation (application/fhir+json)


DICOM_OUTPUTS = (InferOutput.dicom_seg, InferOutput.dicom_sr)


@router.get("/info/", summary="App info: models (type, labels, dimension), strategies, datastore totals")
@router.get("/info", include_in_schema=False)
async def info(services: ServicesDep) -> dict[str, Any]:
    return await services.monai_label.info()


@router.post("/infer/{model}", summary="Run a model on a datastore image, an uploaded file or a session",
             openapi_extra=INFER_DOC, responses=errors(400, 404, 408, 413, 422, 440, 503))
async def infer(
    request: Request, services: ServicesDep, model: str,
    image: Annotated[str | None, Query(max_length=256, description="datastore id or SeriesInstanceUID")] = None,
    session_id: Annotated[str | None, Query(max_length=256)] = None,
    output: InferOutput = InferOutput.all,
) -> Response:
    async with read_body(request, services.settings.tmp_dir, max_bytes=services.settings.max_request_bytes) as body:
        upload = body.file_named("file") or next(
            (f for f, name in zip(body.files, body.part_names, strict=True) if name != "label"), None)
        params = {**body.params, "result_extension": ".dcm"} if output in DICOM_OUTPUTS else body.params
        result = await services.monai_label.infer(MonaiInferRequest(
            model=model, params=params, image=image or None, upload=upload, session_id=session_id or None,
            report="fhir" if output is InferOutput.fhir else None))
    return inference_response(result, "image" if output in DICOM_OUTPUTS else output.value)


@router.post("/activelearning/{strategy}", summary="Next image to annotate (locked to the asking client for a while)",
             responses=errors(400, 422))
async def next_sample(request: Request, services: ServicesDep, strategy: str) -> dict[str, Any]:
    async with read_body(request, services.settings.tmp_dir, max_bytes=services.settings.max_request_bytes) as body:
        params = {**body.fields, **body.params}
    return await services.monai_label.next_sample(strategy, params)


@router.get("/auth/", summary="Whether clients must log in (they need not: no user authentication is configured)")
@router.get("/auth", include_in_schema=False)
def auth() -> dict[str, bool]:
    return {"enabled": False}


@router.get("/scoring/", summary="Scoring status (not available yet)", responses=errors(501))
async def scoring_status() -> JSONResponse:
    return _not_implemented()


@router.post("/scoring/{method}", summary="Run a scoring method (not available yet)", responses=errors(501))
async def scoring_run(method: str) -> JSONResponse:
    return _not_implemented()


def _not_implemented() -> JSONResponse:
    return JSONResponse({"detail": NOT_YET, "code": "not_implemented"}, status_code=501)


__all__ = ["router"]

"""Training from saved labels, in MONAI Label's shape (`/train/`), and model versions (`/admin/model/{name}/versions`).

Starting and stopping jobs, promoting and rolling back versions need admin access (`--admin_token`,
`--admin_hosts`); reading the status does not.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from aiaa_server.api.deps import AdminDep, ServicesDep
from aiaa_server.api.forms import read_body
from aiaa_server.api.openapi import errors
from aiaa_server.errors import InvalidParams, format_validation_errors
from aiaa_server.services.training import TrainParams

router = APIRouter(tags=["training"])

TRAIN_ERRORS = errors(400, 401, 403, 404, 409, 422, 503)
ModelName = Annotated[str, Path(max_length=128)]


@router.get("/train/", summary="The running or last training job (404: none; ?check_if_running=true: 404 when idle)",
            responses=errors(404))
async def train_status(services: ServicesDep, check_if_running: bool = False, all: bool = False) -> Any:
    training = services.training
    if all:
        return [job.to_json() for job in training.jobs]
    job = training.current() if check_if_running else training.current() or training.last()
    if job is None:
        detail = "no training job is running" if check_if_running else "no training job has run yet"
        return JSONResponse({"detail": detail, "code": "not_found"}, status_code=404)
    return job.to_json()


@router.post("/train/{model}", summary="Queue a training job for one model (admin)", responses=TRAIN_ERRORS)
async def train_model(request: Request, services: ServicesDep, _admin: AdminDep, model: ModelName) -> dict[str, Any]:
    params = await _params(request, services)
    job = await services.training.submit(model, _train_params(params))
    return job.to_json()


@router.post("/train/", summary="Queue a training job for every trainable model (admin)", responses=TRAIN_ERRORS)
async def train_all(request: Request, services: ServicesDep, _admin: AdminDep) -> dict[str, Any]:
    params = await _params(request, services)
    result = {}
    for name in services.registry.names():
        if services.training.trainable(name):
            own = params.get(name)
            job = await services.training.submit(name, _train_params(own if isinstance(own, dict) else params))
            result[name] = {"result": job.to_json(), "detail": None}
    return result


@router.delete("/train/", summary="Stop the running training job and drop the waiting ones (admin)",
               responses=errors(401, 403, 404))
async def train_stop(services: ServicesDep, _admin: AdminDep) -> Any:
    job = await services.training.stop()
    if job is None:
        return JSONResponse({"detail": "no training job has run yet", "code": "not_found"}, status_code=404)
    return job.to_json()


@router.get("/admin/model/{model}/versions", summary="A model's trained versions and the one served (admin)",
            responses=errors(401, 403, 404))
def list_versions(services: ServicesDep, _admin: AdminDep, model: ModelName) -> dict[str, Any]:
    return services.training.versions_of(model)


@router.put("/admin/model/{model}/versions/{version}",
            summary="Serve a version (0: the original): promotion or rollback (admin)",
            responses=errors(401, 403, 404, 422))
async def serve_version(services: ServicesDep, _admin: AdminDep, model: ModelName,
                        version: Annotated[int, Path(ge=0, le=10**9)]) -> dict[str, Any]:
    return await asyncio.to_thread(services.training.promote, model, version)


async def _params(request: Request, services: ServicesDep) -> dict[str, Any]:
    async with read_body(request, services.settings.tmp_dir, max_bytes=services.settings.max_request_bytes) as body:
        return {**body.fields, **body.params}


def _train_params(params: dict[str, Any]) -> TrainParams:
    known = {key: params[key] for key in TrainParams.model_fields if params.get(key) is not None}
    try:
        return TrainParams.model_validate(known)
    except ValidationError as exc:
        raise InvalidParams(f"invalid training params: {format_validation_errors(exc)}") from None


__all__ = ["router"]

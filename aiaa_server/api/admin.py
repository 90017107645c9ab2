"""`/admin/model/{name}`: upload (PUT), read (GET) and delete (DELETE) models (protocol sec. 2 rows 11-13, 9).

Every route requires the admin policy (client address allow-list, optional bearer token). Upload bodies are
streamed through `api.multipart` straight into a staging folder in the workspace, never held in memory.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict

from aiaa_server.api.deps import ServicesDep, require_admin
from aiaa_server.api.multipart import (
    MultipartForm,
    MultipartLimits,
    UnexpectedField,
    read_multipart,
    refuse_declared_overflow,
)
from aiaa_server.api.openapi import BINARY, errors, multipart_request
from aiaa_server.errors import BadRequest, NotImplementedOnServer, PayloadTooLarge
from aiaa_server.mmar.loader import ModelInfo
from aiaa_server.mmar.store import check_model_name

UPLOAD_PARTS = ("config", "data")
MAX_JSON_BODY = 2**20
NGC_REFUSAL = "NGC download not supported: this server never downloads; upload the MMAR"


router = APIRouter(tags=["admin"], dependencies=[Depends(require_admin)], responses=errors(401, 403))


class AdminModelResponse(ModelInfo):
    """The loaded model as `GET /v1/models` shows it, plus where it is stored."""

    path: str
    replaced: bool


class DeleteResponse(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    deleted: bool = True
    now_serving: str | None = None


# ------------------------------------------------------------------------------------ body streaming


def _upload_too_large(limit: int, declared: int | None) -> PayloadTooLarge:
    if declared is None:
        return PayloadTooLarge(f"upload larger than {limit // 2**20} MiB (see --max_upload_mb)")
    return PayloadTooLarge(f"upload of {declared} bytes is larger than {limit // 2**20} MiB (see --max_upload_mb)")


def _upload_limits(max_upload_mb: int) -> MultipartLimits:
    """`config` and/or `data`, each once, each spooled to `<name>.part` in the staging folder."""
    return MultipartLimits(max_body_bytes=max_upload_mb * 2**20, too_large=_upload_too_large,
                           file_fields=UPLOAD_PARTS)


async def _read_upload(request: Request, staging: Path, limits: MultipartLimits) -> MultipartForm:
    try:
        return await read_multipart(request, staging, limits)
    except UnexpectedField as exc:
        if exc.field == "ngc":
            raise NotImplementedOnServer(NGC_REFUSAL) from None
        raise BadRequest(f"unexpected form field {exc.field!r}: send `config` (config_aiaa.json) and/or `data` "
                         "(model.ts or a zipped MMAR)", field=exc.field) from None


async def _refuse_json_body(request: Request) -> None:
    """Forms (d): a JSON body naming an NGC model. We never download, so it is always refused."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_JSON_BODY:
            break
    try:
        parsed = json.loads(body) if body.strip() else None
    except ValueError:
        parsed = None
    details = {"requested": parsed} if isinstance(parsed, dict) and len(body) < 4096 else {}
    raise NotImplementedOnServer(NGC_REFUSAL, **details)


# -------------------------------------------------------------------------------------------- routes


def _name(raw: str) -> str:
    return check_model_name(raw.removesuffix("/"))


UPLOAD_DOC = multipart_request({
    "config": {**BINARY, "description": "config_aiaa.json"},
    "data": {**BINARY, "description": "models/model.ts or model.pt2 (with config), or a .zip/.tar.gz MMAR or MONAI "
                       "bundle (alone)"},
})


@router.put("/admin/model/{name:path}", response_model=AdminModelResponse, openapi_extra=UPLOAD_DOC,
            responses=errors(400, 408, 413, 422, 501), summary="Upload or replace a model")
async def put_model(
    name: str, request: Request, services: ServicesDep
) -> AdminModelResponse:
    name = _name(name)
    limits = _upload_limits(services.settings.max_upload_mb)
    refuse_declared_overflow(request, limits.max_body_bytes, limits.too_large)  # whatever the content type
    content_type = request.headers.get("content-type", "").lower()
    if content_type.startswith("application/json"):
        await _refuse_json_body(request)
    if not content_type.startswith("multipart/form-data"):
        raise BadRequest(f"unsupported content type {content_type or '(none)'!r}: send multipart/form-data with "
                         "`config` and/or `data` parts")
    admin = services.model_admin
    staging = await asyncio.to_thread(admin.store.new_staging)
    try:
        parts = {part.name: part.path for part in (await _read_upload(request, staging, limits)).files}
        result = await asyncio.to_thread(admin.install, name, staging, parts.get("config"), parts.get("data"))
    finally:
        await asyncio.to_thread(admin.store.discard_staging, staging)
    model = result.model
    fields = {**model.info.model_dump(), "path": str(model.model_file or model.path), "replaced": result.replaced}
    return AdminModelResponse(**fields)


@router.get("/admin/model/{name:path}", responses=errors(400, 404, 422),
            summary="The model's stored config_aiaa.json (+ server keys)")
def get_model(name: str, services: ServicesDep) -> dict[str, Any]:
    return services.model_admin.stored_config(_name(name))


@router.delete("/admin/model/{name:path}", response_model=DeleteResponse, responses=errors(400, 404, 409),
               summary="Delete an uploaded model")
async def delete_model(name: str, services: ServicesDep) -> DeleteResponse:
    result = await asyncio.to_thread(services.model_admin.delete, _name(name))
    return DeleteResponse(name=result.name, now_serving=str(result.now_serving) if result.now_serving else None)

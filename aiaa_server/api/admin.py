"""`/admin/model/{name}`: upload (PUT), read (GET) and delete (DELETE) models (protocol sec. 2 rows 11-13, 9).

Every route requires the admin policy (client address allow-list, optional bearer token). Upload bodies are
streamed through python-multipart straight into a staging folder in the workspace, never held in memory.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect

from aiaa_server.api.deps import get_services, require_admin
from aiaa_server.api.openapi import BINARY, multipart_request
from aiaa_server.errors import BadRequest, NotImplementedOnServer, PayloadTooLarge
from aiaa_server.mmar.loader import ModelInfo
from aiaa_server.mmar.store import check_model_name
from aiaa_server.services import Services

UPLOAD_PARTS = ("config", "data")
MAX_JSON_BODY = 2**20
WRITE_BATCH = 2**20  # body bytes handed to the parser thread at once
NGC_REFUSAL = "NGC download not supported: this server never downloads; upload the MMAR"


router = APIRouter(tags=["admin"], dependencies=[Depends(require_admin)])


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


@dataclass
class _Parts:
    """Receives python-multipart callbacks and writes each accepted part to its own file."""

    folder: Path
    files: dict[str, Path] = field(default_factory=dict)
    finished: bool = False
    _headers: dict[str, bytes] = field(default_factory=dict)
    _field: bytes = b""
    _value: bytes = b""
    _out: IO[bytes] | None = None

    def callbacks(self) -> dict[str, Any]:
        return {
            "on_part_begin": self._begin,
            "on_header_field": lambda data, start, end: self._add("_field", data[start:end]),
            "on_header_value": lambda data, start, end: self._add("_value", data[start:end]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._data,
            "on_part_end": self._part_end,
            "on_end": self._end,
        }

    def _add(self, attr: str, data: bytes) -> None:
        setattr(self, attr, getattr(self, attr) + data)

    def _begin(self) -> None:
        self._headers = {}

    def _header_end(self) -> None:
        self._headers[self._field.decode("latin-1").lower()] = self._value
        self._field, self._value = b"", b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get("content-disposition", b""))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        if name == "ngc":
            raise NotImplementedOnServer(NGC_REFUSAL)
        if name not in UPLOAD_PARTS:
            raise BadRequest(f"unexpected form field {name!r}: send `config` (config_aiaa.json) and/or `data` "
                             "(model.ts or a zipped MMAR)", field=name)
        if name in self.files:
            raise BadRequest(f"form field {name!r} sent twice", field=name)
        self.files[name] = self.folder / f"{name}.part"
        self._out = open(self.files[name], "wb")  # noqa: SIM115 - stays open across parser callbacks

    def _data(self, data: bytes, start: int, end: int) -> None:
        assert self._out is not None
        self._out.write(data[start:end])

    def _part_end(self) -> None:
        self.close()

    def _end(self) -> None:
        self.finished = True

    def close(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None


def _declared_length(request: Request) -> int | None:
    value = request.headers.get("content-length")
    try:
        return int(value) if value is not None else None
    except ValueError:
        raise BadRequest(f"invalid Content-Length {value!r}") from None


async def _stream_parts(request: Request, folder: Path, limit: int) -> _Parts:
    _, options = parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get(b"boundary")
    if not boundary:
        raise BadRequest("multipart body without a boundary")
    parts = _Parts(folder)
    parser = MultipartParser(boundary, parts.callbacks())  # type: ignore[arg-type]
    received = 0
    batch = bytearray()
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                raise PayloadTooLarge(f"upload larger than {limit // 2**20} MiB (see --max_upload_mb)")
            batch += chunk
            if len(batch) >= WRITE_BATCH:
                await asyncio.to_thread(parser.write, bytes(batch))
                batch.clear()
        if batch:
            await asyncio.to_thread(parser.write, bytes(batch))
        parser.finalize()
    except MultipartParseError as exc:
        raise BadRequest(f"could not parse the multipart body: {exc}") from exc
    except ClientDisconnect as exc:
        raise BadRequest("the client disconnected during the upload") from exc
    finally:
        parts.close()
    if not parts.finished:
        raise BadRequest("the multipart body ended before its closing boundary")
    return parts


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
    "data": {**BINARY, "description": "models/model.ts (with config), or a .zip/.tar.gz MMAR (alone)"},
})


@router.put("/admin/model/{name:path}", response_model=AdminModelResponse, openapi_extra=UPLOAD_DOC,
            summary="Upload or replace a model")
async def put_model(
    name: str, request: Request, services: Annotated[Services, Depends(get_services)]
) -> AdminModelResponse:
    name = _name(name)
    limit = services.settings.max_upload_mb * 2**20
    declared = _declared_length(request)
    if declared is not None and declared > limit:
        raise PayloadTooLarge(f"upload of {declared} bytes is larger than {limit // 2**20} MiB "
                              "(see --max_upload_mb)")
    content_type = request.headers.get("content-type", "").lower()
    if content_type.startswith("application/json"):
        await _refuse_json_body(request)
    if not content_type.startswith("multipart/form-data"):
        raise BadRequest(f"unsupported content type {content_type or '(none)'!r}: send multipart/form-data with "
                         "`config` and/or `data` parts")
    admin = services.model_admin
    staging = await asyncio.to_thread(admin.store.new_staging)
    try:
        parts = await _stream_parts(request, staging, limit)
        result = await asyncio.to_thread(
            admin.install, name, staging, parts.files.get("config"), parts.files.get("data")
        )
    finally:
        await asyncio.to_thread(admin.store.discard_staging, staging)
    model = result.model
    fields = {**model.info.model_dump(), "path": str(model.model_file or model.path), "replaced": result.replaced}
    return AdminModelResponse(**fields)


@router.get("/admin/model/{name:path}", summary="The model's stored config_aiaa.json (+ server keys)")
def get_model(name: str, services: Annotated[Services, Depends(get_services)]) -> dict[str, Any]:
    return services.model_admin.stored_config(_name(name))


@router.delete("/admin/model/{name:path}", response_model=DeleteResponse, summary="Delete an uploaded model")
async def delete_model(name: str, services: Annotated[Services, Depends(get_services)]) -> DeleteResponse:
    result = await asyncio.to_thread(services.model_admin.delete, _name(name))
    return DeleteResponse(name=result.name, now_serving=str(result.now_serving) if result.now_serving else None)

"""`PUT /session/`, `GET /session/{id}`, `DELETE /session/{id}` (protocol section 5)."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Query, Request

from aiaa_server.api.deps import ServicesDep
from aiaa_server.api.forms import read_body
from aiaa_server.api.openapi import BINARY, errors, multipart_request
from aiaa_server.sessions import SessionCreated, SessionInfo

router = APIRouter(tags=["sessions"])

SESSION_UPLOAD_DOC = multipart_request(
    {
        "image": {**BINARY, "description": "NIfTI/NRRD volume, or several DICOM files (image0, image1, …), "
                                           "or one zip of DICOM files (any part names)"},
        "params": {"type": "string", "description": "optional; ignored"},
    },
    **{"application/json": {"schema": {"type": "object", "description": '{"dicom": {...}}: PACS pull (501)'}}},
)


@router.put("/session/", response_model=SessionCreated, openapi_extra=SESSION_UPLOAD_DOC,
            responses=errors(400, 408, 413, 422, 501, 503),
            summary="Upload an image once and get a session id for later calls")
@router.put("/session", response_model=SessionCreated, include_in_schema=False)
async def create_session(
    request: Request,
    services: ServicesDep,
    expiry: Annotated[int | None, Query(description="seconds; 0 or absent: server default (also the maximum)")] = None,
    save_as: Annotated[str | None, Query(description="format a DICOM series is stored in (.nii.gz default)")] = None,
    uncompress: Annotated[str | None, Query(description="accepted for compatibility; ignored")] = None,
) -> SessionCreated:
    async with read_body(request, services.settings.tmp_dir, max_bytes=services.settings.max_request_bytes) as body:
        files = body.files
        if not files and "dicom" in body.params:
            files = await services.datastore.pacs_series(body.params["dicom"])
        info = await asyncio.to_thread(services.sessions.create, files, expiry, save_as)
    return SessionCreated(session_id=info.session_id, session_info=info)


@router.get("/session/{session_id}", response_model=SessionInfo, responses=errors(404, 422, 503),
            summary="Session details (404 once expired)")
def get_session(
    session_id: str,
    services: ServicesDep,
    update_ts: Annotated[bool, Query(description="also refresh last_access_ts (keeps the session alive)")] = False,
) -> SessionInfo:
    return services.sessions.get(session_id, touch=update_ts)


@router.delete("/session/{session_id}", response_model=SessionInfo, responses=errors(404, 503),
               summary="Close a session and delete its files")
def delete_session(session_id: str, services: ServicesDep) -> SessionInfo:
    return services.sessions.delete(session_id)

"""Router access to the shared services, and the admin access check (`/admin/*`, `/logs`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends
from starlette.requests import ClientDisconnect, Request

from aiaa_server.api.body_timeout import BodyTimeout
from aiaa_server.errors import Forbidden, Unauthorized
from aiaa_server.services import Services

# A refused upload is read (and dropped) up to this size before the answer, so that clients that send the
# whole body before reading see the 401/403 instead of a reset connection; larger ones are cut off.
REFUSED_BODY_DRAIN = 64 * 2**20


def get_services(request: Request) -> Services:
    return request.app.state.services


async def require_admin(request: Request, services: Annotated[Services, Depends(get_services)]) -> None:
    host = request.client.host if request.client is not None else None
    try:
        services.admin_policy.authorize(host, request.headers.get("authorization"))
    except (Unauthorized, Forbidden) as refusal:
        if not await drain_body(request, REFUSED_BODY_DRAIN):
            refusal.headers = {**getattr(refusal, "headers", {}), "Connection": "close"}  # type: ignore[misc]
        raise


AdminAccess = Annotated[None, Depends(require_admin)]


async def drain_body(request: Request, limit: int) -> bool:
    """Read and drop the request body; False when it is larger than `limit`, stalls or the client left."""
    if not _has_body(request):
        return True
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return False
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                return False
    except (ClientDisconnect, BodyTimeout):
        return False
    return True


def _has_body(request: Request) -> bool:
    headers = request.headers
    return headers.get("content-length", "0") not in ("", "0") or "transfer-encoding" in headers

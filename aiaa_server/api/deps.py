"""Router access to the shared services as typed dependencies, and the admin access check (`/admin/*`, `/logs`).

Routers declare what they need by type: `services: ServicesDep`, `settings: SettingsDep`, `_admin: AdminDep`.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends
from starlette.requests import ClientDisconnect, Request

from aiaa_server.api.body_timeout import BodyTimeout
from aiaa_server.errors import Forbidden, Unauthorized
from aiaa_server.services import PolygonService, Services, SystemService
from aiaa_server.settings import Settings

# A refused upload is read (and dropped) up to this size before the answer, so that clients that send the
# whole body before reading see the 401/403 instead of a reset connection; larger ones are cut off.
REFUSED_BODY_DRAIN = 64 * 2**20


# The dependencies below are `async def` although they never wait: FastAPI runs a plain `def` dependency in its
# thread pool, a hop per request that a busy CPU turned into most of /v1/models' latency under load.


async def get_services(request: Request) -> Services:
    """The app's one `Services` container (built in `create_app`)."""
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]


async def get_settings(services: ServicesDep) -> Settings:
    """The settings the services were built from."""
    return services.settings


async def get_polygons(services: ServicesDep) -> PolygonService:
    """mask2polygon and fixpolygon."""
    return services.polygons


async def get_system(services: ServicesDep) -> SystemService:
    """Health, readiness, logs and the model overview."""
    return services.system


SettingsDep = Annotated[Settings, Depends(get_settings)]
PolygonsDep = Annotated[PolygonService, Depends(get_polygons)]
SystemDep = Annotated[SystemService, Depends(get_system)]


async def require_admin(request: Request, services: ServicesDep) -> None:
    """Admin access (`--admin_token`, `--admin_hosts`), else 401/403; a refused body is drained first."""
    host = request.client.host if request.client is not None else None
    try:
        services.admin_policy.authorize(host, request.headers.get("authorization"))
    except (Unauthorized, Forbidden) as refusal:
        if not await drain_body(request, REFUSED_BODY_DRAIN):
            refusal.headers = {**getattr(refusal, "headers", {}), "Connection": "close"}  # type: ignore[misc]
        raise


AdminDep = Annotated[None, Depends(require_admin)]
AdminAccess = AdminDep  # the earlier name


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

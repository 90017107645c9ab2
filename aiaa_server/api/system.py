"""Landing page, Swagger UI on `/docs` and `/docs/` (200, no redirect), `/logs` (admin only), health checks."""

from __future__ import annotations

import html
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse

from aiaa_server import __version__
from aiaa_server.api.deps import AdminAccess, get_services
from aiaa_server.engines.factory import engine_readiness
from aiaa_server.services import Services

router = APIRouter(tags=["system"])


def _prefix(request: Request) -> str:
    return request.scope.get("root_path", "").rstrip("/")


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def landing(request: Request, services: Annotated[Services, Depends(get_services)]) -> HTMLResponse:
    prefix = _prefix(request)
    rows = "".join(
        f"<tr><td>{html.escape(i.name)}</td><td>{html.escape(i.type)}</td>"
        f"<td>{html.escape(', '.join(i.labels))}</td><td>{html.escape(i.description)}</td></tr>"
        for i in services.registry.infos()
    )
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>aiaa-server</title></head><body>
<h1>aiaa-server {__version__}</h1>
<p>An AI-Assisted Annotation server speaking the NVIDIA Clara AIAA protocol. Point 3D Slicer's NVIDIA AIAA
extension, OHIF or the AIAA clients at this address.</p>
<p><a href="{prefix}/docs">API documentation</a> · <a href="{prefix}/v1/models">models (JSON)</a> ·
<a href="{prefix}/logs?lines=100">logs</a></p>
<table border="1" cellpadding="4"><tr><th>model</th><th>type</th><th>labels</th><th>description</th></tr>{rows}</table>
</body></html>"""
    return HTMLResponse(page)


@router.get("/docs", include_in_schema=False)
@router.get("/docs/", include_in_schema=False)
def docs(request: Request) -> HTMLResponse:
    return get_swagger_ui_html(openapi_url=f"{_prefix(request)}/openapi.json", title="aiaa-server API")


@router.get("/logs", response_class=PlainTextResponse,
            summary="Last lines of the server log (admin access: --admin_token, --admin_hosts)")
@router.get("/logs/", response_class=PlainTextResponse, include_in_schema=False)
def logs(
    _admin: AdminAccess,
    services: Annotated[Services, Depends(get_services)],
    lines: Annotated[int, Query(ge=0, le=100000, description="how many lines")] = 100,
) -> PlainTextResponse:
    return PlainTextResponse("\n".join(services.log_tail.tail(lines)) + "\n")


@router.get("/health", summary="Liveness: the process answers")
def health() -> dict[str, str]:
    return {"status": "ok", "version": __version__}


@router.get("/ready", summary="Readiness: models loaded (and, for Triton models, loaded in Triton)")
def ready(services: Annotated[Services, Depends(get_services)]) -> JSONResponse:
    """200 when at least one model can serve, else 503 (so load balancers and k8s route around the pod)."""
    models = {name: _model_readiness(services, name) for name in services.registry.names()}
    is_ready = any(status == "ready" for status in models.values())
    body = {"ready": is_ready, "models": models, "failed": dict(services.registry.load_errors)}
    return JSONResponse(body, status_code=200 if is_ready else 503)


def _model_readiness(services: Services, name: str) -> str:
    model = services.registry.find(name)
    if model is None:
        return "removed"
    return engine_readiness(model.pipeline.engine) if model.pipeline.engine is not None else "ready"

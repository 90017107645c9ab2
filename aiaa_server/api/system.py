"""Landing page, Swagger UI on `/docs` and `/docs/` (200, no redirect; its assets from the package), `/logs` (admin only), health checks."""

from __future__ import annotations

import html
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from pydantic import BaseModel, Field

from aiaa_server import __version__
from aiaa_server.api.deps import AdminDep, SystemDep
from aiaa_server.api.openapi import errors
from aiaa_server.api.static_assets import STATIC_PATH
from aiaa_server.mmar.loader import ModelInfo

router = APIRouter(tags=["system"])


def _prefix(request: Request) -> str:
    return request.scope.get("root_path", "").rstrip("/")


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def landing(request: Request, system: SystemDep) -> HTMLResponse:
    return HTMLResponse(_landing_page(_prefix(request), system.models()))


def _landing_page(prefix: str, models: list[ModelInfo]) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(i.name)}</td><td>{html.escape(i.type)}</td>"
        f"<td>{html.escape(', '.join(i.labels))}</td><td>{html.escape(i.description)}</td></tr>"
        for i in models
    )
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>aiaa-server</title></head><body>
<h1>aiaa-server {__version__}</h1>
<p>An AI-Assisted Annotation server speaking the NVIDIA Clara AIAA protocol. Point 3D Slicer's NVIDIA AIAA
extension, OHIF or the AIAA clients at this address.</p>
<p><a href="{prefix}/docs">API documentation</a> · <a href="{prefix}/v1/models">models (JSON)</a> ·
<a href="{prefix}/logs?lines=100">logs</a></p>
<table border="1" cellpadding="4"><tr><th>model</th><th>type</th><th>labels</th><th>description</th></tr>{rows}</table>
</body></html>"""


@router.get("/docs", include_in_schema=False)
@router.get("/docs/", include_in_schema=False)
def docs(request: Request) -> HTMLResponse:
    """Swagger UI from the assets in the package (no CDN: it works offline), its URLs under the proxy prefix."""
    prefix = _prefix(request)
    assets = f"{prefix}{STATIC_PATH}/swagger"
    return get_swagger_ui_html(
        openapi_url=f"{prefix}/openapi.json", title="aiaa-server API",
        swagger_js_url=f"{assets}/swagger-ui-bundle.js", swagger_css_url=f"{assets}/swagger-ui.css",
        swagger_favicon_url=f"{assets}/favicon-32x32.png",
        swagger_ui_parameters={"validatorUrl": None},  # else a badge image from validator.swagger.io
    )


@router.get("/logs", response_class=PlainTextResponse, responses=errors(401, 403, 422),
            summary="Last lines of the server log (admin access: --admin_token, --admin_hosts)")
@router.get("/logs/", response_class=PlainTextResponse, include_in_schema=False)
def logs(
    _admin: AdminDep,
    system: SystemDep,
    lines: Annotated[int, Query(ge=0, le=100000, description="how many lines")] = 100,
) -> PlainTextResponse:
    return PlainTextResponse(system.log_text(lines))


@router.get("/health", summary="Liveness: the process answers")
async def health(system: SystemDep) -> dict[str, str]:
    return system.health()


class ReadinessReport(BaseModel):
    """`/ready`'s answer (200 when ready, else 503)."""

    ready: bool = Field(description="at least one model can serve")
    models: dict[str, str] = Field(description="each model's state: ready, removed, or the engine's own word")
    failed: dict[str, str] = Field(description="models that failed to load, with the reason")


@router.get("/ready", summary="Readiness: models loaded (and, for Triton models, loaded in Triton)",
            responses={200: {"model": ReadinessReport},
                       503: {"model": ReadinessReport, "description": "no model can serve (yet)"}})
def ready(system: SystemDep) -> JSONResponse:
    """200 when at least one model can serve, else 503 (so load balancers and k8s route around the pod)."""
    readiness = system.readiness()
    return JSONResponse(readiness.to_json(), status_code=200 if readiness.ready else 503)

"""Wiring: settings → services → FastAPI app with routers, error handlers, CORS and body timeouts."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from aiaa_server import __version__
from aiaa_server.api import (
    admin,
    datastore,
    inference,
    metrics,
    models,
    monai_label,
    polygons,
    sessions,
    system,
    training,
    ui,
)
from aiaa_server.api.body_timeout import BodyTimeoutMiddleware
from aiaa_server.api.cors import CorsPolicy
from aiaa_server.api.metrics import MetricsMiddleware
from aiaa_server.api.openapi import complete_schema
from aiaa_server.api.static_assets import STATIC_PATH, static_files
from aiaa_server.errors import AIAAError, ServiceUnavailable, format_validation_errors
from aiaa_server.logs import setup_logging
from aiaa_server.security import warn_if_exposed
from aiaa_server.services import Services
from aiaa_server.settings import Settings
from aiaa_server.workspace import sweep_request_dirs, sweep_request_dirs_periodically

log = logging.getLogger(__name__)



def create_app(settings: Settings) -> FastAPI:
    settings.prepare_workspace()
    log_tail = setup_logging(settings.log_level, settings.log_file, settings.log_lines)
    services = Services.build(settings, log_tail)
    warn_if_exposed(services.admin_policy, settings.host)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(services.model_admin.store.recover)  # before the scan sees the folder
        await asyncio.to_thread(services.load_models)
        await asyncio.to_thread(sweep_request_dirs, settings.tmp_dir)  # left by a crash: no request is ours yet
        sweepers = [
            asyncio.create_task(services.sessions.sweep_periodically(settings.session_sweep_seconds)),
            asyncio.create_task(sweep_request_dirs_periodically(settings.tmp_dir)),
            asyncio.create_task(services.training.run_forever()),
            asyncio.create_task(services.uncertainty.run_forever()),
        ]
        try:
            yield
        finally:
            for sweeper in sweepers:
                sweeper.cancel()
            services.close()

    app = FastAPI(
        title="aiaa-server",
        version=__version__,
        description="Open AI-Assisted Annotation server speaking the NVIDIA Clara AIAA protocol.",
        redirect_slashes=False,
        docs_url=None,
        redoc_url=None,
        root_path=settings.root_path,
        lifespan=lifespan,
    )
    app.state.services = services
    app.add_middleware(CorsPolicy, origins=settings.cors_origins)
    app.add_middleware(BodyTimeoutMiddleware, timeout_s=settings.body_timeout)
    app.add_middleware(MetricsMiddleware, metrics=services.http_metrics)  # outermost: times CORS preflights too
    _add_error_handlers(app)
    for module in (system, models, inference, training, admin, sessions, polygons, metrics, monai_label, datastore,
                   ui):
        app.include_router(module.router)
    app.mount(STATIC_PATH, static_files(), name="static")
    _complete_schema(app)
    return app


def _complete_schema(app: FastAPI) -> None:
    """The OpenAPI schema, finished by `api.openapi.complete_schema` (params models, real error answers)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = complete_schema(build())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(AIAAError)
    async def aiaa_error(request: Request, exc: AIAAError) -> JSONResponse:
        if exc.status >= 500:
            log.error("%s %s failed: %s", request.method, request.url.path, exc.message)
        else:
            log.info("%s %s refused (%d): %s", request.method, request.url.path, exc.status, exc.message)
        headers = {}
        headers.update(getattr(exc, "headers", {}))
        if isinstance(exc, ServiceUnavailable) and exc.retry_after is not None:
            headers["Retry-After"] = str(exc.retry_after)
        return JSONResponse(exc.to_json(), status_code=exc.status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"detail": exc.detail, "code": "http_error"}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = format_validation_errors(exc)
        return JSONResponse({"detail": f"invalid request: {problems}", "code": "invalid_request"}, status_code=422)

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("%s %s: unexpected error", request.method, request.url.path)
        return JSONResponse(
            {"detail": f"internal server error ({type(exc).__name__}); see GET /logs", "code": "internal_error"},
            status_code=500,
        )

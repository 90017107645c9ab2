"""Wiring: settings → services → FastAPI app with routers, error handlers, CORS and body timeouts."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from aiaa_server import __version__
from aiaa_server.api import admin, inference, metrics, models, polygons, sessions, system
from aiaa_server.api.body_timeout import BodyTimeoutMiddleware
from aiaa_server.api.metrics import MetricsMiddleware
from aiaa_server.errors import AIAAError, ServiceUnavailable
from aiaa_server.logs import setup_logging
from aiaa_server.security import warn_if_exposed
from aiaa_server.services import Services
from aiaa_server.settings import Settings
from aiaa_server.workspace import sweep_request_dirs, sweep_request_dirs_periodically

log = logging.getLogger(__name__)

READ_METHODS = ("GET", "HEAD", "POST")  # what a page from any origin (`*`) may do
WRITE_METHODS = (*READ_METHODS, "PUT", "DELETE")  # listed origins may also create and close sessions
NO_CORS_PATHS = ("/admin", "/logs")  # admin access: never callable from a web page
EXPOSED_HEADERS = ("Content-Disposition", "Content-Length", "Retry-After")


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
    for module in (system, models, inference, admin, sessions, polygons, metrics):
        app.include_router(module.router)
    return app


class CorsPolicy:
    """CORS by origin and path. `/admin` and `/logs` never answer cross-origin; `*` may only GET, HEAD and
    POST, without credentials; listed origins may also PUT and DELETE (sessions). Other preflights get a 403
    without any CORS header, and other cross-origin requests are served without one (the browser hides them)."""

    def __init__(self, app: ASGIApp, origins: Sequence[str]) -> None:
        self.app = app
        self.listed = frozenset(origin for origin in origins if origin != "*")
        self.listed_cors = _cors(app, sorted(self.listed), WRITE_METHODS) if self.listed else None
        self.public_cors = _cors(app, ["*"], READ_METHODS) if "*" in origins else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = Headers(scope=scope) if scope["type"] == "http" else None
        origin = headers.get("origin") if headers is not None else None
        if headers is None or origin is None:
            await self.app(scope, receive, send)
            return
        requested = headers.get("access-control-request-method")
        preflight = scope["method"] == "OPTIONS" and requested is not None
        handler = self._handler(scope, origin, requested if preflight else scope["method"])
        if handler is not None:
            await handler(scope, receive, send)
        elif preflight:
            await PlainTextResponse("CORS request refused", status_code=403)(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    def _handler(self, scope: Scope, origin: str, method: str | None) -> ASGIApp | None:
        path = _route_path(scope)
        if any(path == prefix or path.startswith(prefix + "/") for prefix in NO_CORS_PATHS):
            return None
        if origin in self.listed:
            return self.listed_cors
        return self.public_cors if method in READ_METHODS else None


def _cors(app: ASGIApp, origins: list[str], methods: Sequence[str]) -> CORSMiddleware:
    return CORSMiddleware(app, allow_origins=origins, allow_methods=methods, allow_headers=["*"],
                          allow_credentials=False, expose_headers=EXPOSED_HEADERS)


def _route_path(scope: Scope) -> str:
    """The path the router matches: without the `--root_path` prefix when the request carries it."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and (path == root or path.startswith(root + "/")):
        return path[len(root):] or "/"
    return path


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
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        return JSONResponse({"detail": f"invalid request: {problems}", "code": "invalid_request"}, status_code=422)

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("%s %s: unexpected error", request.method, request.url.path)
        return JSONResponse(
            {"detail": f"internal server error ({type(exc).__name__}); see GET /logs", "code": "internal_error"},
            status_code=500,
        )

"""`GET /metrics` (Prometheus text format) and the ASGI middleware that times every HTTP request."""

from __future__ import annotations

import time

from fastapi import APIRouter
from fastapi.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from aiaa_server.api.deps import ServicesDep
from aiaa_server.metrics import CONTENT_TYPE, HttpMetrics

router = APIRouter(tags=["system"])

UNMATCHED = "(unmatched)"  # one label for every 404 path, so scanners cannot blow up the series count


@router.get("/metrics", summary="Prometheus metrics: queue depth, in-flight jobs, latencies, requests by status",
            response_class=Response,
            responses={200: {"content": {CONTENT_TYPE.split(";")[0]: {"schema": {"type": "string"}}},
                             "description": "Prometheus text exposition format"}})
def metrics(services: ServicesDep) -> Response:
    return Response(services.metrics.render(), media_type=CONTENT_TYPE)


def _route_template(scope: Scope) -> str:
    route = scope.get("route")  # set by FastAPI's router on the shared scope once a route matched
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED


class MetricsMiddleware:
    """Records method, route template, status and latency; a plain ASGI middleware (no body buffering)."""

    def __init__(self, app: ASGIApp, metrics: HttpMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # if the app dies before answering, the server answers 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.record(scope["method"], _route_template(scope), status, time.perf_counter() - started)

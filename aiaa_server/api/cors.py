"""CORS by origin and path: a web page may read and run models, never administer the server."""

from __future__ import annotations

from collections.abc import Sequence

from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

READ_METHODS = ("GET", "HEAD", "POST")  # what a page from any origin (`*`) may do
WRITE_METHODS = (*READ_METHODS, "PUT", "DELETE")  # listed origins may also create and close sessions
NO_CORS_PATHS = ("/admin", "/logs")  # admin access: never callable from a web page
EXPOSED_HEADERS = ("Content-Disposition", "Content-Length", "Retry-After")


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
            await JSONResponse({"detail": f"cross-origin {requested} requests from {origin!r} are not allowed here "
                                "(see --cors_origins)", "code": "cors_refused"}, status_code=403)(scope, receive, send)
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

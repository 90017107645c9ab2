"""The static assets shipped in the package (`api/static/`, see its VENDORED.md), served under `/static`.

Swagger UI for `/docs` and NiiVue plus the annotator's own page for `/ui`: nothing is fetched from a CDN, so the
documentation and the web annotator work on a machine without internet access.
"""

from __future__ import annotations

from pathlib import Path

from starlette.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parent / "static"
STATIC_PATH = "/static"


def static_files() -> StaticFiles:
    """The ASGI app serving `STATIC_DIR` (GET and HEAD; 404 and 405 go through the app's JSON error handler)."""
    return StaticFiles(directory=STATIC_DIR, check_dir=True)

"""The web annotator: `/ui/` answers its page (`api/static/ui/`), `/ui` sends the browser there.

The page, its script and NiiVue are static files in the package (no CDN); every URL in them is relative to
`<prefix>/ui/`, so it works behind a proxy prefix (`--root_path`) and over HTTPS. What it calls is the public
API (sessions, `/v1/*`, the datastore): this router holds no logic.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, RedirectResponse

from aiaa_server.api.static_assets import STATIC_DIR

router = APIRouter(tags=["web annotator"])
PAGE = STATIC_DIR / "ui" / "index.html"


@router.get("/ui", include_in_schema=False)
def ui_redirect() -> RedirectResponse:
    # Relative: the browser resolves it against the URL it used, whatever prefix a proxy added or stripped.
    return RedirectResponse("ui/", status_code=307)


@router.get("/ui/", response_class=HTMLResponse, include_in_schema=False)
def ui_page() -> HTMLResponse:
    return HTMLResponse(PAGE.read_text(encoding="utf-8"), headers={"Cache-Control": "no-cache"})

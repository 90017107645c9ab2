"""`/docs` without internet access: Swagger UI's assets come from the package, under the proxy prefix, through
real servers; the static route refuses what it does not hold with JSON; the wheel carries the assets."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import httpx
import pytest

from aiaa_server.api.static_assets import STATIC_DIR
from tests.support.server import LiveServer, start_server

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = None

REPO = Path(__file__).resolve().parents[2]
LINKED = re.compile(r"""(?:src|href)="([^"]+)"|url:\s*'([^']+)'""")


def linked_urls(page: str) -> list[str]:
    return [a or b for a, b in LINKED.findall(page)]


@pytest.mark.parametrize("path", ["/docs", "/docs/"])
def test_docs_link_only_this_server(server: LiveServer, path: str) -> None:
    with server.client() as client:
        page = client.get(path)
        assert page.status_code == 200
        assert not re.search(r"https?://", page.text), "the docs page names an external URL"
        urls = linked_urls(page.text)
        assert {u.rsplit("/", 1)[-1] for u in urls} >= {
            "swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png", "openapi.json"}
        for url in urls:
            assert url.startswith("/"), url
            answer = client.get(url)
            assert answer.status_code == 200, url


def test_assets_come_back_as_shipped(server: LiveServer) -> None:
    with server.client() as client:
        js = client.get("/static/swagger/swagger-ui-bundle.js")
        css = client.get("/static/swagger/swagger-ui.css")
    assert js.content == (STATIC_DIR / "swagger" / "swagger-ui-bundle.js").read_bytes()
    assert js.headers["content-type"].split(";")[0] in {"text/javascript", "application/javascript"}
    assert css.headers["content-type"].startswith("text/css")


@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", "/static/nothing.js", 404),
    ("GET", "/static/../pyproject.toml", 404),
    ("GET", "/static/%2e%2e/%2e%2e/pyproject.toml", 404),
    ("GET", "/static/swagger/..%2f..%2fstatic_assets.py", 404),
    ("POST", "/static/swagger/swagger-ui.css", 405),
    ("DELETE", "/static/swagger/swagger-ui.css", 405),
])
def test_static_refuses_with_json(server: LiveServer, method: str, path: str, status: int) -> None:
    with server.client() as client:
        answer = client.request(method, path)
    assert answer.status_code == status
    assert answer.headers["content-type"].startswith("application/json")
    assert "detail" in answer.json()


def test_docs_under_a_proxy_prefix(tmp_path: Path, test_models_dir: Path) -> None:
    with start_server(tmp_path / "ws", ["--models", str(test_models_dir), "--no-bundled_models",
                                        "--root_path", "/aiaa"], prefix="/aiaa") as live:
        origin = f"http://127.0.0.1:{live.port}"
        with httpx.Client(timeout=30) as client:
            page = client.get(live.url("/docs"))
            urls = linked_urls(page.text)
            assert urls and all(u.startswith("/aiaa/") for u in urls), urls
            assert all(client.get(origin + u).status_code == 200 for u in urls)


@pytest.mark.skipif(tomllib is None, reason="tomllib needs Python 3.11")
def test_the_wheel_carries_every_static_file() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["aiaa_server.api"]
    package = STATIC_DIR.parent
    shipped = {p for pattern in patterns for p in package.glob(pattern) if p.is_file()}
    present = {p for p in STATIC_DIR.rglob("*") if p.is_file()}
    assert present and present == shipped

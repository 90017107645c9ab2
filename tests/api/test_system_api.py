"""Landing page, docs, logs, health, CORS and the reverse-proxy prefix, through real servers."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from aiaa_server import __version__
from tests.support.server import LiveServer, start_server


@pytest.mark.parametrize("path", ["/docs", "/docs/"])
def test_docs_answer_200_without_redirect(server: LiveServer, path: str) -> None:
    with server.client(follow_redirects=False) as client:
        response = client.get(path)
    assert response.status_code == 200  # the AWS health check and the Python client never follow redirects
    assert "swagger" in response.text.lower()
    assert "/openapi.json" in response.text


def test_openapi_lists_protocol_endpoints(server: LiveServer) -> None:
    with server.client() as client:
        spec = client.get("/openapi.json").json()
    for path in ("/v1/models", "/v1/segmentation", "/v1/inference", "/logs"):
        assert path in spec["paths"]


def test_landing_page_lists_models(server: LiveServer) -> None:
    with server.client() as client:
        response = client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "test_threshold" in response.text


@pytest.mark.parametrize("path", ["/logs", "/logs/"])
def test_logs_return_last_lines(server: LiveServer, path: str) -> None:
    # This server's admin policy is open (no token, every host); with a token /logs needs it (test_access_api).
    with server.client() as client:
        client.get("/v1/models", params={"model": "log-marker-model"})  # a 404 that gets logged
        response = client.get(path, params={"lines": 5})
        everything = client.get(path, params={"lines": 1000}).text
    assert response.status_code == 200
    lines = response.text.strip().splitlines()
    assert 0 < len(lines) <= 5
    assert "log-marker-model" in everything


def test_logs_reject_bad_lines_param(server: LiveServer) -> None:
    with server.client() as client:
        response = client.get("/logs", params={"lines": "many"})
    assert response.status_code == 422
    assert "lines" in response.json()["detail"]


def test_cors_headers_for_browser_clients(server: LiveServer) -> None:
    with server.client() as client:
        preflight = client.options(
            "/v1/segmentation",
            headers={"Origin": "http://viewer.example", "Access-Control-Request-Method": "POST"},
        )
        simple = client.get("/v1/models", headers={"Origin": "http://viewer.example"})
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "*"
    assert simple.headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in {**preflight.headers, **simple.headers}


@pytest.mark.parametrize("method, path", [("PUT", "/session/"), ("DELETE", "/session/x"),
                                          ("PATCH", "/v1/models"), ("GET", "/admin/model/x")])
def test_default_cors_refuses_writes_and_admin(server: LiveServer, method: str, path: str) -> None:
    with server.client() as client:
        preflight = client.options(path, headers={"Origin": "http://page.example",
                                                  "Access-Control-Request-Method": method})
    assert preflight.status_code == 403
    assert "access-control-allow-origin" not in preflight.headers


def test_no_compression_even_when_asked(server: LiveServer) -> None:
    with server.client() as client:
        response = client.get("/v1/models", headers={"accept-encoding": "gzip"})
    assert "content-encoding" not in response.headers


def test_health_and_ready(server: LiveServer) -> None:
    with server.client() as client:
        health = client.get("/health").json()
        ready = client.get("/ready").json()
    assert health == {"status": "ok", "version": __version__}
    assert ready["ready"] is True
    assert ready["models"]["test_threshold"] == "ready"


def test_root_path_prefix_behind_a_proxy(tmp_path: Path, test_models_dir: Path) -> None:
    live = start_server(tmp_path / "ws", ["--models", str(test_models_dir), "--no-bundled_models",
                                          "--root_path", "/aiaa"], prefix="/aiaa")
    try:
        with httpx.Client(timeout=30) as client:
            prefixed = client.get(live.url("/v1/models"))
            docs = client.get(live.url("/docs/"))
        assert prefixed.status_code == 200
        assert {m["name"] for m in prefixed.json()} >= {"test_threshold"}
        assert docs.status_code == 200
        assert "/aiaa/openapi.json" in docs.text
    finally:
        live.stop()


def test_ready_is_503_without_models(tmp_path: Path) -> None:
    empty = tmp_path / "no_models"
    empty.mkdir()
    live = start_server(tmp_path / "ws", ["--models", str(empty), "--no-bundled_models"], wait_ready=False)
    try:
        with httpx.Client(timeout=30) as client:
            health = client.get(live.url("/health"))
            ready = client.get(live.url("/ready"))
        assert health.status_code == 200
        assert ready.status_code == 503
        assert ready.json()["ready"] is False
    finally:
        live.stop()

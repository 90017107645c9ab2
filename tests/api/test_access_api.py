"""Access control through real servers: CORS per origin and path, `/logs` behind the admin policy, session ids
(random, validated, masked in logs), X-Forwarded-For only from trusted proxies, refused uploads drained."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.server import LiveServer, start_server

TOKEN = "access-test-token-93c1"
VIEWER = "https://viewer.example"  # listed with --cors_origins
STRANGER = "https://evil.example"  # any other web page
NO_MODELS = ["--no-bundled_models"]


@pytest.fixture(scope="module")
def empty_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("no-models")


@pytest.fixture(scope="module")
def locked(tmp_path_factory: pytest.TempPathFactory, empty_models: Path) -> Iterator[LiveServer]:
    """Admin token set; `*` plus one listed origin for CORS."""
    live = start_server(
        tmp_path_factory.mktemp("access") / "workspace",
        ["--models", str(empty_models), *NO_MODELS, "--cors_origins", f'["*", "{VIEWER}"]'],
        env={"AIAA_ADMIN_TOKEN": TOKEN}, wait_ready=False,
    )
    yield live
    live.stop()


def preflight(client: httpx.Client, path: str, origin: str, method: str) -> httpx.Response:
    return client.options(path, headers={"Origin": origin, "Access-Control-Request-Method": method,
                                         "Access-Control-Request-Headers": "content-type"})


def create_session(client: httpx.Client, nifti: Path) -> str:
    response = client.put("/session/", files={"image": ("cube.nii.gz", nifti.read_bytes())})
    assert response.status_code == 200, response.text
    return response.json()["session_id"]


# ------------------------------------------------------------------------------------------------ CORS


def test_any_origin_may_read_and_post_without_credentials(locked: LiveServer) -> None:
    with locked.client() as client:
        post = preflight(client, "/v1/segmentation", STRANGER, "POST")
        simple = client.get("/v1/models", headers={"Origin": STRANGER})
    assert post.status_code == 200
    assert post.headers["access-control-allow-origin"] == "*"
    assert set(post.headers["access-control-allow-methods"].replace(" ", "").split(",")) == {"GET", "HEAD", "POST"}
    assert simple.headers["access-control-allow-origin"] == "*"
    for response in (post, simple):
        assert "access-control-allow-credentials" not in response.headers


@pytest.mark.parametrize("method", ["PUT", "DELETE"])
def test_session_writes_only_from_listed_origins(locked: LiveServer, method: str) -> None:
    path = "/session/" if method == "PUT" else f"/session/{'0' * 32}"
    with locked.client() as client:
        stranger = preflight(client, path, STRANGER, method)
        viewer = preflight(client, path, VIEWER, method)
    assert stranger.status_code == 403
    assert not any(name.startswith("access-control-") for name in stranger.headers)
    assert viewer.status_code == 200
    assert viewer.headers["access-control-allow-origin"] == VIEWER
    assert method in viewer.headers["access-control-allow-methods"]
    assert "access-control-allow-credentials" not in viewer.headers


def test_stranger_write_gets_no_cors_header(locked: LiveServer, cube_nifti: tuple) -> None:
    with locked.client() as client:
        response = client.put("/session/", headers={"Origin": STRANGER},
                              files={"image": ("cube.nii.gz", cube_nifti[0].read_bytes())})
        listed = client.delete(f"/session/{response.json()['session_id']}", headers={"Origin": VIEWER})
    assert response.status_code == 200  # not a browser: served, but a page could not read the answer
    assert "access-control-allow-origin" not in response.headers
    assert listed.status_code == 200 and listed.headers["access-control-allow-origin"] == VIEWER


@pytest.mark.parametrize("path", ["/admin/model/x", "/admin/model/x/", "/logs", "/logs/"])
@pytest.mark.parametrize("origin", [STRANGER, VIEWER])
def test_admin_paths_never_answer_cross_origin(locked: LiveServer, path: str, origin: str) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with locked.client() as client:
        preflights = [preflight(client, path, origin, method) for method in ("GET", "PUT", "DELETE")]
        simple = client.get(path, headers={"Origin": origin, **auth})
    for response in preflights:
        assert response.status_code == 403
        assert not any(name.startswith("access-control-") for name in response.headers)
    assert simple.status_code in (200, 404)  # the token works; only browsers are kept out
    assert not any(name.startswith("access-control-") for name in simple.headers)


# ------------------------------------------------------------------------------------ /logs and session ids


@pytest.mark.parametrize("path", ["/logs", "/logs/"])
def test_logs_need_the_admin_token(locked: LiveServer, path: str) -> None:
    with locked.client() as client:
        anonymous = client.get(path)
        wrong = client.get(path, headers={"Authorization": "Bearer nope"})
        authed = client.get(path, params={"lines": 5}, headers={"Authorization": f"Bearer {TOKEN}"})
    assert anonymous.status_code == 401 and anonymous.json()["code"] == "unauthorized"
    assert wrong.status_code == 401
    assert authed.status_code == 200 and 0 < len(authed.text.strip().splitlines()) <= 5


def test_session_ids_are_masked_in_every_log(locked: LiveServer, cube_nifti: tuple) -> None:
    with locked.client() as client:
        session_id = create_session(client, cube_nifti[0])
        assert client.get(f"/session/{session_id}").status_code == 200
        assert client.delete(f"/session/{session_id}").status_code == 200
        assert client.get(f"/session/{session_id}").status_code == 404  # logged by the error handler too
        logs = client.get("/logs", params={"lines": 100000}, headers={"Authorization": f"Bearer {TOKEN}"}).text
    assert re.fullmatch(r"[0-9a-f]{32}", session_id)
    short = session_id[:8] + "…"
    assert f"DELETE /session/{short}" in logs  # uvicorn's access log line
    assert f"session {short} created" in logs
    log_file = (locked.workspace / "logs" / "aiaa-server.log").read_text(encoding="utf-8")
    for text in (logs, log_file, locked.output()):
        assert session_id not in text
        assert short in text


@pytest.mark.parametrize("raw", ["%2e%2e", "..%2F..%2Fetc", str(uuid.uuid1()), "A" * 32, "0" * 33])
def test_malformed_session_ids_are_404(locked: LiveServer, raw: str) -> None:
    with locked.client() as client:
        assert client.get(f"/session/{raw}").status_code == 404
        assert client.delete(f"/session/{raw}").status_code == 404
    assert (locked.workspace / "sessions").is_dir()


# ------------------------------------------------------------------------------------------ X-Forwarded-For


def test_forwarded_for_is_ignored_unless_the_proxy_is_trusted(tmp_path: Path, empty_models: Path) -> None:
    base = ["--models", str(empty_models), *NO_MODELS, "--admin_hosts", "10.9.9.9"]
    spoofed = {"X-Forwarded-For": "10.9.9.9"}
    direct = start_server(tmp_path / "direct", base, wait_ready=False)
    try:
        with direct.client() as client:
            assert client.get("/admin/model/x", headers=spoofed).status_code == 403
            assert client.get("/logs", headers=spoofed).status_code == 403
    finally:
        direct.stop()
    proxied = start_server(tmp_path / "proxied", [*base, "--forwarded_allow_ips", "127.0.0.1"], wait_ready=False)
    try:
        with proxied.client() as client:
            assert client.get("/admin/model/x", headers=spoofed).status_code == 404  # allowed in; no such model
            assert client.get("/logs", headers=spoofed).status_code == 200
            assert client.get("/admin/model/x").status_code == 403  # the proxy itself is not an admin host
    finally:
        proxied.stop()


# ------------------------------------------------------------------------------- refused uploads are drained


def test_refused_upload_gets_its_401(locked: LiveServer) -> None:
    body = bytes(10 * 2**20)
    with httpx.Client(base_url=locked.base_url, timeout=60) as client:
        for _ in range(2):  # the same connection stays usable
            response = client.put("/admin/model/x", files={"data": ("model.ts", body)},
                                  headers={"Authorization": "Bearer wrong"})
            assert response.status_code == 401, response.text
            assert response.json()["code"] == "unauthorized"
        assert client.get("/health").status_code == 200

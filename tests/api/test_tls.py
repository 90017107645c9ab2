"""HTTPS served by aiaa-server itself (--ssl_certfile/--ssl_keyfile) with a self-signed certificate made here."""

from __future__ import annotations

import shutil
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from aiaa_server.settings import settings_from_cli
from tests.sessions.test_store import upload_of
from tests.support.server import LiveServer, start_server

REPO = Path(__file__).resolve().parents[2]
HEALTHCHECK = REPO / "deploy" / "healthcheck.py"

assert shutil.which("openssl") is not None, "the openssl command is needed: run .ci/deploy-deps.sh"


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1/localhost and its key (PEM), valid for two days."""
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return cert, key


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory, test_models_dir: Path,
               certificate: tuple[Path, Path]) -> Iterator[LiveServer]:
    cert, key = certificate
    live = start_server(
        tmp_path_factory.mktemp("tls-server") / "workspace",
        ["--models", str(test_models_dir), "--no-bundled_models", "--ssl_certfile", str(cert),
         "--ssl_keyfile", str(key)],
        scheme="https",
    )
    yield live
    live.stop()


def trusting(cert: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cert))


def test_models_over_https_with_a_verified_certificate(tls_server: LiveServer,
                                                       certificate: tuple[Path, Path]) -> None:
    with tls_server.client(verify=trusting(certificate[0])) as client:
        response = client.get("/v1/models")
    assert response.status_code == 200
    assert "test_threshold" in {model["name"] for model in response.json()}


def test_segmentation_and_session_over_https(tls_server: LiveServer, certificate: tuple[Path, Path],
                                             tmp_path: Path) -> None:
    upload = upload_of(tmp_path)
    with tls_server.client(verify=trusting(certificate[0])) as client:
        with open(upload.path, "rb") as handle:
            direct = client.post("/v1/segmentation", params={"model": "test_threshold"},
                                 data={"params": "{}"}, files={"datapoint": ("cube.nii.gz", handle)})
        assert direct.status_code == 200, direct.text
        assert direct.headers["content-type"].startswith("multipart/form-data")
        with open(upload_of(tmp_path).path, "rb") as handle:
            created = client.put("/session/", params={"expiry": 0}, files={"image": ("cube.nii.gz", handle)})
        session_id = created.json()["session_id"]
        by_session = client.post("/v1/segmentation", params={"model": "test_threshold", "session_id": session_id},
                                 data={"params": "{}"})
        assert by_session.status_code == 200
        assert by_session.content.count(b"\r\n--") == direct.content.count(b"\r\n--")


def test_unverified_context_like_the_clara_python_client(tls_server: LiveServer) -> None:
    """The Clara Python client (also inside the Slicer plugin) connects with an unverified context."""
    with tls_server.client(verify=ssl._create_unverified_context()) as client:
        assert client.get("/health").json()["status"] == "ok"


def test_default_verification_refuses_the_self_signed_certificate(tls_server: LiveServer) -> None:
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(tls_server.url("/health"), timeout=10)


def test_plain_http_to_the_tls_port_fails(tls_server: LiveServer) -> None:
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{tls_server.port}/health", timeout=10)
    assert tls_server.process.poll() is None  # and the server keeps serving
    with tls_server.client(verify=False) as client:
        assert client.get("/health").status_code == 200


def test_container_healthcheck_script_speaks_https(tls_server: LiveServer, certificate: tuple[Path, Path]) -> None:
    env = {"AIAA_PORT": str(tls_server.port), "AIAA_SSL_CERTFILE": str(certificate[0]), "PATH": "/usr/bin:/bin"}
    ok = subprocess.run([sys.executable, str(HEALTHCHECK)], env=env, capture_output=True, text=True, timeout=30,
                        check=False)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    plain = {**env, "AIAA_SSL_CERTFILE": ""}
    wrong = subprocess.run([sys.executable, str(HEALTHCHECK)], env=plain, capture_output=True, text=True,
                           timeout=30, check=False)
    assert wrong.returncode == 1


def test_certificate_and_key_go_together(certificate: tuple[Path, Path]) -> None:
    assert settings_from_cli(["--ssl_certfile", str(certificate[0]), "--ssl_keyfile", str(certificate[1])]) \
        .ssl_keyfile == certificate[1]
    for half in (["--ssl_certfile", str(certificate[0])], ["--ssl_keyfile", str(certificate[1])]):
        with pytest.raises(ValueError, match="go together"):
            settings_from_cli(half)
    cli = subprocess.run([sys.executable, "-m", "aiaa_server", "--ssl_certfile", str(certificate[0])],
                         capture_output=True, text=True, timeout=60, check=False)
    assert cli.returncode == 2 and "go together" in cli.stderr

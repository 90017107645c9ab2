"""Server hygiene through real servers: stale upload folders swept, stalled bodies timed out (408), file names
escaped in replies, and SIGTERM ending the process even while a request runs."""

from __future__ import annotations

import os
import re
import signal
import socket
import threading
import time
from email.parser import BytesParser
from email.policy import HTTP
from pathlib import Path
from urllib.parse import unquote

import httpx
import nibabel as nib
import pytest
from aiaa_client.multipart import FilePart, MultipartBody, parse_multipart, split_result

from aiaa_server.api.responses import content_disposition, multipart_body
from aiaa_server.workspace import STALE_REQUEST_S, sweep_request_dirs
from tests.support.mmars import SlowNet, segmentation_config, write_mmar
from tests.support.server import LiveServer, start_server

EVIL_NAME = 'a"b\r\nX-Evil: 1.nii.gz'


@pytest.fixture(scope="module")
def empty_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("no-models")


def age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def read_until_closed(sock: socket.socket) -> tuple[bytes, bool]:
    """Everything the server sends, and whether it closed the connection (False: the read timed out)."""
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except TimeoutError:
        return received, False
    return received, True


# -------------------------------------------------------------------------------------- tmp/req-* sweep


def test_sweep_removes_only_stale_request_folders(tmp_path: Path) -> None:
    now = time.time()
    stale = tmp_path / "req-stale"
    (stale / "nested").mkdir(parents=True)
    (stale / "nested" / "part00000").write_bytes(b"x")
    busy = tmp_path / "req-busy"  # an old folder whose upload file is still being written
    busy.mkdir()
    (busy / "part00000").write_bytes(b"x")
    other = tmp_path / "not-a-request"
    other.mkdir()
    for path in (stale / "nested" / "part00000", stale / "nested", stale, busy, other):
        age(path, STALE_REQUEST_S + 60)
    fresh = tmp_path / "req-fresh"
    fresh.mkdir()
    removed = sweep_request_dirs(tmp_path, now=now)
    assert removed == [stale]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not-a-request", "req-busy", "req-fresh"]
    assert sweep_request_dirs(tmp_path / "missing") == []


def test_stale_request_folders_are_swept_at_start(tmp_path: Path, empty_models: Path) -> None:
    tmp_dir = tmp_path / "workspace" / "tmp"
    crashed = tmp_dir / "req-crashed1"
    crashed.mkdir(parents=True)
    (crashed / "part00000").write_bytes(bytes(1000))
    age(crashed / "part00000", STALE_REQUEST_S + 60)
    age(crashed, STALE_REQUEST_S + 60)
    replica = tmp_dir / "req-replica1"  # another replica's upload in progress in a shared workspace
    replica.mkdir()
    (replica / "part00000").write_bytes(bytes(10))
    live = start_server(tmp_path / "workspace", ["--models", str(empty_models), "--no-bundled_models"],
                        wait_ready=False)
    try:
        assert sorted(p.name for p in tmp_dir.iterdir()) == ["req-replica1"]
        assert "removed 1 stale request folder(s)" in live.output()
    finally:
        live.stop()


# ----------------------------------------------------------------------------------------- body timeout


@pytest.fixture(scope="module")
def impatient(tmp_path_factory: pytest.TempPathFactory, empty_models: Path) -> LiveServer:
    live = start_server(tmp_path_factory.mktemp("impatient") / "workspace",
                        ["--models", str(empty_models), "--no-bundled_models", "--body_timeout", "1"],
                        wait_ready=False)
    yield live  # type: ignore[misc]
    live.stop()


@pytest.mark.parametrize("path", ["/session/", "/admin/model/slow"])
def test_stalled_body_gets_408_and_the_server_keeps_serving(impatient: LiveServer, path: str) -> None:
    head = (f"PUT {path} HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=B\r\n"
            "Content-Length: 100000\r\n\r\n")
    first = b'--B\r\nContent-Disposition: form-data; name="data"; filename="a.nii.gz"\r\n\r\n' + bytes(1000)
    with socket.create_connection(("127.0.0.1", impatient.port), timeout=60) as stalled:
        stalled.sendall(head.encode() + first)  # ... and nothing more
        with impatient.client() as client:
            assert client.get("/health").status_code == 200
        response, closed = read_until_closed(stalled)
    assert response.startswith(b"HTTP/1.1 408 "), response[:200]
    assert b"body_timeout" in response
    assert closed
    assert list((impatient.workspace / "tmp").glob("req-*")) == []
    with impatient.client() as client:
        assert client.get("/health").status_code == 200


def test_complete_body_is_not_timed_out(impatient: LiveServer, cube_nifti: tuple) -> None:
    with impatient.client() as client:
        created = client.put("/session/", files={"image": ("cube.nii.gz", cube_nifti[0].read_bytes())})
        assert created.status_code == 200, created.text
        # After the body, only http.disconnect is left to receive: waiting for it is not a stall.
        assert client.get(f"/session/{created.json()['session_id']}").status_code == 200


# ------------------------------------------------------------------------------------ file names in replies


@pytest.mark.parametrize("name", [EVIL_NAME, "back\\slash;x=\"y\".nii.gz", "Milz ü 東京.nii.gz", "plain.nii.gz"])
def test_multipart_reply_file_names_are_escaped(name: str) -> None:
    body = multipart_body({"label": 1}, b"IMAGE", name, "bnd")
    head, _, _ = body.partition(b"IMAGE")
    assert not any(line.lower().startswith(b"x-evil") for line in head.split(b"\r\n"))  # no header of its own
    head.decode("ascii")  # headers stay ASCII whatever the name
    parts = parse_multipart("multipart/form-data; boundary=bnd", body)
    result = split_result(parts)
    assert len(parts) == 2 and result.params == {"label": 1} and result.image == b"IMAGE"
    clean = name.replace("\r", "").replace("\n", "")
    if clean.isascii():
        assert result.filename == clean
    else:  # the plain parameter carries an ASCII stand-in; filename* the exact name
        assert result.filename == re.sub(r"[^\x00-\x7f]", "_", clean)
        extended = re.search(r"filename\*=UTF-8''(\S+)", head.decode("ascii"))
        assert extended is not None and unquote(extended.group(1)) == clean


def test_attachment_header_round_trips() -> None:
    value = content_disposition("attachment", EVIL_NAME)
    assert "\r" not in value and "\n" not in value
    message = BytesParser(policy=HTTP).parsebytes(f"Content-Disposition: {value}\r\n\r\n".encode("ascii"))
    assert message.get_filename() == 'a"bX-Evil: 1.nii.gz'
    assert list(message.keys()) == ["Content-Disposition"]


def test_evil_upload_name_through_a_real_server(server: LiveServer, cube_nifti: tuple) -> None:
    path = cube_nifti[0]
    form = MultipartBody(fields=[("params", "{}")], files=[FilePart("datapoint", EVIL_NAME, path=path)])
    with server.client() as client:
        reply = client.post("/v1/segmentation", params={"model": "test_threshold"}, content=form.to_bytes(),
                            headers={"content-type": form.content_type})
        image_only = client.post("/v1/segmentation", params={"model": "test_threshold", "output": "image"},
                                 content=form.to_bytes(), headers={"content-type": form.content_type})
    assert reply.status_code == 200, reply.text
    assert b"\r\nX-Evil" not in reply.content
    result = split_result(parse_multipart(reply.headers["content-type"], reply.content))
    assert result.filename is not None and result.filename.endswith(".nii.gz")
    assert not set('"\r\n') & set(result.filename)
    assert result.image is not None
    out = path.with_name("result.nii.gz")
    out.write_bytes(result.image)
    assert nib.load(str(out)).shape == nib.load(str(path)).shape
    assert image_only.status_code == 200
    assert "x-evil" not in image_only.headers
    disposition = image_only.headers["content-disposition"]
    assert disposition.startswith("attachment; filename=") and disposition.count('"') == 2


# ---------------------------------------------------------------------------------------------- SIGTERM


def _in_flight(client: httpx.Client) -> float:
    text = client.get("/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("aiaa_inference_in_flight{"))


def test_sigterm_ends_the_server_while_a_request_runs(tmp_path: Path, cube_nifti: tuple) -> None:
    models = tmp_path / "models"
    write_mmar(models / "test_runaway", segmentation_config(scanning_window=True, roi=[48, 48, 48]),
               SlowNet(repeats=1_000_000))  # hours of work: only a forced end stops it
    live = start_server(tmp_path / "workspace", ["--models", str(models), "--no-bundled_models",
                                                 "--shutdown_timeout", "2"])
    outcome: dict[str, object] = {}

    def segment() -> None:
        try:
            response = httpx.post(live.url("/v1/segmentation"), params={"model": "test_runaway"},
                                  files={"datapoint": ("cube.nii.gz", cube_nifti[0].read_bytes())},
                                  data={"params": "{}"}, timeout=300)
            outcome["status"] = response.status_code
        except httpx.HTTPError as exc:
            outcome["error"] = exc

    request = threading.Thread(target=segment, daemon=True)
    try:
        request.start()
        with live.client(timeout=10) as client:
            while _in_flight(client) < 1:
                assert request.is_alive(), outcome
                time.sleep(0.1)
        live.process.send_signal(signal.SIGTERM)
        returncode = live.process.wait(timeout=60)
    finally:
        live.stop(timeout=5)
    request.join(timeout=60)
    assert returncode in (0, -signal.SIGTERM, 128 + signal.SIGTERM), live.output()[-3000:]
    assert not request.is_alive()
    assert outcome.get("status") != 200

"""`/admin/model/{name}` end to end, through real server processes: upload forms, replace, delete,
persistence across restarts (also after SIGKILL mid-upload), archive attacks, limits, token and host checks."""

from __future__ import annotations

import io
import json
import os
import pickle
import socket
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import nibabel as nib
import numpy as np
import pytest
import torch

from tests.mmar.test_store import EvilPickle, tar_folder, tar_member, tar_with, zip_entries, zip_folder
from tests.support.mmars import SlowNet, ThresholdNet, segmentation_config, write_threshold_mmar
from tests.support.server import LiveServer, start_server
from tests.support.volumes import dice
from tests.support.waiting import metric, until

TOKEN = "test-admin-token-4f8a"
NO_BUNDLED = {"AIAA_BUNDLED_MODELS": "false"}


# ------------------------------------------------------------------------------------------- helpers


def config_bytes(**overrides: Any) -> bytes:
    return json.dumps(segmentation_config(**overrides)).encode()


def network_bytes(network: torch.nn.Module) -> bytes:
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(network.eval()), buffer)
    return buffer.getvalue()


def upload(
    client: httpx.Client, name: str, config: bytes | None = None, data: bytes | None = None,
    data_name: str = "model.ts", **kwargs: Any,
) -> httpx.Response:
    files: dict[str, tuple[str, bytes, str]] = {}
    if config is not None:
        files["config"] = ("config_aiaa.json", config, "application/json")
    if data is not None:
        files["data"] = (data_name, data, "application/octet-stream")
    return client.put(f"/admin/model/{name}", files=files, **kwargs)


def model_names(client: httpx.Client) -> list[str]:
    return [m["name"] for m in client.get("/v1/models").json()]


def segment(client: httpx.Client, model: str, image: Path, tmp_path: Path) -> np.ndarray:
    response = client.post(
        "/v1/segmentation", params={"model": model, "output": "image"},
        files={"datapoint": (image.name, image.read_bytes(), "application/octet-stream")}, data={"params": "{}"},
    )
    assert response.status_code == 200, response.text
    out = tmp_path / f"result-{time.monotonic_ns()}.nii.gz"
    out.write_bytes(response.content)
    return np.asarray(nib.load(str(out)).dataobj)


def assert_refused(response: httpx.Response, status: int, code: str, words: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["code"] == code, body
    assert words.lower() in body["detail"].lower(), body


def staging_empty(server: LiveServer) -> bool:
    staging = server.workspace / "models" / ".staging"
    return not staging.exists() or not any(staging.iterdir())


def raw_request(port: int, head: str, body: bytes = b"") -> tuple[int, bytes]:
    """Send bytes over a plain socket and read the status line (for bodies httpx would not send)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head.encode() + body)
        response = b""
        while not _complete(response):
            chunk = sock.recv(65536)
            if not chunk:
                break
            response += chunk
    return int(response.split(b" ", 2)[1]), response


def _complete(response: bytes) -> bool:
    head, sep, body = response.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.lower().split(b"\r\n"):
        if line.startswith(b"content-length:"):
            return len(body) >= int(line.split(b":", 1)[1])
    return True


# ------------------------------------------------------------------------------------------- servers


@pytest.fixture(scope="module")
def readonly_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("readonly_models")
    write_threshold_mmar(root / "readonly_model", labels=["readonly"])
    return root


@pytest.fixture(scope="module")
def open_server(tmp_path_factory: pytest.TempPathFactory, readonly_dir: Path) -> Iterator[LiveServer]:
    """No token, every host: the default admin setup on a loopback-only server."""
    live = start_server(tmp_path_factory.mktemp("admin_open") / "workspace", ["--models", str(readonly_dir)],
                        env=NO_BUNDLED)
    yield live
    live.stop()


@pytest.fixture(scope="module")
def locked_server(tmp_path_factory: pytest.TempPathFactory, readonly_dir: Path) -> Iterator[LiveServer]:
    """Token from the environment, loopback-only hosts, and small upload/archive limits."""
    live = start_server(
        tmp_path_factory.mktemp("admin_locked") / "workspace",
        ["--models", str(readonly_dir), "--admin_hosts", "127.0.0.1,::1", "--max_upload_mb", "1",
         "--max_archive_mb", "1", "--max_archive_files", "20"],
        env={**NO_BUNDLED, "AIAA_ADMIN_TOKEN": TOKEN},
    )
    yield live
    live.stop()


@pytest.fixture()
def client(open_server: LiveServer) -> Iterator[httpx.Client]:
    with open_server.client() as c:
        yield c


@pytest.fixture()
def authed(locked_server: LiveServer) -> Iterator[httpx.Client]:
    with locked_server.client(headers={"Authorization": f"Bearer {TOKEN}"}) as c:
        yield c


# ------------------------------------------------------------------------------------ accepted forms


def test_config_and_network_upload_serves_at_once(
    client: httpx.Client, open_server: LiveServer, cube_nifti: tuple, tmp_path: Path
) -> None:
    response = upload(client, "form_a", config_bytes(labels=["bright"]), network_bytes(ThresholdNet()))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["name"] == "form_a" and body["labels"] == ["bright"] and body["replaced"] is False
    assert body["path"].endswith(os.path.join("form_a", "models", "model.ts"))
    assert (open_server.workspace / "models" / "form_a" / "models" / "model.ts").is_file()
    assert "form_a" in model_names(client)
    image, mask, _ = cube_nifti
    assert dice(segment(client, "form_a", image, tmp_path), mask) > 0.9
    assert staging_empty(open_server)


@pytest.mark.parametrize(("packer", "prefix"), [(zip_folder, ""), (zip_folder, "my_mmar/"), (tar_folder, "")],
                         ids=["zip-root", "zip-top-folder", "tar.gz"])
def test_archived_mmar_upload(
    client: httpx.Client, open_server: LiveServer, tmp_path: Path, packer: Any, prefix: str
) -> None:
    mmar = write_threshold_mmar(tmp_path / "src", labels=["archived"], description_extra="kept")
    (mmar / "docs").mkdir()
    (mmar / "docs" / "Readme.md").write_text("hello")
    archive = packer(mmar, tmp_path / "mmar.bin", prefix)
    name = f"form_b_{packer.__name__}_{len(prefix)}"
    response = upload(client, name, data=archive.read_bytes(), data_name="mmar.zip")
    assert response.status_code == 200, response.text
    assert response.json()["labels"] == ["archived"]
    installed = open_server.workspace / "models" / name
    assert (installed / "docs" / "Readme.md").read_text() == "hello"
    stored = client.get(f"/admin/model/{name}").json()
    assert stored["description_extra"] == "kept"  # the stored config as uploaded, unknown keys included
    assert stored["path"] == str(installed / "models" / "model.ts") and stored["source"] == "uploaded"
    assert name in model_names(client)


def test_pipeline_config_only_upload(client: httpx.Client) -> None:
    config = {"version": "1", "type": "pipeline", "labels": ["spleen"], "description": "no network",
              "pre_transforms": [], "post_transforms": []}
    response = upload(client, "form_c", json.dumps(config).encode())
    assert response.status_code == 200, response.text
    assert response.json()["type"] == "pipeline"
    assert client.get("/admin/model/form_c").json()["format"] == "pipeline"
    assert "form_c" in model_names(client)


def test_weight_free_config_only_upload(client: httpx.Client, cube_nifti: tuple, tmp_path: Path) -> None:
    network = {"name": "aiaa.transforms.RegionGrowd", "args": {"k": 2.5, "roi_mm": 128.0}}
    config = {"version": "1", "type": "deepgrow", "labels": [], "description": "region growing, no weights",
              "pre_transforms": [{"name": "LoadImaged", "args": {"keys": "image"}}],
              "inference": {"output": "pred", "meta_data": {"deepgrow": "3D"}, "network": network}}
    response = upload(client, "form_grow", json.dumps(config).encode())
    assert response.status_code == 200, response.text
    assert response.json()["type"] == "deepgrow" and response.json()["deepgrow"] == "3D"
    assert client.get("/admin/model/form_grow").json()["format"] == "weight-free"
    image, mask, _ = cube_nifti
    response = client.post(
        "/v1/deepgrow", params={"model": "form_grow", "output": "image"},
        files={"datapoint": (image.name, image.read_bytes(), "application/octet-stream")},
        data={"params": json.dumps({"foreground": [[45, 35, 20]]})},
    )
    assert response.status_code == 200, response.text
    out = tmp_path / "grown.nii.gz"
    out.write_bytes(response.content)
    assert dice(np.asarray(nib.load(str(out)).dataobj), mask) > 0.9
    for hostile, words in (({**network, "args": {"iterations": 10**9}}, "iterations"),
                           ({**network, "args": {"max_roi_voxels": 2**60}}, "max_roi_voxels"),
                           ({"name": "ScaleIntensityRanged", "args": {}}, "inference.network")):
        config["inference"]["network"] = hostile
        assert_refused(upload(client, "hostile_grow", json.dumps(config).encode()), 422, "invalid_model", words)
    assert "hostile_grow" not in model_names(client)


def test_config_only_for_a_network_model_refused(client: httpx.Client, open_server: LiveServer) -> None:
    assert_refused(upload(client, "needs_net", config_bytes()), 422, "invalid_model", "send `data`")
    assert "needs_net" not in model_names(client)
    assert not (open_server.workspace / "models" / "needs_net").exists()


def test_ngc_forms_refused(client: httpx.Client) -> None:
    response = client.put("/admin/model/ngc_model", json={"path": "nvidia/med/clara_pt_spleen", "version": "1"})
    assert_refused(response, 501, "not_implemented", "NGC download not supported")
    response = client.put("/admin/model/ngc_model", files={"ngc": (None, '{"path": "nvidia/med/x"}')})
    assert_refused(response, 501, "not_implemented", "upload the MMAR")
    assert "ngc_model" not in model_names(client)


# ---------------------------------------------------------------------------------- get and delete


def test_get_and_delete_uploaded_model(client: httpx.Client, open_server: LiveServer) -> None:
    assert upload(client, "doomed", config_bytes(labels=["doomed"]), network_bytes(ThresholdNet())).status_code == 200
    stored = client.get("/admin/model/doomed")
    assert stored.status_code == 200 and stored.json()["labels"] == ["doomed"] and stored.json()["loaded"] is True
    response = client.delete("/admin/model/doomed")
    assert response.status_code == 200, response.text
    assert response.json() == {"name": "doomed", "deleted": True, "now_serving": None}
    assert "doomed" not in model_names(client)
    assert not (open_server.workspace / "models" / "doomed").exists()
    assert_refused(client.get("/admin/model/doomed"), 404, "not_found", "doomed")
    assert_refused(client.delete("/admin/model/doomed"), 404, "not_found", "doomed")


def test_readonly_model_cannot_be_deleted_but_can_be_shadowed(client: httpx.Client, readonly_dir: Path) -> None:
    assert_refused(client.delete("/admin/model/readonly_model"), 409, "conflict", "read-only")
    assert client.get("/admin/model/readonly_model").json()["source"] == "folder"
    shadow = upload(client, "readonly_model", config_bytes(labels=["shadow"]), network_bytes(ThresholdNet()))
    assert shadow.status_code == 200 and shadow.json()["replaced"] is True
    assert client.get("/v1/models", params={"model": "readonly_model"}).json()["labels"] == ["shadow"]
    response = client.delete("/admin/model/readonly_model")
    assert response.status_code == 200
    assert response.json()["now_serving"] == str(readonly_dir / "readonly_model")
    assert client.get("/v1/models", params={"model": "readonly_model"}).json()["labels"] == ["readonly"]
    assert (readonly_dir / "readonly_model" / "models" / "model.ts").is_file()


def test_replace_keeps_running_request_on_the_old_version(
    client: httpx.Client, open_server: LiveServer, cube_nifti: tuple, tmp_path: Path
) -> None:
    image, mask, _ = cube_nifti
    slow_v1 = upload(client, "hot_swap", config_bytes(labels=["v1"], roi=[16, 16, 16]),
                     network_bytes(SlowNet(repeats=200)))
    assert slow_v1.status_code == 200, slow_v1.text
    results: dict[str, Any] = {}

    def run_v1() -> None:
        with open_server.client(timeout=300.0) as own:
            results["v1"] = segment(own, "hot_swap", image, tmp_path)
            results["v1_done"] = time.monotonic()

    worker = threading.Thread(target=run_v1)
    worker.start()
    until(lambda: "v1" in results or metric(open_server, "aiaa_inference_in_flight", lane="batch") >= 1,
          timeout=60, message="the v1 request never reached a worker")  # it has picked its model: now running
    # v2 marks every voxel: ThresholdNet(-1) is above the threshold everywhere after intensity scaling.
    v2 = upload(client, "hot_swap", config_bytes(labels=["v2"]), network_bytes(ThresholdNet(threshold=-1.0)))
    replaced_at = time.monotonic()
    assert v2.status_code == 200 and v2.json()["replaced"] is True, v2.text
    assert client.get("/v1/models", params={"model": "hot_swap"}).json()["labels"] == ["v2"]
    worker.join(timeout=300)
    assert "v1" in results, "the v1 request did not finish"
    assert results["v1_done"] > replaced_at, "v1 finished before the replace: make SlowNet slower"
    assert dice(results["v1"], mask) > 0.9  # v1's answer: the bright cube only
    after = segment(client, "hot_swap", image, tmp_path)
    assert after.min() == 1 and after.shape == mask.shape  # v2's answer: everything


# ------------------------------------------------------------------------------------------ attacks


@pytest.mark.parametrize("raw_name", ["..%2F..%2Fevil", "a%20b", "-dash", "x" * 129, ".staging", "%2Fetc%2Fpasswd"])
def test_invalid_model_names_refused(client: httpx.Client, open_server: LiveServer, raw_name: str) -> None:
    response = upload(client, raw_name, config_bytes(), network_bytes(ThresholdNet()))
    assert_refused(response, 400, "invalid_model_name", "invalid model name")
    assert_refused(client.delete(f"/admin/model/{raw_name}"), 400, "invalid_model_name", "invalid model name")
    assert not (open_server.workspace / "evil").exists() and not (open_server.workspace.parent / "evil").exists()


def _archive_attacks(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    config = config_bytes()
    net = network_bytes(ThresholdNet())
    good = {"config/config_aiaa.json": config, "models/model.ts": net}
    return {
        "zip-traversal": (zip_entries(tmp_path / "t.zip", {**good, "../../../evil.txt": b"x"}), "outside"),
        "zip-absolute": (zip_entries(tmp_path / "a.zip", {**good, "/tmp/aiaa-evil.txt": b"x"}), "absolute"),
        "zip-symlink": (zip_entries(tmp_path / "s.zip", {"config/config_aiaa.json": config},
                                    symlinks={"models": "/etc"}), "symbolic link"),
        "tar-symlink": (tar_with(tmp_path / "s.tgz", [(tar_member("config/config_aiaa.json"), config),
                                                       (tar_member("models", tarfile.SYMTYPE, "/etc"), None)]),
                        "symbolic link"),
        "tar-hardlink": (tar_with(tmp_path / "h.tgz", [(tar_member("config/config_aiaa.json"), config),
                                                        (tar_member("models/model.ts", tarfile.LNKTYPE,
                                                                    "/etc/passwd"), None)]), "hard link"),
        "tar-traversal": (tar_with(tmp_path / "p.tgz", [(tar_member("config/config_aiaa.json"), config),
                                                         (tar_member("../../evil.txt"), b"x")]), "outside"),
    }


def test_archive_attacks_refused(client: httpx.Client, open_server: LiveServer, tmp_path: Path) -> None:
    for label, (archive, reason) in _archive_attacks(tmp_path).items():
        name = f"attack_{label.replace('-', '_')}"
        response = upload(client, name, data=archive.read_bytes(), data_name=archive.name)
        assert response.status_code == 400, (label, response.text)
        assert response.json()["code"] == "invalid_archive" and reason in response.json()["detail"], label
        assert name not in model_names(client)
    root = open_server.workspace.parent
    assert not list(root.rglob("evil.txt")) and not Path("/tmp/aiaa-evil.txt").exists()
    assert staging_empty(open_server)


def test_pickles_never_unpickled(client: httpx.Client, open_server: LiveServer, tmp_path: Path) -> None:
    marker = tmp_path / "pwned-by-pickle"
    plain = pickle.dumps(EvilPickle(marker))
    assert_refused(upload(client, "pickled", config_bytes(), plain), 422, "invalid_model", "pickled checkpoint")
    zipped = io.BytesIO()
    torch.save({"net": EvilPickle(marker)}, zipped)  # the zip-format checkpoint, still a pickle inside
    assert_refused(upload(client, "pickled", config_bytes(), zipped.getvalue()), 422, "invalid_model", "TorchScript")
    mmar = zip_entries(tmp_path / "pt.zip", {"config/config_aiaa.json": config_bytes(),
                                               "models/model.pt": zipped.getvalue()})
    assert_refused(upload(client, "pickled", data=mmar.read_bytes()), 422, "invalid_model", "TorchScript")
    assert not marker.exists()
    assert "pickled" not in model_names(client)
    pickle.loads(plain)  # control: the payload does fire when something unpickles it
    assert marker.exists()


def test_uploaded_code_refused(client: httpx.Client, tmp_path: Path) -> None:
    marker = tmp_path / "pwned-by-code"
    mmar = write_threshold_mmar(tmp_path / "with_custom")
    (mmar / "custom").mkdir()
    (mmar / "custom" / "__init__.py").write_text(f"import os\nos.makedirs({str(marker)!r})\n")
    response = upload(client, "custom_code", data=zip_folder(mmar, tmp_path / "c.zip").read_bytes())
    assert_refused(response, 422, "invalid_model", "custom/")
    config = config_bytes(pre=[{"name": "os.makedirs", "args": {"name": str(marker)}}])
    response = upload(client, "custom_code", config, network_bytes(ThresholdNet()))
    assert_refused(response, 422, "invalid_model", "not allowed in an uploaded model")
    assert not marker.exists()


def test_network_failing_dry_run_refused(client: httpx.Client) -> None:
    config = segmentation_config(roi=[16, 16, 16])
    config["inference"]["TRITON"] = {"triton_model_config": {
        "max_batch_size": 1, "input": [{"name": "INPUT__0", "dims": [1, 16, 16, 16]}],
        "output": [{"name": "OUTPUT__0", "dims": [3, 16, 16, 16]}]}}
    response = upload(client, "bad_shape", json.dumps(config).encode(), network_bytes(ThresholdNet()))
    assert_refused(response, 422, "invalid_model", "dry run failed")
    assert "bad_shape" not in model_names(client)


def test_malformed_uploads_refused(client: httpx.Client, open_server: LiveServer) -> None:
    assert_refused(upload(client, "junk", b"{not json", network_bytes(ThresholdNet())), 422, "invalid_model", "JSON")
    assert_refused(upload(client, "junk", data=b"just some bytes"), 400, "invalid_archive", "not a zip")
    assert_refused(upload(client, "junk", data=network_bytes(ThresholdNet())), 400, "bad_request", "config")
    response = client.put("/admin/model/junk", files={"other": ("x.bin", b"x")})
    assert_refused(response, 400, "bad_request", "unexpected form field 'other'")
    response = client.put("/admin/model/junk", content=b"raw", headers={"content-type": "application/octet-stream"})
    assert_refused(response, 400, "bad_request", "unsupported content type")
    truncated = b'--B\r\nContent-Disposition: form-data; name="config"\r\n\r\n{"type": "pipeline"}'
    response = client.put("/admin/model/junk", content=truncated,
                          headers={"content-type": "multipart/form-data; boundary=B"})
    assert_refused(response, 400, "bad_request", "ended before")
    assert "junk" not in model_names(client) and staging_empty(open_server)


# --------------------------------------------------------------------------------- token and limits


def test_token_required_on_admin_routes_only(locked_server: LiveServer, authed: httpx.Client) -> None:
    with locked_server.client() as anonymous:
        response = anonymous.get("/admin/model/readonly_model")
        assert_refused(response, 401, "unauthorized", "Authorization: Bearer")
        assert response.headers["www-authenticate"].startswith("Bearer")
        wrong = anonymous.delete("/admin/model/readonly_model", headers={"Authorization": "Bearer nope"})
        assert_refused(wrong, 401, "unauthorized", "invalid admin token")
        basic = anonymous.get("/admin/model/readonly_model", headers={"Authorization": f"Basic {TOKEN}"})
        assert basic.status_code == 401
        sneaky = upload(anonymous, "sneaky", config_bytes(), network_bytes(ThresholdNet()))
        assert sneaky.status_code == 401
        assert anonymous.get("/v1/models").status_code == 200  # the annotation API stays open
        assert "sneaky" not in model_names(anonymous)
    assert authed.get("/admin/model/readonly_model").json()["labels"] == ["readonly"]
    response = upload(authed, "with_token", config_bytes(), network_bytes(ThresholdNet()))
    assert response.status_code == 200, response.text


def test_upload_size_limit(locked_server: LiveServer) -> None:
    head = (f"PUT /admin/model/too_big HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
            "Content-Type: multipart/form-data; boundary=B\r\nContent-Length: 5000000\r\n\r\n")
    status, response = raw_request(locked_server.port, head)  # refused on the header, before any body
    assert status == 413 and b"max_upload_mb" in response

    def chunked_body() -> Iterator[bytes]:
        yield b'--B\r\nContent-Disposition: form-data; name="data"; filename="m.zip"\r\n\r\n'
        for _ in range(18):
            yield bytes(64 * 1024)  # 1.1 MiB in all, no Content-Length

    with locked_server.client(headers={"Authorization": f"Bearer {TOKEN}"}) as authed:
        response = authed.put("/admin/model/too_big", content=chunked_body(),
                              headers={"content-type": "multipart/form-data; boundary=B"})
        assert_refused(response, 413, "payload_too_large", "max_upload_mb")
        assert "too_big" not in model_names(authed)
    assert staging_empty(locked_server)


def test_zip_bomb_and_file_count_refused(authed: httpx.Client, locked_server: LiveServer, tmp_path: Path) -> None:
    good = {"config/config_aiaa.json": config_bytes(), "models/model.ts": network_bytes(ThresholdNet())}
    bomb = zip_entries(tmp_path / "bomb.zip", {**good, "docs/zeros.bin": bytes(16 * 2**20)})
    assert bomb.stat().st_size < 2**20 // 2
    response = upload(authed, "bomb", data=bomb.read_bytes())
    assert_refused(response, 413, "archive_too_large", "max_archive_mb")
    many = zip_entries(tmp_path / "many.zip", {**good, **{f"docs/{i}.txt": b"" for i in range(30)}})
    assert_refused(upload(authed, "bomb", data=many.read_bytes()), 413, "archive_too_large", "max_archive_files")
    assert "bomb" not in model_names(authed) and staging_empty(locked_server)


def test_admin_hosts_refuses_other_clients(tmp_path: Path, readonly_dir: Path) -> None:
    live = start_server(tmp_path / "workspace", ["--models", str(readonly_dir), "--admin_hosts", "10.0.0.0/8"],
                        env={**NO_BUNDLED, "AIAA_ADMIN_TOKEN": TOKEN})
    try:
        with live.client(headers={"Authorization": f"Bearer {TOKEN}"}) as c:
            assert_refused(c.get("/admin/model/readonly_model"), 403, "forbidden", "127.0.0.1")
            assert_refused(upload(c, "x", config_bytes(), network_bytes(ThresholdNet())), 403, "forbidden",
                           "admin_hosts")
            assert c.delete("/admin/model/readonly_model").status_code == 403
            assert model_names(c) == ["readonly_model"]
    finally:
        live.stop()


# ----------------------------------------------------------------------------------- persistence


def _start_streaming_upload(port: int, name: str, total: int, first: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    preamble = b'--B\r\nContent-Disposition: form-data; name="data"; filename="m.zip"\r\n\r\n'
    sock.sendall((f"PUT /admin/model/{name} HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; "
                  f"boundary=B\r\nContent-Length: {total}\r\n\r\n").encode() + preamble + first)
    return sock


def _wait_for_staged_bytes(workspace: Path, count: int, minimum: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        parts = list((workspace / "models" / ".staging").glob("up-*/data.part"))
        if len(parts) >= count and all(p.stat().st_size >= minimum for p in parts):
            return
        time.sleep(0.05)
    raise AssertionError("the uploads never reached the staging folder")


def test_models_survive_restart_and_sigkill_mid_upload(tmp_path: Path, cube_nifti: tuple) -> None:
    workspace = tmp_path / "workspace"
    live = start_server(workspace, env=NO_BUNDLED, wait_ready=False)
    sockets: list[socket.socket] = []
    try:
        with live.client() as c:
            assert upload(c, "keeper", config_bytes(labels=["v1"]), network_bytes(ThresholdNet())).status_code == 200
            assert upload(c, "gone", config_bytes(), network_bytes(ThresholdNet())).status_code == 200
            assert c.delete("/admin/model/gone").status_code == 200
        # Two uploads stream in (a replace of `keeper`, a new `fresh`), then the server dies with SIGKILL.
        noise = os.urandom(3 * 2**20)
        sockets = [_start_streaming_upload(live.port, name, 64 * 2**20, noise) for name in ("keeper", "fresh")]
        _wait_for_staged_bytes(workspace, count=2, minimum=2**20)
        live.process.kill()
        live.process.wait(timeout=30)
    finally:
        for sock in sockets:
            sock.close()
        live.stop()
    assert list((workspace / "models" / ".staging").iterdir()), "the kill should leave upload leftovers"

    restarted = start_server(workspace, env=NO_BUNDLED)
    try:
        with restarted.client() as c:
            assert model_names(c) == ["keeper"]
            assert c.get("/v1/models", params={"model": "keeper"}).json()["labels"] == ["v1"]
            assert c.get("/admin/model/keeper").json()["loaded"] is True
            assert_refused(c.get("/admin/model/fresh"), 404, "not_found", "fresh")
            assert_refused(c.get("/admin/model/gone"), 404, "not_found", "gone")
            image, mask, _ = cube_nifti
            assert dice(segment(c, "keeper", image, tmp_path), mask) > 0.9
        assert staging_empty(restarted)
        assert sorted(p.name for p in (workspace / "models").iterdir()) == [".staging", "keeper"]
    finally:
        restarted.stop()

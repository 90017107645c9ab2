"""Hostile inputs sent to the real server (security issue items 2, 3, 8): every one is refused with a 4xx
JSON body naming the problem, nothing is logged as a server error, and the server keeps serving."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import nibabel as nib
import numpy as np
import pytest

from aiaa_server.imaging.png import encode_png
from tests.support.multipart import parse_multipart
from tests.support.server import LiveServer, start_server
from tests.support.volumes import save_nifti

SQUARE = [[10, 10], [10, 30], [30, 30], [30, 10]]
VOLUME = np.zeros((32, 32, 8), np.int16)
VOLUME[10:20, 10:20, 2:6] = 400
INSIDE_CLICK = [15, 15, 3]


# ------------------------------------------------------------------ helpers and fixtures


@pytest.fixture(autouse=True)
def no_server_errors(server: LiveServer) -> Iterator[None]:
    """After each test: nothing new in the log is a 500 or an unexpected error, and /v1/models answers."""
    offset = len(server.output())
    yield
    new_log = server.output()[offset:]
    assert "unexpected error" not in new_log and '" 500' not in new_log, new_log[-3000:]
    with server.client() as client:
        assert client.get("/v1/models").status_code == 200


def assert_refused(response: httpx.Response, status: int, *words: str) -> None:
    assert response.status_code == status, response.text[:500]
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["code"] and all(word in body["detail"] for word in words), body


def post(server: LiveServer, path: str, params: str | dict, file: Path | None = None,
         model: str | None = None) -> httpx.Response:
    data = {"params": params if isinstance(params, str) else json.dumps(params)}
    query = {"model": model} if model else {}
    with server.client() as client:
        if file is None:
            return client.post(path, params=query, data=data)
        with open(file, "rb") as handle:
            return client.post(path, params=query, data=data, files={"datapoint": (file.name, handle)})


@pytest.fixture()
def png(tmp_path: Path) -> Path:
    path = tmp_path / "slice.png"
    path.write_bytes(encode_png(np.zeros((48, 64), np.uint8)))
    return path


@pytest.fixture()
def volume(tmp_path: Path) -> Path:
    return save_nifti(tmp_path / "volume.nii.gz", VOLUME, np.eye(4))


@pytest.fixture()
def flat_image(tmp_path: Path) -> Path:
    return save_nifti(tmp_path / "flat.nii.gz", VOLUME[:, :, 3].copy(), np.eye(4))


def raw_exchange(port: int, request: bytes, read: bool = True) -> bytes:
    """Send raw bytes; return what the server answers before it closes (b"" when not reading)."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        try:
            sock.sendall(request)
        except OSError:  # the server may answer and close before it has read everything
            pass
        answer = b""
        while read:
            try:
                chunk = sock.recv(65536)
            except OSError:
                break
            if not chunk:
                break
            answer += chunk
        return answer


def multipart_head(path: str, boundary: str, length: int | None) -> bytes:
    size = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return (f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: multipart/form-data; boundary={boundary}\r\n"
            f"{size}\r\nConnection: close\r\n\r\n").encode()


def file_part(boundary: str, name: str = "datapoint", filename: str = "mask.nii") -> bytes:
    return (f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n").encode()


# ------------------------------------------------------------------ item 1: polygons


@pytest.mark.parametrize(("params", "words"), [
    ({"poly": [[[0, 0], [10**9, 0], [10**9, 10**9]]], "dimension": 2}, ["outside the image"]),
    ({"poly": [SQUARE], "dimension": 2, "propagate_neighbor": 10**9}, ["propagate_neighbor"]),
    ('{"poly": [[[10,10],[10,30],[30,30]]], "vertex_offset": [NaN, 1], "dimension": 2}', ["NaN"]),
    ('{"poly": [[[10,10],[10,30],[30,30]]], "vertex_offset": [1, Infinity], "dimension": 2}', ["Infinity"]),
    ('{"poly": [[[10,10],[10,30],[30,30]]], "vertex_offset": [-Infinity, 1], "dimension": 2}', ["Infinity"]),
    ({"poly": [SQUARE], "vertex_offset": ["nan", 1], "dimension": 2}, ["vertex_offset"]),
    ({"poly": [SQUARE], "vertex_offset": [1e300, 1], "dimension": 2}, ["vertex_offset"]),
    ({"poly": [[[1, 1]] * 100_001], "dimension": 2}, ["100000"]),
    ({"poly": [[[1, 1]]] * 100_001, "dimension": 2}, ["100000"]),
    ({"poly": [[[0, 0], [63, 0]] * 40_000], "dimension": 2}, ["too long to rasterise"]),
    ({"poly": [[[1, 2, 3], [4, 5, 6], [7, 8, 9]]], "dimension": 2}, ["[x, y]"]),
], ids=["coordinates-1e9", "propagate-1e9", "offset-nan", "offset-inf", "offset-minus-inf", "offset-nan-string",
        "offset-1e300", "vertices-per-polygon", "polygons", "edge-pixels", "three-coordinates"])
def test_fixpolygon_2d_hostile_params(server: LiveServer, png: Path, params: str | dict, words: list[str]) -> None:
    assert_refused(post(server, "/v1/fixpolygon", params, png), 400, *words)


def test_fixpolygon_3d_propagation_is_bounded(server: LiveServer, volume: Path) -> None:
    refused = post(server, "/v1/fixpolygon", {"poly": [[SQUARE]] * 8, "dimension": 3,
                                              "propagate_neighbor_3d": 10**9}, volume)
    assert_refused(refused, 400, "propagate_neighbor_3d")
    far_reach = post(server, "/v1/fixpolygon", {"poly": [[SQUARE]] * 8, "dimension": 3, "slice_index": 4,
                                                "vertex_index": 2, "vertex_offset": [4, 4],
                                                "propagate_neighbor_3d": 100_000}, volume)
    assert far_reach.status_code == 200, far_reach.text  # far more reach than slices: all follow almost fully
    corners = [s[0][2] for s in parse_multipart(far_reach.headers["content-type"], far_reach.content).params["poly"]]
    assert corners == [[34, 34]] * 8


def test_fixpolygon_3d_on_a_volume_with_nan_spacing(server: LiveServer, tmp_path: Path) -> None:
    image = nib.Nifti1Image(VOLUME, np.eye(4))
    image.header["pixdim"][1] = np.nan
    path = tmp_path / "nan_spacing.nii"
    nib.save(image, str(path))
    assert_refused(post(server, "/v1/fixpolygon", {"poly": [[SQUARE]] * 8, "dimension": 3}, path), 400)


@pytest.mark.parametrize("shape", [(0, 4, 4), (0,)], ids=["zero-x", "one-dimensional-empty"])
def test_mask2polygon_on_an_empty_nifti(server: LiveServer, tmp_path: Path, shape: tuple[int, ...]) -> None:
    path = tmp_path / "empty.nii"
    nib.save(nib.Nifti1Image(np.zeros(shape, np.uint8), np.eye(4)), str(path))
    assert_refused(post(server, "/v1/mask2polygon", {}, path), 400)


@pytest.mark.parametrize("params", ['{"more_points": NaN}', '{"more_points": "inf"}', '{"more_points": 1e300}'])
def test_mask2polygon_more_points_must_be_sane(server: LiveServer, volume: Path, params: str) -> None:
    assert_refused(post(server, "/v1/mask2polygon", params, volume), 400)


# ------------------------------------------------------------------ item 2: clicks


def test_a_million_clicks_are_refused_by_count(server: LiveServer, volume: Path) -> None:
    params = '{"foreground": [' + ",".join(["[15, 15, 3]"] * 10**6) + "]}"
    assert_refused(post(server, "/v1/deepgrow", params, volume, "demo_deepgrow_3d"), 400, "--max_clicks")


@pytest.mark.parametrize(("params", "words"), [
    ('{"foreground": [[NaN, 15, 3]]}', ["NaN"]),
    ('{"foreground": [[15, Infinity, 3]]}', ["Infinity"]),
    ('{"background": [[15, 15, -Infinity]], "foreground": [[15, 15, 3]]}', ["Infinity"]),
    ('{"foreground": [[1e300, 15, 3]]}', ["out of range"]),
    ('{"foreground": [["nan", 15, 3]]}', ["numbers"]),
    ('{"foreground": [[15, 15, 3, 1]]}', ["[x, y, z]"]),
    (json.dumps({"foreground": [INSIDE_CLICK] * 6000, "background": [INSIDE_CLICK] * 6000}), ["--max_clicks"]),
], ids=["nan", "infinity", "minus-infinity", "huge", "string", "four-coordinates", "total-over-limit"])
def test_hostile_clicks(server: LiveServer, volume: Path, params: str, words: list[str]) -> None:
    assert_refused(post(server, "/v1/deepgrow", params, volume, "demo_deepgrow_3d"), 400, *words)


def test_dextr3d_points_are_bounded_too(server: LiveServer, volume: Path) -> None:
    params = {"points": [INSIDE_CLICK] * 10_001}
    assert_refused(post(server, "/v1/dextr3d", params, volume, "demo_dextr3d_annotation"), 400, "--max_clicks")


# ------------------------------------------------------------------ item 3: params JSON


@pytest.mark.parametrize(("params", "words"), [
    ('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}", ["nested"]),
    ('{"a": ' + "9" * 5000 + "}", ["number"]),
    ('{"label": NaN}', ["NaN"]),
    ('{"a": 1e400}', ["out of range"]),
    (json.dumps({"points": "[" * 100_000 + "]" * 100_000}), ["params.points", "nested"]),
], ids=["nested-100000", "5000-digits", "nan-literal", "float-overflow", "nested-in-a-json-string"])
def test_hostile_params_json(server: LiveServer, volume: Path, params: str, words: list[str]) -> None:
    assert_refused(post(server, "/v1/segmentation", params, volume, "test_threshold"), 400, *words)


# ------------------------------------------------------------------ item 4: request bodies


@pytest.mark.parametrize("length", [201, 300])
def test_overlong_multipart_boundary(server: LiveServer, length: int) -> None:
    boundary = "b" * length
    body = f'--{boundary}\r\nContent-Disposition: form-data; name="params"\r\n\r\n{{}}\r\n--{boundary}--\r\n'
    with server.client() as client:
        response = client.post("/v1/mask2polygon", content=body.encode(),
                               headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert_refused(response, 400, "boundary", str(length))


def test_a_70_character_boundary_is_fine(server: LiveServer, png: Path) -> None:
    boundary = "7" * 70
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="params"\r\n\r\n{{}}\r\n'.encode()
            + file_part(boundary, filename="slice.png") + png.read_bytes() + f"\r\n--{boundary}--\r\n".encode())
    with server.client() as client:
        response = client.post("/v1/mask2polygon", content=body,
                               headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert response.status_code == 200 and response.json() == [[]], response.text


@pytest.mark.parametrize("content_type", ["application/json", "application/x-www-form-urlencoded"])
def test_text_bodies_over_16_mib(server: LiveServer, content_type: str) -> None:
    body = b'{"params": "' + b"x" * (16 * 2**20) + b'"}'
    with server.client() as client:
        response = client.post("/v1/mask2polygon", content=body, headers={"content-type": content_type})
    assert_refused(response, 413, "16 MiB")


def test_declared_length_over_the_limit_is_refused_before_reading(server: LiveServer) -> None:
    answer = raw_exchange(server.port, multipart_head("/v1/segmentation?model=test_threshold", "x", 5 * 2**30))
    assert answer.startswith(b"HTTP/1.1 413"), answer[:300]
    assert b"--max_request_mb" in answer


def test_client_disconnecting_mid_upload_is_not_a_server_error(server: LiveServer) -> None:
    head = multipart_head("/v1/mask2polygon", "xyz", 10 * 2**20)
    raw_exchange(server.port, head + file_part("xyz") + b"\0" * 100_000, read=False)
    deadline = time.monotonic() + 30
    while "client disconnected" not in server.output() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "client disconnected before the request body was complete" in server.output()


@pytest.fixture(scope="module")
def small_server(tmp_path_factory: pytest.TempPathFactory, test_models_dir: Path) -> Iterator[LiveServer]:
    live = start_server(tmp_path_factory.mktemp("small") / "workspace",
                        ["--no-bundled_models", "--models", str(test_models_dir), "--max_request_mb", "1"])
    yield live
    live.stop()


def test_streamed_multipart_over_max_request_mb(small_server: LiveServer) -> None:
    payload = file_part("xyz") + b"\0" * (2**20 + 2**16)
    chunked = b"".join(f"{len(payload[i:i + 2**16]):x}\r\n".encode() + payload[i:i + 2**16] + b"\r\n"
                       for i in range(0, len(payload), 2**16))
    answer = raw_exchange(small_server.port, multipart_head("/v1/mask2polygon", "xyz", None) + chunked)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:300]
    assert b"--max_request_mb" in answer and b"1 MiB" in answer
    assert "unexpected error" not in small_server.output()


# ------------------------------------------------------------------ items 5 and 6: device, dimensionality


def test_params_cannot_choose_a_device(server: LiveServer, volume: Path) -> None:
    """`device` in params is not an option of any endpoint: it is ignored, never a 500."""
    plain = post(server, "/v1/segmentation", {}, volume, "test_threshold")
    odd = post(server, "/v1/segmentation", {"device": "nonsense:99"}, volume, "test_threshold")
    assert plain.status_code == odd.status_code == 200, odd.text
    masks = [parse_multipart(r.headers["content-type"], r.content).image for r in (plain, odd)]
    assert masks[0] == masks[1]


@pytest.mark.parametrize(("endpoint", "model", "params"), [
    ("/v1/deepgrow", "demo_deepgrow_2d", {"foreground": [[15, 15]]}),
    ("/v1/deepgrow", "demo_deepgrow_2d", {"foreground": [[15, 15, 0]]}),
    ("/v1/deepgrow", "demo_deepgrow_3d", {"foreground": [[15, 15, 0]]}),
    ("/v1/segmentation", "test_threshold", {}),
    ("/v1/dextr3d", "demo_dextr3d_annotation", {"points": [[1, 1, 0]] * 6}),
], ids=["deepgrow-2d-xy", "deepgrow-2d-xyz", "deepgrow-3d", "segmentation", "dextr3d"])
def test_a_2d_image_for_a_volume_model(server: LiveServer, flat_image: Path, endpoint: str, model: str,
                                       params: dict) -> None:
    assert_refused(post(server, endpoint, params, flat_image, model), 422, "3D volume", "[32, 32]")

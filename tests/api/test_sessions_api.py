"""Sessions end to end through a real server (protocol section 5, 13.13, 13.18): create (NIfTI, DICOM series,
zip), get / update_ts / delete, 404 and 440, inference via session_id, sweeper, budget, restart."""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import time
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import nibabel as nib
import numpy as np
import pytest

from aiaa_server.imaging.formats import ImageFormat
from aiaa_server.imaging.io import decode_result
from tests.imaging.test_dicom import hu_volume, write_series
from tests.support.mmars import write_threshold_mmar
from tests.support.multipart import parse_multipart
from tests.support.server import LiveServer, start_server
from tests.support.volumes import cube_volume, lps_affine, save_nifti
from tests.support.waiting import until

NATIVE_PRE = [
    {"name": "LoadImaged", "args": {"keys": "image"}},
    {"name": "EnsureChannelFirstd", "args": {"keys": "image"}},
    {"name": "ScaleIntensityRanged",
     "args": {"keys": "image", "a_min": -500, "a_max": 500, "b_min": 0.0, "b_max": 1.0, "clip": True}},
]


@pytest.fixture(scope="module")
def session_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """test_threshold (resamples to 2 mm), the same with a `cache_until` prefix, and a native-grid one."""
    root = tmp_path_factory.mktemp("session-mmars")
    write_threshold_mmar(root / "test_threshold")
    write_threshold_mmar(root / "test_threshold_cached", cache_until="ScaleIntensityRanged")
    write_threshold_mmar(root / "test_threshold_native", pre=NATIVE_PRE, scanning_window=False)
    return root


@pytest.fixture(scope="module")
def session_server(tmp_path_factory: pytest.TempPathFactory, session_models: Path) -> Iterator[LiveServer]:
    live = start_server(tmp_path_factory.mktemp("session-server") / "workspace", ["--models", str(session_models)])
    yield live
    live.stop()


def put_session(server: LiveServer, files: list[tuple[str, str, Path]], params: str | None = None,
                path: str = "/session/", **query: str) -> httpx.Response:
    with contextlib.ExitStack() as stack:
        handles = [(part, (name, stack.enter_context(open(file, "rb")))) for part, name, file in files]
        with server.client() as client:
            data = {} if params is None else {"params": params}
            return client.put(path, params=query, data=data, files=handles)


def segment(server: LiveServer, model: str, file: Path | None = None, session_id: str | None = None,
            params: dict | None = None, endpoint: str = "/v1/segmentation", **query: str) -> httpx.Response:
    query = {"model": model, **query}
    if session_id:
        query["session_id"] = session_id
    with server.client() as client:
        data = {"params": json.dumps(params or {})}
        if file is None:
            return client.post(endpoint, params=query, data=data)
        with open(file, "rb") as handle:
            return client.post(endpoint, params=query, data=data, files={"datapoint": (file.name, handle)})


def result_array(response: httpx.Response) -> tuple[np.ndarray, np.ndarray, dict]:
    assert response.status_code == 200, response.text
    result = parse_multipart(response.headers["content-type"], response.content)
    array, affine = decode_result(result.image, ImageFormat.NIFTI_GZ)
    return array, affine, result.params


def test_create_get_update_delete_single_nifti(server: LiveServer, cube_nifti) -> None:
    path, _, affine = cube_nifti
    created = put_session(server, [("image", "cube.nii.gz", path)], expiry="0")  # the Python client's call
    assert created.status_code == 200, created.text
    body = created.json()
    session_id = body["session_id"]
    assert re.fullmatch(r"[0-9a-f]{32}", session_id)  # 128 random bits, not a time/MAC-based uuid1
    info = body["session_info"]
    assert info["session_id"] == session_id and info["name"] == "cube.nii.gz"
    assert info["meta"]["shape"] == [96, 80, 40]
    np.testing.assert_allclose(info["meta"]["affine"], affine, atol=1e-6)
    assert info["expiry"] == 3600 and info["create_ts"] == info["last_access_ts"]

    with server.client() as client:
        got = client.get(f"/session/{session_id}")
        assert got.status_code == 200 and got.json()["last_access_ts"] == info["last_access_ts"]
        time.sleep(0.05)  # lets the clock move, so that the refreshed access time is later
        refreshed = client.get(f"/session/{session_id}", params={"update_ts": "true"}).json()
        assert refreshed["last_access_ts"] > info["last_access_ts"]
        deleted = client.delete(f"/session/{session_id}")
        assert deleted.status_code == 200 and deleted.json()["session_id"] == session_id
        assert client.get(f"/session/{session_id}").status_code == 404
        assert client.delete(f"/session/{session_id}").status_code == 404
    after_delete = segment(server, "test_threshold", session_id=session_id)
    assert after_delete.status_code == 440
    assert after_delete.json()["detail"] == "Session Expired"
    assert not (server.workspace / "sessions" / session_id).exists()


def test_cpp_style_create_without_slash(server: LiveServer, cube_nifti) -> None:
    path, _, _ = cube_nifti
    response = put_session(server, [("image", "cube.nii.gz", path)], params="{}", path="/session")
    assert response.status_code == 200, response.text
    assert response.json()["session_info"]["expiry"] == 3600


def test_requested_expiry_is_capped(server: LiveServer, cube_nifti) -> None:
    path, _, _ = cube_nifti
    assert put_session(server, [("image", "a.nii.gz", path)], expiry="60").json()["session_info"]["expiry"] == 60
    assert put_session(server, [("image", "a.nii.gz", path)], expiry="99999").json()["session_info"]["expiry"] == 3600


def test_unknown_session(server: LiveServer) -> None:
    missing = secrets.token_hex(16)
    with server.client() as client:
        assert client.get(f"/session/{missing}").status_code == 404
        assert client.delete(f"/session/{missing}").status_code == 404
        assert client.get(f"/session/{uuid.uuid1()}").status_code == 404  # the old id format is never looked up
        assert client.get("/session/..%2F..%2Fetc").status_code == 404
    response = segment(server, "test_threshold", session_id=missing)
    assert response.status_code == 440 and response.json()["detail"] == "Session Expired"


def test_pacs_pull_needs_a_dicomweb_datastore(server: LiveServer) -> None:
    dicom = {"dicom": {"server_address": "pacs", "server_port": 104, "ae_title": "X", "query_level": "SERIES",
                       "patient_id": "p", "study_uid": "1.2", "series_uid": "1.2.3"}}
    with server.client() as client:
        response = client.put("/session/", params={"expiry": 0, "save_as": ".nii"}, json=dicom)
    assert response.status_code == 501
    assert "--datastore dicomweb+http" in response.json()["detail"]


def test_refuses_broken_png_and_empty_uploads(server: LiveServer, tmp_path: Path) -> None:
    from aiaa_server.imaging.png import encode_png

    png = tmp_path / "slice.png"
    png.write_bytes(encode_png(np.zeros((4, 4), dtype=np.uint8))[:30])  # a PNG (2D models) must decode
    refused = put_session(server, [("image", "slice.png", png)])
    assert refused.status_code == 400
    assert "slice.png" in refused.json()["detail"] or "PNG" in refused.json()["detail"]
    with server.client() as client:
        assert client.put("/session/", data={"params": "{}"}).status_code == 400


def test_ohif_dicom_series_session(session_server: LiveServer, tmp_path: Path) -> None:
    hu = hu_volume((24, 20, 10))
    paths, affine = write_series(tmp_path / "dcm", hu)
    parts = [(f"image{i}", f"image_{i}.dcm", p) for i, p in enumerate(paths)]
    created = put_session(session_server, parts, params="null", expiry="0", save_as=".nii")
    assert created.status_code == 200, created.text
    info = created.json()["session_info"]
    assert info["image"] == "image.nii"
    assert info["meta"]["shape"] == [24, 20, 10]
    np.testing.assert_allclose(info["meta"]["affine"], affine, atol=1e-5)
    np.testing.assert_allclose(info["meta"]["spacing"], [0.8, 0.7, 2.5], atol=1e-5)

    # What OHIF does next: native-grid threshold model, gzip NRRD uint16 back.
    params = {"result_extension": ".nrrd", "result_dtype": "uint16", "result_compress": True}
    response = segment(session_server, "test_threshold_native", session_id=created.json()["session_id"],
                       params=params, output="image")
    assert response.status_code == 200, response.text
    mask, mask_affine = decode_result(response.content, ImageFormat.NRRD)
    np.testing.assert_array_equal(mask, (hu > 0).astype(np.uint16))  # the voxels line up with the DICOM pixels
    np.testing.assert_allclose(mask_affine, affine, atol=1e-4)


def test_zip_of_dicom_session(session_server: LiveServer, tmp_path: Path) -> None:
    hu = hu_volume((16, 12, 6))
    paths, affine = write_series(tmp_path / "dcm", hu)
    archive = tmp_path / "series.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as handle:
        for path in paths:
            handle.write(path, f"DICOM/{path.name}")
    created = put_session(session_server, [("image", "series.zip", archive)])
    assert created.status_code == 200, created.text
    info = created.json()["session_info"]
    assert info["image"] == "image.nii.gz" and info["meta"]["shape"] == [16, 12, 6]
    np.testing.assert_allclose(info["meta"]["affine"], affine, atol=1e-5)


@pytest.mark.parametrize("model", ["test_threshold", "test_threshold_cached"])
def test_session_result_equals_upload_result_and_decodes_once(
    session_server: LiveServer, tmp_path: Path, model: str
) -> None:
    image, _ = cube_volume()
    path = save_nifti(tmp_path / "cube.nii.gz", image, lps_affine((0.8, 0.9, 2.5)))
    direct, direct_affine, direct_params = result_array(segment(session_server, model, file=path))
    session_id = put_session(session_server, [("image", "cube.nii.gz", path)]).json()["session_id"]
    for _ in range(3):
        via_session, affine, params = result_array(segment(session_server, model, session_id=session_id))
        np.testing.assert_array_equal(via_session, direct)
        np.testing.assert_allclose(affine, direct_affine)
        assert params == direct_params
    with session_server.client() as client:
        stats = client.get(f"/session/{session_id}").json()["stats"]
    assert stats["decodes"] == 1  # at upload; the three clicks reused it
    assert stats["preprocess_runs"] == {model: 1}
    assert stats["cached_bytes"] > 0


def test_session_image_wins_over_an_uploaded_file(session_server: LiveServer, tmp_path: Path) -> None:
    image, mask = cube_volume()
    path = save_nifti(tmp_path / "cube.nii.gz", image, lps_affine((1.0, 1.0, 1.0)))
    other = save_nifti(tmp_path / "other.nii.gz", np.full((20, 20, 20), 500, np.int16), np.eye(4))
    session_id = put_session(session_server, [("image", "cube.nii.gz", path)]).json()["session_id"]
    array, _, _ = result_array(segment(session_server, "test_threshold_native", file=other, session_id=session_id))
    np.testing.assert_array_equal(array, mask)


def test_deleted_session_files_are_gone(session_server: LiveServer, cube_nifti) -> None:
    path, _, _ = cube_nifti
    session_id = put_session(session_server, [("image", "cube.nii.gz", path)]).json()["session_id"]
    folder = session_server.workspace / "sessions" / session_id
    assert (folder / "meta.json").is_file() and (folder / "image.nii.gz").is_file()
    with session_server.client() as client:
        assert client.delete(f"/session/{session_id}").status_code == 200
    assert not folder.exists()


def test_expired_sessions_are_swept_and_answer_440(tmp_path: Path, session_models: Path, cube_nifti) -> None:
    path, _, _ = cube_nifti
    live = start_server(tmp_path / "workspace", ["--models", str(session_models), "--session_expiry", "3",
                                                 "--session_sweep_seconds", "0.3"])
    try:
        idle = put_session(live, [("image", "cube.nii.gz", path)], expiry="0").json()
        kept = put_session(live, [("image", "cube.nii.gz", path)], expiry="0").json()
        assert idle["session_info"]["expiry"] == 3
        assert segment(live, "test_threshold_native", session_id=idle["session_id"]).status_code == 200
        idle_folder = live.workspace / "sessions" / idle["session_id"]
        time.sleep(1.8)  # lets time pass (the server's real clock): `idle` gets 1.8 s closer to expiry
        with live.client() as client:
            assert client.get(f"/session/{kept['session_id']}", params={"update_ts": "true"}).status_code == 200
        # The sweeper, not a request, removes the idle session's files.
        until(lambda: not idle_folder.exists(), timeout=10.0, message="the sweeper never removed the idle session")
        with live.client() as client:
            # `kept` was refreshed 1.8 s in, so it outlives `idle` by that much
            assert client.get(f"/session/{kept['session_id']}").status_code == 200
            assert client.get(f"/session/{idle['session_id']}").status_code == 404
        response = segment(live, "test_threshold_native", session_id=idle["session_id"])
        assert response.status_code == 440 and response.json()["detail"] == "Session Expired"
        assert "expired" in live.output()
    finally:
        live.stop()


def noise_nifti(path: Path, seed: int) -> Path:
    data = np.random.default_rng(seed).integers(-1000, 1000, (64, 64, 48)).astype(np.int16)  # ~393 KB, incompressible
    return save_nifti(path, data, lps_affine((1.0, 1.0, 1.0)))


def test_budget_eviction_then_restart_keeps_sessions(tmp_path: Path, session_models: Path) -> None:
    workspace = tmp_path / "workspace"
    args = ["--models", str(session_models), "--session_budget_mb", "1"]
    live = start_server(workspace, args)
    try:
        ids = []
        for seed in range(3):
            file = noise_nifti(tmp_path / f"noise{seed}.nii", seed)
            response = put_session(live, [("image", file.name, file)])
            assert response.status_code == 200, response.text
            ids.append(response.json()["session_id"])
            time.sleep(0.05)  # lets the clock move: distinct access times order the LRU eviction
        with live.client() as client:
            assert client.get(f"/session/{ids[0]}").status_code == 404  # least recently used, evicted
            assert [client.get(f"/session/{i}").status_code for i in ids[1:]] == [200, 200]
        assert not (workspace / "sessions" / ids[0]).exists()
        before = np.asarray(result_array(segment(live, "test_threshold_native", session_id=ids[2]))[0])
    finally:
        live.stop()

    restarted = start_server(workspace, args)
    try:
        with restarted.client() as client:
            assert client.get(f"/session/{ids[0]}").status_code == 404
            info = client.get(f"/session/{ids[2]}")
            assert info.status_code == 200 and info.json()["meta"]["shape"] == [64, 64, 48]
        after = result_array(segment(restarted, "test_threshold_native", session_id=ids[2]))[0]
        np.testing.assert_array_equal(after, before)
        assert "reloaded 2 session(s)" in restarted.output()
    finally:
        restarted.stop()


def test_access_times_kept_in_memory_are_written_at_shutdown(tmp_path: Path, session_models: Path,
                                                              cube_nifti) -> None:
    path, _, _ = cube_nifti
    workspace = tmp_path / "workspace"
    args = ["--models", str(session_models)]
    live = start_server(workspace, args)
    try:
        session_id = put_session(live, [("image", "cube.nii.gz", path)]).json()["session_id"]
        meta = workspace / "sessions" / session_id / "meta.json"
        created = meta.read_bytes()
        assert segment(live, "test_threshold_native", session_id=session_id).status_code == 200
        with live.client() as client:
            last_access = client.get(f"/session/{session_id}").json()["last_access_ts"]
        assert meta.read_bytes() == created  # the click's access time is in memory only
    finally:
        live.stop()
    assert json.loads(meta.read_text())["last_access_ts"] == last_access

    restarted = start_server(workspace, args)
    try:
        with restarted.client() as client:
            info = client.get(f"/session/{session_id}")
        assert info.status_code == 200 and info.json()["last_access_ts"] == last_access
    finally:
        restarted.stop()


def test_session_affine_matches_nibabel(server: LiveServer, tmp_path: Path) -> None:
    image, _ = cube_volume()
    affine = lps_affine((0.5, 0.6, 3.0), origin=(10.0, -20.0, 5.0))
    path = save_nifti(tmp_path / "x.nii", image, affine)
    info = put_session(server, [("image", "x.nii", path)]).json()["session_info"]
    np.testing.assert_allclose(info["meta"]["affine"], nib.load(str(path)).affine, atol=1e-6)
    assert info["image"] == "image.nii"

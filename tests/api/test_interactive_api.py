"""Interactive annotation end to end through the real server (protocol 7.2, 7.3, 13.6, 13.10, 13.11):
DeepGrow 2D/3D and DExtr3D with the bundled DEMO models, uploads and sessions, lenient params, errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from scipy import ndimage

from aiaa_demo.synthetic_shapes import (
    HELDOUT_FAMILIES,
    TRAIN_FAMILIES,
    Clicks,
    Scene,
    extreme_points,
    first_click,
    make_scene,
    next_click,
)
from aiaa_server.imaging.formats import ImageFormat
from aiaa_server.imaging.io import decode_result
from tests.support.multipart import parse_multipart
from tests.support.server import LiveServer
from tests.support.volumes import dice, save_nifti

DEEPGROW_3D = "demo_deepgrow_3d"
DEEPGROW_2D = "demo_deepgrow_2d"
DEXTR3D = "demo_dextr3d_annotation"


# ------------------------------------------------------------------ helpers


def post(server: LiveServer, endpoint: str, model: str, params: Any, file: Path | None = None,
         session_id: str | None = None) -> httpx.Response:
    query = {"model": model, **({"session_id": session_id} if session_id else {})}
    data = {"params": params if isinstance(params, str) else json.dumps(params)}
    with server.client() as client:
        if file is None:
            return client.post(endpoint, params=query, data=data)
        with open(file, "rb") as handle:
            return client.post(endpoint, params=query, data=data, files={"datapoint": (file.name, handle)})


def result_of(response: httpx.Response) -> tuple[np.ndarray, np.ndarray, dict]:
    assert response.status_code == 200, response.text
    result = parse_multipart(response.headers["content-type"], response.content)
    array, affine = decode_result(result.image, ImageFormat.NIFTI_GZ)
    return np.asarray(array), affine, result.params


def pick(scene: Scene, rank: int = 0) -> np.ndarray:
    """The `rank`-th largest object of the scene."""
    order = np.argsort(scene.object_sizes())[::-1]
    return scene.mask(int(order[rank]) + 1)


def client_crop(image: np.ndarray, affine: np.ndarray, mask: np.ndarray, points: list[list[int]],
                pad_mm: float = 20.0, roi: int = 128) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[list[int]]]:
    """What the AIAA Python client does for DExtr3D (protocol 7.2 mode 1), written independently of the server:
    box of the points + pad mm (per axis, clipped), linear resample to roi³, points scaled into the crop."""
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    pts = np.asarray(points, dtype=float)
    lo = np.maximum(pts.min(axis=0) - np.ceil(pad_mm / spacing), 0)
    hi = np.minimum(pts.max(axis=0) + np.ceil(pad_mm / spacing), np.asarray(image.shape) - 1)
    scale = (hi - lo) / (roi - 1)
    crop = ndimage.affine_transform(image.astype(np.float32), scale, offset=lo, output_shape=(roi,) * 3, order=1)
    crop_mask = ndimage.affine_transform(mask.astype(np.float32), scale, offset=lo, output_shape=(roi,) * 3,
                                         order=1) >= 0.5
    crop_affine = affine.copy()
    crop_affine[:3, :3] = affine[:3, :3] @ np.diag(scale)
    crop_affine[:3, 3] = affine[:3, :3] @ lo + affine[:3, 3]
    scaled = np.clip(np.round((pts - lo) / scale), 0, roi - 1).astype(int).tolist()
    return crop, crop_affine, crop_mask, scaled


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def heldout_scene(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Scene]:
    """Tori only (a shape family the models never saw), CT-like anisotropic LPS grid."""
    scene = make_scene(np.random.default_rng(2024), shape=(150, 140, 56), spacing=(0.9, 0.9, 2.5),
                       families=HELDOUT_FAMILIES, lps=True, n_objects=(3, 4))
    path = tmp_path_factory.mktemp("interactive") / "tori.nii.gz"
    return save_nifti(path, scene.image.astype(np.int16), scene.affine), scene


@pytest.fixture(scope="module")
def train_family_scene(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Scene]:
    scene = make_scene(np.random.default_rng(77), shape=(140, 150, 60), spacing=(1.0, 1.0, 2.0),
                       families=TRAIN_FAMILIES, lps=False, n_objects=(3, 5))
    path = tmp_path_factory.mktemp("interactive") / "shapes.nii.gz"
    return save_nifti(path, scene.image.astype(np.int16), scene.affine), scene


# ------------------------------------------------------------------ model list


def test_click_models_are_listed_with_their_protocol_fields(server: LiveServer) -> None:
    with server.client() as client:
        models = {m["name"]: m for m in client.get("/v1/models").json()}
    assert models[DEEPGROW_3D]["type"] == "deepgrow" and models[DEEPGROW_3D]["deepgrow"] == "3D"
    assert models[DEEPGROW_2D]["type"] == "deepgrow" and models[DEEPGROW_2D]["deepgrow"] == "2D"
    annotation = models[DEXTR3D]
    assert annotation["type"] == "annotation"
    assert (annotation["padding"], annotation["roi"], annotation["sigma"]) == (20.0, [128, 128, 128], 3.0)
    assert all("DEMO" in models[name]["description"] for name in (DEEPGROW_3D, DEEPGROW_2D, DEXTR3D))


# ------------------------------------------------------------------ params and errors


@pytest.mark.parametrize("shape", ["flat", "nested", "absent", "no_background", "json_strings"])
def test_deepgrow_3d_param_shapes_all_give_a_mask_on_the_input_grid(server, heldout_scene, shape) -> None:
    path, scene = heldout_scene
    click = first_click(pick(scene))
    params: dict[str, Any] = {"foreground": [click], "background": [[2, 2, 2]]}
    if shape == "flat":
        params["current_point"] = click
    elif shape == "nested":
        params["current_point"] = [click]
    elif shape == "no_background":
        del params["background"]
    elif shape == "json_strings":  # legacy clients send lists as JSON strings
        params = {"foreground": json.dumps([click]), "background": "[]", "current_point": json.dumps([click])}
    array, affine, returned = result_of(post(server, "/v1/deepgrow", DEEPGROW_3D, params, path))
    assert array.shape == scene.image.shape and array.dtype == np.uint8
    np.testing.assert_allclose(affine, scene.affine, atol=1e-4)
    (x0, x1), (y0, y1), (z0, z1) = returned["crop"]
    assert x0 <= click[0] < x1 and y0 <= click[1] < y1 and z0 <= click[2] < z1
    outside = array.copy()
    outside[x0:x1, y0:y1, z0:z1] = 0
    assert not outside.any()  # nothing outside the reported crop
    assert array[tuple(click)] == 1  # the clicked voxel is part of the result


def test_deepgrow_needs_a_click(server, heldout_scene) -> None:
    path, _ = heldout_scene
    response = post(server, "/v1/deepgrow", DEEPGROW_3D, {"foreground": [], "background": []}, path)
    assert response.status_code == 400
    assert "at least one click" in response.json()["detail"]


def test_dextr3d_with_fewer_than_six_points_is_refused(server, heldout_scene) -> None:
    path, scene = heldout_scene
    response = post(server, "/v1/dextr3d", DEXTR3D, {"points": extreme_points(pick(scene))[:5]}, path)
    assert response.status_code == 400
    assert "at least 6" in response.json()["detail"] and "got 5" in response.json()["detail"]


@pytest.mark.parametrize(("endpoint", "model"), [("/v1/dextr3d", DEXTR3D), ("/v1/deepgrow", DEEPGROW_3D),
                                                 ("/v1/deepgrow", DEEPGROW_2D)])
def test_points_outside_the_image_are_refused_naming_the_point(server, heldout_scene, endpoint, model) -> None:
    path, scene = heldout_scene
    bad = [scene.image.shape[0] + 5, 10, 10]
    if model == DEXTR3D:
        params: dict[str, Any] = {"points": extreme_points(pick(scene))[:5] + [bad]}
    else:
        params = {"foreground": [bad], "background": [], "current_point": [bad]}
    response = post(server, endpoint, model, params, path)
    assert response.status_code == 400, response.text
    assert str(bad) in response.json()["detail"] and "outside the image" in response.json()["detail"]


# ------------------------------------------------------------------ 2D


def test_deepgrow_2d_returns_a_full_volume_with_only_the_clicked_slice(server, train_family_scene) -> None:
    path, scene = train_family_scene
    mask = pick(scene)
    z = int(np.argmax(mask.sum(axis=(0, 1))))
    x, y = first_click(mask[..., z])
    params = {"foreground": [[x, y, z]], "background": [], "current_point": [[x, y, z]]}
    array, affine, _ = result_of(post(server, "/v1/deepgrow", DEEPGROW_2D, params, path))
    assert array.shape == scene.image.shape
    np.testing.assert_allclose(affine, scene.affine, atol=1e-4)
    assert np.nonzero(array.any(axis=(0, 1)))[0].tolist() == [z]
    assert dice(array[..., z], mask[..., z]) >= 0.7


# ------------------------------------------------------------------ quality through HTTP


def test_dextr3d_full_volume_and_client_cropped_upload(server, heldout_scene, tmp_path) -> None:
    path, scene = heldout_scene
    mask = pick(scene)
    points = extreme_points(mask)
    array, affine, _ = result_of(post(server, "/v1/dextr3d", DEXTR3D, {"points": points}, path))
    assert array.shape == mask.shape
    np.testing.assert_allclose(affine, scene.affine, atol=1e-4)
    assert dice(array, mask) >= 0.8

    crop, crop_affine, crop_mask, crop_points = client_crop(scene.image, scene.affine, mask, points)
    crop_path = save_nifti(tmp_path / "crop.nii.gz", crop, crop_affine)
    array, affine, _ = result_of(post(server, "/v1/dextr3d", DEXTR3D, {"points": crop_points}, crop_path))
    assert array.shape == (128, 128, 128)  # exactly the grid the client sent
    np.testing.assert_allclose(affine, crop_affine, atol=1e-4)
    assert dice(array, crop_mask) >= 0.8


def three_click_scores(server: LiveServer, path: Path, scene: Scene) -> list[float]:
    """Upload once (PUT /session/), then 3 DeepGrow 3D clicks via session_id; Dice after each click."""
    mask = pick(scene)
    with server.client() as client, open(path, "rb") as handle:
        created = client.put("/session/", params={"expiry": "600"}, files={"image": (path.name, handle)})
    assert created.status_code == 200, created.text
    session_id = created.json()["session_id"]
    clicks = Clicks(foreground=[first_click(mask)], current=first_click(mask))
    scores = []
    for _ in range(3):
        array, _, _ = result_of(post(server, "/v1/deepgrow", DEEPGROW_3D, clicks.params(), session_id=session_id))
        assert array.shape == mask.shape
        scores.append(dice(array, mask))
        correction = next_click(mask, array > 0, spacing=scene.spacing)
        if correction is None:
            break
        (clicks.foreground if correction[0] else clicks.background).append(correction[1])
        clicks.current = correction[1]
    return scores


def test_deepgrow_3d_three_clicks_on_a_fresh_scene_via_a_session(server, train_family_scene) -> None:
    """A scene never used in training (training shape families): the project target, Dice ≥ 0.85 after 3 clicks."""
    path, scene = train_family_scene
    scores = three_click_scores(server, path, scene)
    assert scores[-1] >= 0.85, scores


def test_deepgrow_3d_finds_a_heldout_shape_via_a_session(server, heldout_scene) -> None:
    """Tori were never trained on. The demo model is well below the 0.85 target there (mean 0.47 after 3 clicks
    since its training on real label maps, models/demo_deepgrow_3d/docs/Readme.md), but three clicks must still
    find most of the clicked structure."""
    path, scene = heldout_scene
    scores = three_click_scores(server, path, scene)
    assert scores[-1] >= 0.6, scores


def test_clicks_on_a_session_do_not_rewrite_its_meta_json(server, heldout_scene) -> None:
    """Each click renews the session's expiry in memory; meta.json is written again only once a tenth of the
    expiry (here 6 minutes) has passed since creation, or at shutdown (tests/api/test_sessions_api.py)."""
    path, scene = heldout_scene
    with server.client() as client, open(path, "rb") as handle:
        created = client.put("/session/", files={"image": (path.name, handle)}).json()
    meta = server.workspace / "sessions" / created["session_id"] / "meta.json"
    written, stamp = meta.read_bytes(), meta.stat().st_mtime_ns
    click = first_click(pick(scene))
    for endpoint, model, params in [
        ("/v1/deepgrow", DEEPGROW_3D, {"foreground": [click], "current_point": click}),
        ("/v1/deepgrow", DEEPGROW_2D, {"foreground": [click], "current_point": [click]}),
        ("/v1/dextr3d", DEXTR3D, {"points": extreme_points(pick(scene))}),
    ]:
        response = post(server, endpoint, model, params, session_id=created["session_id"])
        assert response.status_code == 200, response.text
    with server.client() as client:
        last_access = client.get(f"/session/{created['session_id']}").json()["last_access_ts"]
    assert last_access > created["session_info"]["last_access_ts"]  # the clicks did renew the session
    assert meta.read_bytes() == written and meta.stat().st_mtime_ns == stamp

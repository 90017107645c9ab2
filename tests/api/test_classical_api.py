"""The weight-free DeepGrow model `classical_region_grow` end to end through the real server: listed like any
DeepGrow 3D model, clicked on a synthetic abdominal CT by upload and by session, its errors as 4xx JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import nibabel as nib
import numpy as np
import pytest

from aiaa_demo.phantoms import ORGAN_LABELS, Phantom, make_abdomen_phantom, save_nifti
from aiaa_server.imaging.formats import ImageFormat
from aiaa_server.imaging.io import decode_result
from tests.support.multipart import parse_multipart
from tests.support.server import LiveServer
from tests.support.volumes import dice, interior_click

MODEL = "classical_region_grow"


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> tuple[Phantom, Path]:
    phantom = make_abdomen_phantom(np.random.default_rng(0))
    return phantom, save_nifti(phantom, tmp_path_factory.mktemp("classical") / "ct.nii.gz")


def click_on(phantom: Phantom, organ: str) -> list[int]:
    return interior_click(phantom.image, phantom.labels == ORGAN_LABELS[organ], phantom.spacing)


def deepgrow(server: LiveServer, params: dict[str, Any], file: Path | None = None, session_id: str | None = None,
             endpoint: str = "/v1/deepgrow") -> httpx.Response:
    query = {"model": MODEL, **({"session_id": session_id} if session_id else {})}
    data = {"params": json.dumps(params)}
    with server.client() as client:
        if file is None:
            return client.post(endpoint, params=query, data=data)
        with open(file, "rb") as handle:
            return client.post(endpoint, params=query, data=data, files={"datapoint": (file.name, handle)})


def mask_of(response: httpx.Response, reference: Path) -> tuple[np.ndarray, dict[str, Any]]:
    assert response.status_code == 200, response.text
    result = parse_multipart(response.headers["content-type"], response.content)
    mask, affine = decode_result(result.image, ImageFormat.NIFTI_GZ)
    image = nib.load(str(reference))
    assert mask.shape == image.shape
    np.testing.assert_allclose(affine, image.affine, atol=1e-5)
    assert set(np.unique(mask)) <= {0, 1}
    return np.asarray(mask), result.params


def assert_refused(response: httpx.Response, status: int, *words: str) -> None:
    assert response.status_code == status, response.text[:500]
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["code"] and all(word in body["detail"] for word in words), body


def test_listed_as_a_deepgrow_3d_model(server: LiveServer) -> None:
    with server.client() as client:
        listed = {m["name"]: m for m in client.get("/v1/models", params={"type": "deepgrow"}).json()}
        one = client.get("/v1/models", params={"model": MODEL}).json()
    assert listed[MODEL]["type"] == "deepgrow" and listed[MODEL]["deepgrow"] == "3D"
    assert "demo_deepgrow_3d" in listed  # served beside the network model, like it
    assert one["name"] == MODEL and one["labels"] == [] and isinstance(one["version"], str)


@pytest.mark.parametrize("organ", ["spleen", "liver", "left_kidney"])
def test_one_click_by_upload(server: LiveServer, phantom: tuple[Phantom, Path], organ: str) -> None:
    volume, path = phantom
    click = click_on(volume, organ)
    mask, params = mask_of(deepgrow(server, {"foreground": [click], "background": [], "current_point": click}, path),
                           path)
    assert mask[tuple(click)] == 1
    assert dice(mask, volume.labels == ORGAN_LABELS[organ]) > 0.88, organ
    assert len(params["crop"]) == 3


def test_clicks_on_a_session(server: LiveServer, phantom: tuple[Phantom, Path]) -> None:
    volume, path = phantom
    with server.client() as client, open(path, "rb") as handle:
        created = client.put("/session/", params={"expiry": "600"}, files={"image": (path.name, handle)})
    assert created.status_code == 200, created.text
    session_id = created.json()["session_id"]
    spleen, liver = click_on(volume, "spleen"), click_on(volume, "liver")
    first, _ = mask_of(deepgrow(server, {"foreground": [spleen], "current_point": [spleen]},
                                session_id=session_id), path)
    assert dice(first, volume.labels == ORGAN_LABELS["spleen"]) > 0.88
    # a background click on another organ changes nothing that was right; the liver on the same session
    second, _ = mask_of(deepgrow(server, {"foreground": [spleen], "background": [liver], "current_point": [liver]},
                                 session_id=session_id), path)
    assert dice(second, volume.labels == ORGAN_LABELS["spleen"]) > 0.88 and second[tuple(liver)] == 0
    third, _ = mask_of(deepgrow(server, {"foreground": [liver]}, session_id=session_id), path)
    assert dice(third, volume.labels == ORGAN_LABELS["liver"]) > 0.88
    # /v1/inference serves it too, with the same params
    fourth, _ = mask_of(deepgrow(server, {"foreground": [liver]}, session_id=session_id, endpoint="/v1/inference"),
                        path)
    np.testing.assert_array_equal(fourth, third)
    with server.client() as client:
        assert client.delete(f"/session/{session_id}").status_code == 200


def test_errors_are_4xx_json(server: LiveServer, phantom: tuple[Phantom, Path]) -> None:
    volume, path = phantom
    outside = [volume.shape[0], 5, 5]
    assert_refused(deepgrow(server, {"foreground": [outside]}, path), 400, "outside the image")
    assert_refused(deepgrow(server, {"foreground": [[1, 2, 3]], "background": [[-1, 0, 0]]}, path), 400, "outside")
    assert_refused(deepgrow(server, {"foreground": [], "background": []}, path), 400, "at least one click")
    assert_refused(deepgrow(server, {"foreground": [[1, 2, 3]]}, path, endpoint="/v1/segmentation"), 400,
                   "deepgrow model")
    assert_refused(deepgrow(server, {"foreground": [[1, 2, 3]]}, session_id="00000000-0000-0000-0000-000000000000"),
                   440)

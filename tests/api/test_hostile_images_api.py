"""Hostile images end to end through the real server (security issue): each is answered with a 400/413 JSON
`detail` naming the problem or the limit (never a 500, a hang or a big allocation), and the server still
answers afterwards."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from tests.imaging.test_limits import nan_affine_nifti, nifti_gz_claiming, nrrd_bytes, rgb24_nifti, write
from tests.imaging.test_png import png_header_claiming
from tests.support.server import LiveServer


def post(server: LiveServer, path: str, file: Path, params: object = None, **query: str) -> httpx.Response:
    with server.client() as client, open(file, "rb") as handle:
        return client.post(path, params=query, data={"params": json.dumps(params or {})},
                           files={"datapoint": (file.name, handle)})


def put_session(server: LiveServer, file: Path) -> httpx.Response:
    with server.client() as client, open(file, "rb") as handle:
        return client.put("/session/", files={"image": (file.name, handle)})


def assert_refused(response: httpx.Response, status: int, *words: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    detail = response.json()["detail"]
    for word in words:
        assert word in detail, detail


def hostile_files(folder: Path) -> dict[str, tuple[Path, int, tuple[str, ...]]]:
    """name → (file, expected status, words the detail must hold)."""
    import zipfile

    bomb_zip = folder / "zeros.zip"
    with zipfile.ZipFile(bomb_zip, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("x.dcm", b"\0" * 30 * 2**20)
    return {
        "nrrd /dev/zero gzip": (write(folder / "zero.nrrd", nrrd_bytes(
            {"encoding": "gzip"}, extra_lines="data file: /dev/zero\n")), 400, ("detached NRRD",)),
        "nrrd /etc/passwd": (write(folder / "passwd.nrrd", nrrd_bytes(
            {"sizes": "100 1 1"}, extra_lines="data file: /etc/passwd\n")), 400, ("detached NRRD",)),
        "nrrd line skip": (write(folder / "skip.nrrd", nrrd_bytes(
            {"line skip": "100000000"}, data=b"\0" * 24)), 400, ("line skip",)),
        "nifti 40000 cubed": (write(folder / "huge.nii.gz", nifti_gz_claiming((40000, 40000, 40000))), 413,
                              ("--max_image_voxels",)),
        "nifti nan affine": (nan_affine_nifti(folder / "nan.nii"), 400, ("NaN",)),
        "nifti rgb24": (rgb24_nifti(folder / "rgb.nii.gz"), 400, ("RGB images are not supported",)),
        "png 40000 squared": (write(folder / "bomb.png", png_header_claiming(40000, 40000)), 413,
                              ("--max_png_pixels",)),
        "zip of zeros": (bomb_zip, 413, ("zip bomb",)),
    }


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, int, tuple[str, ...]]]:
    return hostile_files(tmp_path_factory.mktemp("hostile"))


VOLUMES = ["nrrd /dev/zero gzip", "nrrd /etc/passwd", "nrrd line skip", "nifti 40000 cubed", "nifti nan affine",
           "nifti rgb24"]


@pytest.mark.parametrize("name", VOLUMES)
def test_segmentation_refuses(server: LiveServer, hostile: dict, name: str) -> None:
    file, status, words = hostile[name]
    assert_refused(post(server, "/v1/segmentation", file, model="test_threshold"), status, *words)


@pytest.mark.parametrize("name", [*VOLUMES, "zip of zeros", "png 40000 squared"])
def test_session_upload_refuses(server: LiveServer, hostile: dict, name: str) -> None:
    file, status, words = hostile[name]
    assert_refused(put_session(server, file), status, *words)


@pytest.mark.parametrize("name", ["png 40000 squared", "nifti 40000 cubed", "nrrd /etc/passwd", "nifti rgb24"])
def test_mask2polygon_refuses(server: LiveServer, hostile: dict, name: str) -> None:
    file, status, words = hostile[name]
    assert_refused(post(server, "/v1/mask2polygon", file), status, *words)


def test_passwd_is_never_echoed(server: LiveServer, hostile: dict) -> None:
    file, _, _ = hostile["nrrd /etc/passwd"]
    response = post(server, "/v1/segmentation", file, model="test_threshold")
    assert "root:" not in response.text and "/etc/passwd" not in response.text


def test_server_still_answers_after_the_hostile_uploads(server: LiveServer, hostile: dict) -> None:
    for name in ("nifti 40000 cubed", "zip of zeros", "png 40000 squared"):
        file, _, _ = hostile[name]
        post(server, "/v1/mask2polygon" if name.startswith("png") else "/v1/segmentation", file,
             model="test_threshold")
    with server.client() as client:
        response = client.get("/v1/models")
    assert response.status_code == 200
    assert any(model["name"] == "test_threshold" for model in response.json())

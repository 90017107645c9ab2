"""MONAI bundles end to end on real servers: a bundle in --models is listed and segments over HTTP exactly as
MONAI's own bundle run does; an uploaded zipped bundle is refused unless --allow_uploaded_code, and served like
any model when it is allowed."""

from __future__ import annotations

import gzip
import io
import zipfile
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.api.test_admin_api import NO_BUNDLED, assert_refused, model_names, upload
from tests.mmar.test_store import zip_folder
from tests.support.bundles import ct_like_image, monai_mask, write_bundle
from tests.support.server import LiveServer, start_server

BUNDLE = "spleen_ct_segmentation"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_bundle(tmp_path_factory.mktemp("models") / BUNDLE, BUNDLE, small=True, seed=7)


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ct_like_image(tmp_path_factory.mktemp("img") / "ct.nii.gz", seed=2)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, bundle: Path) -> Iterator[LiveServer]:
    live = start_server(tmp_path_factory.mktemp("bundle") / "workspace", ["--models", str(bundle.parent)],
                        env=NO_BUNDLED)
    yield live
    live.stop()


def _segment(server: LiveServer, model: str, image: Path) -> np.ndarray:
    with server.client() as client:
        response = client.post("/v1/segmentation", params={"model": model, "output": "image"},
                               files={"datapoint": (image.name, image.read_bytes(), "application/octet-stream")},
                               data={"params": "{}"})
    assert response.status_code == 200, response.text
    return np.asarray(nib.Nifti1Image.from_bytes(_gunzip(response.content)).dataobj)


def _gunzip(payload: bytes) -> bytes:
    return gzip.decompress(payload) if payload[:2] == b"\x1f\x8b" else payload


def test_bundle_is_listed_from_its_metadata(server: LiveServer) -> None:
    with server.client() as client:
        models = {m["name"]: m for m in client.get("/v1/models").json()}
        stored = client.get(f"/admin/model/{BUNDLE}").json()
    entry = models[BUNDLE]
    assert (entry["type"], entry["labels"], entry["version"]) == ("segmentation", ["spleen"], "0.1.0")
    assert entry["description"] == "spleen from CT (random weights)"
    assert stored["format"] == "monai_bundle" and stored["network_data_format"]["outputs"]["pred"]["num_channels"] == 2


def test_mask_over_http_equals_monais_own_run(server: LiveServer, bundle: Path, image: Path, tmp_path: Path) -> None:
    expected = monai_mask(bundle, image, tmp_path)
    served = _segment(server, BUNDLE, image)
    assert served.shape == expected.shape
    assert len(np.unique(expected)) == 2
    assert np.mean(served == expected) >= 0.999


def test_uploaded_bundle_is_refused_without_allowed_code(server: LiveServer, bundle: Path, tmp_path: Path) -> None:
    archive = zip_folder(bundle, tmp_path / "bundle.zip", prefix="my_bundle/")
    with server.client() as client:
        response = upload(client, "uploaded", data=archive.read_bytes(), data_name="bundle.zip")
        assert_refused(response, 422, "invalid_model", "--allow_uploaded_code")
        assert "uploaded" not in model_names(client)


def test_allowed_uploaded_bundle_is_served(tmp_path: Path, bundle: Path, image: Path) -> None:
    archive = zip_folder(bundle, tmp_path / "bundle.zip")
    live = start_server(tmp_path / "workspace", ["--allow_uploaded_code"], env=NO_BUNDLED, wait_ready=False)
    try:
        with live.client() as client:
            response = upload(client, "uploaded", data=archive.read_bytes(), data_name="bundle.zip")
            assert response.status_code == 200, response.text
            assert response.json()["labels"] == ["spleen"]
        expected = _segment(live, "uploaded", image)
        assert expected.shape == nib.load(image).shape
    finally:
        live.stop()
    restarted = start_server(tmp_path / "workspace", ["--allow_uploaded_code"], env=NO_BUNDLED)
    try:
        assert np.array_equal(_segment(restarted, "uploaded", image), expected)  # kept in the store
    finally:
        restarted.stop()


def test_zip_holding_neither_format_names_both(server: LiveServer, tmp_path: Path) -> None:
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("configs/metadata.json", "{}")
    with server.client() as client:
        response = upload(client, "neither", data=archive.getvalue(), data_name="x.zip")
    assert_refused(response, 400, "invalid_archive", "MONAI bundle")

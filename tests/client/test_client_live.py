"""`AIAAClient` against a real aiaa-server process on loopback: every call, its results and its errors."""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
from pathlib import Path

import aiaa_client
import nibabel as nib
import numpy as np
import pytest
from aiaa_client import (
    AIAAClient,
    AIAAConnectionError,
    AIAAError,
    BadRequestError,
    NotFoundError,
    SessionExpiredError,
)

from tests.client.conftest import CLASSIFIER_MODEL, DEEPGROW_MODEL, DEXTR3D_MODEL, SEG_MODEL
from tests.support.server import free_port
from tests.support.volumes import cube_volume

CUBE_POINTS = [[30, 35, 20], [59, 35, 20], [45, 20, 20], [45, 49, 20], [45, 35, 10], [45, 35, 29]]


# ------------------------------------------------------------------ models


def test_models_lists_the_served_models(client):
    models = {m.name: m for m in client.models()}
    assert set(models) == {SEG_MODEL, DEXTR3D_MODEL, DEEPGROW_MODEL, CLASSIFIER_MODEL}
    assert models[SEG_MODEL].type == "segmentation" and models[SEG_MODEL].labels == ["bright"]
    assert models[DEXTR3D_MODEL].type == "annotation"
    assert models[DEEPGROW_MODEL].deepgrow_dims == 3 and models[SEG_MODEL].deepgrow_dims is None
    assert all(isinstance(m.version, str) and m.description for m in models.values())


def test_models_filters(client):
    assert [m.name for m in client.models(type="annotation")] == [DEXTR3D_MODEL]
    assert len(client.models(label="bright")) == 3
    assert client.models(label="no-such-organ") == []
    assert [m.name for m in client.models(label="bright", type="deepgrow")] == [DEEPGROW_MODEL]


def test_model_by_name_and_unknown(client):
    assert client.model(SEG_MODEL).name == SEG_MODEL
    with pytest.raises(NotFoundError) as info:
        client.model("no_such_model")
    assert info.value.status == 404 and "no_such_model" in str(info.value)


# ------------------------------------------------------------------ segmentation / inference


def test_segmentation_from_path_returns_mask_on_input_grid(client, cube, tmp_path):
    path, mask, affine = cube
    output = tmp_path / "out" / "seg.nii.gz"
    result = client.segmentation(SEG_MODEL, path, output=output)
    assert np.array_equal(result.array, mask)
    assert np.allclose(result.affine, affine)
    assert result.params["bbox"] == [[30, 20, 10], [59, 49, 29]]
    assert len(result.points) == 6
    written = nib.load(str(output))
    assert result.path == output
    assert np.array_equal(np.asarray(written.dataobj), mask) and np.allclose(written.affine, affine)


def test_segmentation_from_array_and_plain_nii_output(client, cube, tmp_path):
    _, mask, affine = cube
    image, _ = cube_volume()
    output = tmp_path / "seg.nii"
    result = client.segmentation(SEG_MODEL, (image, affine), output=output)
    assert np.array_equal(result.array, mask) and np.allclose(result.affine, affine)
    assert output.read_bytes()[:2] != b"\x1f\x8b"  # a .nii name gets an uncompressed file
    assert np.array_equal(np.asarray(nib.load(str(output)).dataobj), mask)


def test_inference_endpoint_with_params(client, cube):
    path, mask, affine = cube
    result = client.inference(SEG_MODEL, path, params={"result_dtype": "uint16"})
    assert result.array.dtype == np.uint16
    assert np.array_equal(result.array, mask) and np.allclose(result.affine, affine)


def test_classifier_answers_json_and_no_file(client, cube, tmp_path):
    path, _, _ = cube
    output = tmp_path / "never.nii.gz"
    result = client.inference(CLASSIFIER_MODEL, path, output=output)
    assert not result.has_image and result.path is None and not output.exists()
    assert result.params["model"] == CLASSIFIER_MODEL and result.params["labels"] == ["dim", "lit"]
    assert result.params["prediction"] in ("dim", "lit")
    assert sum(result.params["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match="no image"):
        result.image()
    session = client.create_session(path)
    try:
        again = client.inference(CLASSIFIER_MODEL, session_id=session.session_id)
    finally:
        client.close_session(session.session_id)
    assert again.params["probabilities"] == pytest.approx(result.params["probabilities"])


def test_unknown_model_is_not_found(client, cube):
    path, _, _ = cube
    with pytest.raises(NotFoundError) as info:
        client.segmentation("no_such_model", path)
    assert info.value.status == 404


def test_bad_file_is_bad_request_with_server_detail(client, tmp_path):
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"this is not an image at all" * 10)
    with pytest.raises(BadRequestError) as info:
        client.segmentation(SEG_MODEL, bad)
    assert 400 <= info.value.status < 500 and info.value.status not in (404, 440)
    detail = json.loads(info.value.body)["detail"]
    assert detail and detail in str(info.value)


def test_model_of_the_wrong_type_for_the_endpoint(client, cube):
    path, _, _ = cube
    with pytest.raises(BadRequestError, match="annotation"):
        client.segmentation(DEXTR3D_MODEL, path)


def test_missing_local_file(client, tmp_path):
    with pytest.raises(FileNotFoundError):
        client.segmentation(SEG_MODEL, tmp_path / "nope.nii.gz")


def test_connection_refused_is_a_connection_error():
    client = AIAAClient(f"http://127.0.0.1:{free_port()}", timeout=5)
    with pytest.raises(aiaa_client.ConnectionError) as info:
        client.models()
    assert isinstance(info.value, AIAAConnectionError) and isinstance(info.value, AIAAError)
    assert info.value.status is None


# ------------------------------------------------------------------ interactive


def test_dextr3d_client_side_crop(client, cube, tmp_path):
    path, mask, affine = cube
    result = client.dextr3d(DEXTR3D_MODEL, path, points=CUBE_POINTS, output=tmp_path / "d.nii.gz")
    assert result.array.shape == mask.shape
    assert np.array_equal(result.array, mask)
    assert np.allclose(result.affine, affine)
    written = nib.load(str(tmp_path / "d.nii.gz"))
    assert np.array_equal(np.asarray(written.dataobj), mask) and np.allclose(written.affine, affine)


def test_dextr3d_server_side_crop(client, cube):
    path, mask, affine = cube
    result = client.dextr3d(DEXTR3D_MODEL, path, points=CUBE_POINTS, server_crop=True)
    assert np.array_equal(result.array, mask) and np.allclose(result.affine, affine)


def test_dextr3d_needs_six_points(client, cube):
    path, _, _ = cube
    with pytest.raises(ValueError, match="6 points"):
        client.dextr3d(DEXTR3D_MODEL, path, points=CUBE_POINTS[:5])


def test_deepgrow(client, cube):
    path, mask, affine = cube
    result = client.deepgrow(DEEPGROW_MODEL, path, foreground=[[40, 30, 15]], background=[[5, 5, 5]],
                             current_point=[40, 30, 15], spatial_size=[64, 64, 32])
    assert np.array_equal(result.array, mask) and np.allclose(result.affine, affine)


def test_deepgrow_without_clicks_is_refused_by_the_server(client, cube):
    path, _, _ = cube
    with pytest.raises(BadRequestError, match="click"):
        client.deepgrow(DEEPGROW_MODEL, path)


# ------------------------------------------------------------------ sessions


def test_unknown_session_is_440(client):
    with pytest.raises(SessionExpiredError) as info:
        client.segmentation(SEG_MODEL, session_id="00000000-dead-beef-0000-000000000000")
    assert info.value.status == 440


def test_session_lifecycle(client, cube):
    path, mask, affine = cube
    session = client.create_session(path, expiry=120)
    assert session.session_id
    info = client.get_session(session.session_id)
    assert isinstance(info, dict) and info

    result = client.segmentation(SEG_MODEL, session_id=session.session_id)
    assert np.array_equal(result.array, mask) and np.allclose(result.affine, affine)
    grown = client.deepgrow(DEEPGROW_MODEL, session_id=session.session_id, foreground=[[40, 30, 15]])
    assert np.array_equal(grown.array, mask)
    server_crop = client.dextr3d(DEXTR3D_MODEL, session_id=session.session_id, points=CUBE_POINTS)
    assert np.array_equal(server_crop.array, mask)

    client.close_session(session.session_id)
    with pytest.raises(NotFoundError):
        client.get_session(session.session_id)
    with pytest.raises(SessionExpiredError):
        client.segmentation(SEG_MODEL, session_id=session.session_id)
    with pytest.raises(NotFoundError):
        client.close_session(session.session_id)


# ------------------------------------------------------------------ polygons


def test_mask2polygon(client, cube, tmp_path):
    _, mask, affine = cube
    polygons = client.mask2polygon((mask, affine), more_points=10)
    assert len(polygons) == mask.shape[2]  # one entry per z slice
    for z, slice_polygons in enumerate(polygons):
        if 10 <= z < 30:
            assert len(slice_polygons) == 1
            xs = [p[0] for p in slice_polygons[0]]
            ys = [p[1] for p in slice_polygons[0]]
            assert 29 <= min(xs) <= 30 and 59 <= max(xs) <= 60
            assert 19 <= min(ys) <= 20 and 49 <= max(ys) <= 50
        else:
            assert slice_polygons == []


def write_png(path: Path, array: np.ndarray) -> Path:
    from PIL import Image

    Image.fromarray(array.astype(np.uint8)).save(path)
    return path


def test_fixpolygon_2d_moves_the_vertex(client, tmp_path):
    image = np.zeros((64, 64), np.uint8)
    image[16:48, 16:48] = 200
    png = write_png(tmp_path / "slice.png", image)
    square = [[16, 16], [47, 16], [47, 47], [16, 47]]
    output = tmp_path / "fixed.png"
    fixed = client.fixpolygon(png, poly=[square], vertex_offset=[-6, -4], polygon_index=0, vertex_index=0,
                              propagate_neighbor=0, dimension=2, output=output)
    assert fixed.poly[0][0] == [10, 12]
    assert fixed.poly[0][2] == [47, 47]
    assert output.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------ admin


def segment_with(client: AIAAClient, name: str, cube) -> np.ndarray:
    path, _, _ = cube
    return np.asarray(client.segmentation(name, path).array)


def test_admin_upload_folder_get_config_and_delete(admin, client, mmar_source, cube):
    name = "uploaded_from_folder"
    admin.upload_model(name, mmar_source)
    assert name in {m.name for m in client.models()}
    assert np.array_equal(segment_with(client, name, cube), cube[1])
    config = admin.get_model_config(name)
    assert config["type"] == "segmentation" and config["labels"] == ["bright"]
    admin.delete_model(name)
    with pytest.raises(NotFoundError):
        client.model(name)
    with pytest.raises(NotFoundError):
        admin.delete_model(name)


@pytest.mark.parametrize("kind", ["zip", "tar.gz", "config+model"])
def test_admin_upload_forms(admin, client, mmar_source, cube, tmp_path, kind):
    name = f"uploaded_{kind.replace('.', '_').replace('+', '_')}"
    if kind == "zip":
        archive = tmp_path / "m.zip"
        with zipfile.ZipFile(archive, "w") as z:
            for f in sorted(mmar_source.rglob("*")):
                if f.is_file():
                    z.write(f, f.relative_to(mmar_source).as_posix())
        admin.upload_model(name, archive)
    elif kind == "tar.gz":
        archive = tmp_path / "m.tar.gz"
        with tarfile.open(archive, "w:gz") as t:
            for sub in ("config", "models"):
                t.add(mmar_source / sub, arcname=sub)
        admin.upload_model(name, archive)
    else:
        admin.upload_model(name, config=mmar_source / "config" / "config_aiaa.json",
                           model_file=mmar_source / "models" / "model.ts")
    try:
        assert client.model(name).type == "segmentation"
        assert np.array_equal(segment_with(client, name, cube), cube[1])
    finally:
        admin.delete_model(name)


def test_admin_needs_the_token(client, live, mmar_source):
    for anonymous in (client, AIAAClient(live.base_url, admin_token="wrong-token")):
        with pytest.raises(BadRequestError) as info:
            anonymous.upload_model("sneaky", mmar_source)
        assert info.value.status in (401, 403)
        with pytest.raises(BadRequestError) as info:
            anonymous.delete_model(SEG_MODEL)
        assert info.value.status in (401, 403)
    assert "sneaky" not in {m.name for m in client.models()}
    assert SEG_MODEL in {m.name for m in client.models()}


def test_admin_rejects_a_broken_archive(admin, tmp_path):
    junk = tmp_path / "junk.zip"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("readme.txt", "no MMAR here")
    junk.write_bytes(buffer.getvalue())
    with pytest.raises(BadRequestError):
        admin.upload_model("junk_model", junk)
    with pytest.raises(NotFoundError):
        admin.get_model_config("junk_model")

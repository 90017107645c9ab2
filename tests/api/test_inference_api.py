"""POST /v1/segmentation and /v1/inference end to end through the real server (protocol 3, 4, 7.1, 7.4)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from aiaa_server.imaging.formats import ImageFormat
from aiaa_server.imaging.io import decode_result
from tests.support.multipart import parse_multipart
from tests.support.server import LiveServer
from tests.support.volumes import cube_volume, dice, lps_affine, save_nifti


def _post(server: LiveServer, path: str, file_path: Path, part: str = "datapoint", params: object = "{}",
          filename: str | None = None, **query: str):
    with server.client() as client, open(file_path, "rb") as handle:
        data = {} if params is None else {"params": params if isinstance(params, str) else json.dumps(params)}
        return client.post(path, params=query, data=data, files={part: (filename or file_path.name, handle)})


def test_default_response_is_fixed_length_multipart(server: LiveServer, cube_nifti) -> None:
    path, mask, _affine = cube_nifti
    response = _post(server, "/v1/segmentation", path, model="test_threshold")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("multipart/form-data; boundary=")
    assert int(response.headers["content-length"]) == len(response.content)
    assert "transfer-encoding" not in response.headers
    assert "content-encoding" not in response.headers
    assert response.content.startswith(b"--")
    result = parse_multipart(response.headers["content-type"], response.content)
    assert isinstance(result.params, dict)
    assert result.filename.endswith(".nii.gz")
    array, result_affine = decode_result(result.image, ImageFormat.NIFTI_GZ)
    assert array.shape == mask.shape
    assert array.dtype == np.uint8
    np.testing.assert_allclose(result_affine, nib.load(str(path)).affine, atol=1e-5)
    assert dice(array, mask) > 0.9  # the model resamples to 2 mm internally; the mask comes back on our grid


def test_points_and_bbox_are_voxel_extremes_of_the_mask(server: LiveServer, cube_nifti) -> None:
    path, _, _ = cube_nifti
    response = _post(server, "/v1/segmentation", path, model="test_threshold")
    result = parse_multipart(response.headers["content-type"], response.content)
    array, _ = decode_result(result.image, ImageFormat.NIFTI_GZ)
    points = result.params["points"]
    assert len(points) == 6
    assert all(isinstance(c, int) for p in points for c in p)
    assert all(array[tuple(p)] == 1 for p in points)  # [x, y, z] indexes the array directly
    foreground = np.argwhere(array > 0)
    assert result.params["bbox"] == [foreground.min(axis=0).tolist(), foreground.max(axis=0).tolist()]
    for axis in range(3):
        assert min(p[axis] for p in points) == foreground[:, axis].min()
        assert max(p[axis] for p in points) == foreground[:, axis].max()


def test_native_grid_model_is_exact(server: LiveServer, cube_nifti) -> None:
    path, mask, _ = cube_nifti
    response = _post(server, "/v1/inference", path, model="test_threshold_native", output="image")
    assert response.status_code == 200
    array, _ = decode_result(response.content, ImageFormat.NIFTI_GZ)
    np.testing.assert_array_equal(array, mask)


def test_image_accepted_under_any_part_name_and_path_style(server: LiveServer, cube_nifti) -> None:
    path, mask, _ = cube_nifti
    for part, filename in (("image", "cube.nii.gz"), ("file", r"C:\Users\me\scans\cube.nii.gz"),
                           ("image0", "/tmp/tmpab12cd.nii.gz")):
        response = _post(server, "/v1/segmentation", path, part=part, filename=filename, model="test_threshold_native",
                         output="image")
        assert response.status_code == 200, (part, response.text)
        assert np.array_equal(decode_result(response.content, ImageFormat.NIFTI_GZ)[0], mask)


@pytest.mark.parametrize("params", [None, "", "null", "{}", {"unused": "[1, 2, 3]"}])
def test_lenient_params(server: LiveServer, cube_nifti, params) -> None:
    path, _, _ = cube_nifti
    response = _post(server, "/v1/segmentation", path, params=params, model="test_threshold_native")
    assert response.status_code == 200, response.text
    assert isinstance(parse_multipart(response.headers["content-type"], response.content).params, dict)


def test_output_json_and_image_modes(server: LiveServer, cube_nifti) -> None:
    path, mask, _ = cube_nifti
    as_json = _post(server, "/v1/segmentation", path, model="test_threshold_native", output="json")
    assert as_json.headers["content-type"].startswith("application/json")
    assert len(as_json.json()["points"]) == 6
    as_image = _post(server, "/v1/segmentation", path, model="test_threshold_native", output="image")
    assert as_image.content[:2] == b"\x1f\x8b"
    assert np.array_equal(decode_result(as_image.content, ImageFormat.NIFTI_GZ)[0], mask)


def test_result_options_give_gzip_nrrd_uint16(server: LiveServer, cube_nifti) -> None:
    path, mask, _affine = cube_nifti
    params = {"result_extension": ".nrrd", "result_dtype": "uint16", "result_compress": True}
    response = _post(server, "/v1/segmentation", path, params=params, model="test_threshold_native", output="image")
    assert response.status_code == 200
    assert response.content.startswith(b"NRRD0004")
    header = response.content.split(b"\n\n", 1)[0].decode()
    assert "type: uint16" in header and "encoding: gzip" in header
    array, result_affine = decode_result(response.content, ImageFormat.NRRD)
    assert array.dtype == np.uint16
    np.testing.assert_array_equal(array, mask)
    np.testing.assert_allclose(result_affine, nib.load(str(path)).affine, atol=1e-5)


def test_uncompressed_nifti_in_gives_nii_out(server: LiveServer, tmp_path: Path) -> None:
    image, mask = cube_volume()
    path = save_nifti(tmp_path / "cube.nii", image, lps_affine((1.0, 1.0, 2.0)))
    response = _post(server, "/v1/segmentation", path, model="test_threshold_native")
    result = parse_multipart(response.headers["content-type"], response.content)
    assert result.filename.endswith(".nii")
    assert result.image[:2] != b"\x1f\x8b"
    assert np.array_equal(decode_result(result.image, ImageFormat.NIFTI)[0], mask)


def test_slicer_uncompressed_file_named_nii_gz_is_read(server: LiveServer, tmp_path: Path) -> None:
    image, mask = cube_volume()
    plain = save_nifti(tmp_path / "cube.nii", image, lps_affine((1.0, 1.0, 2.0)))
    response = _post(server, "/v1/segmentation", plain, filename="cube.nii.gz", model="test_threshold_native",
                     output="image")
    assert response.status_code == 200, response.text
    assert np.array_equal(decode_result(response.content, ImageFormat.NIFTI)[0], mask)


def test_nrrd_input_gives_nrrd_output_on_same_geometry(server: LiveServer, tmp_path: Path) -> None:
    import nrrd

    image, mask = cube_volume()
    directions = np.array([[0.7, 0.0, 0.0], [0.0, 0.7, 0.0], [0.0, 0.0, 3.0]])
    path = tmp_path / "cube.nrrd"
    nrrd.write(str(path), image, {"space": "left-posterior-superior", "space directions": directions,
                                  "space origin": np.array([-120.0, -90.0, 33.0]), "encoding": "gzip"})
    response = _post(server, "/v1/segmentation", path, model="test_threshold")
    assert response.status_code == 200, response.text
    result = parse_multipart(response.headers["content-type"], response.content)
    assert result.filename.endswith(".nrrd")
    array, affine = decode_result(result.image, ImageFormat.NRRD)
    expected_affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.block([[directions.T, np.array([[-120.0], [-90.0], [33.0]])],
                                                                  [np.zeros((1, 3)), np.ones((1, 1))]])
    np.testing.assert_allclose(affine, expected_affine, atol=1e-6)
    assert array.shape == mask.shape
    assert dice(array, mask) > 0.9


def test_inference_passes_params_and_serves_any_type(server: LiveServer, cube_nifti) -> None:
    path, mask, _ = cube_nifti
    response = _post(server, "/v1/inference", path, params={"anything": [1, 2]}, model="test_threshold_native")
    assert response.status_code == 200
    result = parse_multipart(response.headers["content-type"], response.content)
    assert np.array_equal(decode_result(result.image, ImageFormat.NIFTI_GZ)[0], mask)


# --- bad input: a clear 4xx JSON error, and the server keeps serving ---------------------------------------------


def _assert_error(response, status: int, *words: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert isinstance(body["detail"], str)
    for word in words:
        assert word.lower() in body["detail"].lower(), body


def test_non_image_upload_is_400(server: LiveServer, tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("this is not an image")
    _assert_error(_post(server, "/v1/segmentation", text, model="test_threshold"), 400, "not a recognised image")
    fake = tmp_path / "fake.nii.gz"
    fake.write_text("not gzip at all, just text pretending to be a volume" * 20)
    _assert_error(_post(server, "/v1/segmentation", fake, model="test_threshold"), 400, "fake.nii.gz")


def test_truncated_nii_gz_is_400(server: LiveServer, cube_nifti, tmp_path: Path) -> None:
    path, _, _ = cube_nifti
    truncated = tmp_path / "truncated.nii.gz"
    payload = path.read_bytes()
    truncated.write_bytes(payload[: len(payload) // 2])
    _assert_error(_post(server, "/v1/segmentation", truncated, model="test_threshold"), 400, "could not decode")
    # a complete gzip stream of a NIfTI whose voxel data is cut short
    short = tmp_path / "short.nii.gz"
    short.write_bytes(gzip.compress(gzip.decompress(payload)[:5000]))
    _assert_error(_post(server, "/v1/segmentation", short, model="test_threshold"), 400, "could not decode")


def test_2d_image_to_3d_model_is_422(server: LiveServer, tmp_path: Path) -> None:
    path = save_nifti(tmp_path / "slice.nii.gz", np.zeros((64, 64), dtype=np.int16), np.eye(4))
    _assert_error(_post(server, "/v1/segmentation", path, model="test_threshold"), 422, "3D")


def test_missing_and_unknown_model(server: LiveServer, cube_nifti) -> None:
    path, _, _ = cube_nifti
    _assert_error(_post(server, "/v1/segmentation", path), 400, "model")  # a bad request, not an unknown model
    _assert_error(_post(server, "/v1/segmentation", path, model="nope"), 404, "nope")


@pytest.mark.parametrize(
    ("params", "word"),
    [
        ('{"broken json', "not valid json"),
        ("[1, 2, 3]", "json object"),
        ({"result_dtype": "complex128"}, "result_dtype"),
        ({"result_dtype": 5}, "result_dtype"),
        ({"result_compress": "maybe"}, "result_compress"),
        ({"result_extension": ".exe"}, "result_extension"),
    ],
)
def test_bad_params_are_400(server: LiveServer, cube_nifti, params, word: str) -> None:
    path, _, _ = cube_nifti
    _assert_error(_post(server, "/v1/segmentation", path, params=params, model="test_threshold"), 400, word)


def test_missing_image_and_bad_output_mode(server: LiveServer) -> None:
    with server.client() as client:
        no_file = client.post("/v1/segmentation", params={"model": "test_threshold"}, data={"params": "{}"})
        bad_output = client.post("/v1/segmentation", params={"model": "test_threshold", "output": "pdf"},
                                 data={"params": "{}"})
        garbage = client.post("/v1/segmentation", params={"model": "test_threshold"}, content=b"\x00\x01garbage",
                              headers={"content-type": "multipart/form-data; boundary=zzz"})
    _assert_error(no_file, 400, "no image")
    _assert_error(bad_output, 400, "output")
    assert garbage.status_code == 400
    assert "detail" in garbage.json()


def test_wrong_endpoint_for_model_type_is_400(server: LiveServer, cube_nifti) -> None:
    path, _, _ = cube_nifti
    _assert_error(_post(server, "/v1/dextr3d", path, params={"points": [[1, 2, 3]] * 6}, model="test_threshold"),
                  400, "segmentation model")


def test_server_keeps_serving_after_errors(server: LiveServer, cube_nifti, tmp_path: Path) -> None:
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"\x1f\x8b" + b"\x00" * 100)
    for _ in range(3):
        assert _post(server, "/v1/segmentation", bad, model="test_threshold").status_code == 400
    path, mask, _ = cube_nifti
    response = _post(server, "/v1/segmentation", path, model="test_threshold_native", output="image")
    assert response.status_code == 200
    assert np.array_equal(decode_result(response.content, ImageFormat.NIFTI_GZ)[0], mask)
    assert server.process.poll() is None

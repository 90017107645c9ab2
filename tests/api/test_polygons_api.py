"""`/v1/mask2polygon` and `/v1/fixpolygon` end to end (protocol 7.5, 7.6)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from aiaa_server.imaging.formats import ImageFormat
from aiaa_server.imaging.io import decode_result
from aiaa_server.imaging.png import decode_png, encode_png
from tests.support.multipart import parse_multipart
from tests.support.server import LiveServer
from tests.support.volumes import lps_affine, save_nifti


def post(server: LiveServer, path: str, file: Path, params: dict, filename: str | None = None):
    with server.client() as client, open(file, "rb") as handle:
        return client.post(path, data={"params": json.dumps(params)},
                           files={"datapoint": (filename or file.name, handle)})


def known_mask() -> np.ndarray:
    mask = np.zeros((50, 40, 12), dtype=np.uint8)
    mask[10:30, 5:25, 3:7] = 1  # a box on slices 3..6
    mask[38:45, 30:36, 5] = 1  # a second object on slice 5 only
    return mask


def test_mask2polygon_known_mask(server: LiveServer, tmp_path: Path) -> None:
    mask = known_mask()
    path = save_nifti(tmp_path / "mask.nii.gz", mask, lps_affine((1.0, 1.0, 2.0)))
    response = post(server, "/v1/mask2polygon", path, {"more_points": 10})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    slices = response.json()
    assert len(slices) == 12
    assert [len(s) for s in slices] == [0, 0, 0, 1, 1, 2, 1, 0, 0, 0, 0, 0]
    for z, polygons in enumerate(slices):
        edge = mask[:, :, z].astype(bool) & ~ndimage.binary_erosion(mask[:, :, z].astype(bool))
        for polygon in polygons:
            assert all(isinstance(c, int) for v in polygon for c in v)
            assert all(edge[x, y] for x, y in polygon), f"slice {z}: vertex off the boundary"
    assert sorted(map(tuple, slices[3][0])) == [(10, 5), (10, 24), (29, 5), (29, 24)]  # [x, y] corners


def test_mask2polygon_defaults_and_more_points(server: LiveServer, tmp_path: Path) -> None:
    mask = np.zeros((40, 40, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:40, 0:40]
    mask[(xx - 20) ** 2 + (yy - 20) ** 2 < 150, 1] = 1
    path = save_nifti(tmp_path / "disk.nii", mask, np.eye(4))
    few = post(server, "/v1/mask2polygon", path, {"more_points": 2}).json()
    default = post(server, "/v1/mask2polygon", path, {}).json()
    many = post(server, "/v1/mask2polygon", path, {"more_points": 100}).json()
    assert len(few[1][0]) < len(default[1][0]) <= len(many[1][0])


def test_fixpolygon_2d_png(server: LiveServer, tmp_path: Path) -> None:
    image = (np.arange(48 * 64).reshape(48, 64) % 251).astype(np.uint8)  # 48 rows (y) × 64 columns (x)
    path = tmp_path / "slice.png"
    path.write_bytes(encode_png(image))
    square = [[10, 10], [10, 30], [30, 30], [30, 10]]
    params = {"poly": [square], "vertex_offset": [20, 5], "dimension": 2, "polygon_index": 0, "vertex_index": 2,
              "propagate_neighbor": 0}
    response = post(server, "/v1/fixpolygon", path, params)
    assert response.status_code == 200, response.text
    result = parse_multipart(response.headers["content-type"], response.content)
    assert result.params == {"poly": [[[10, 10], [10, 30], [50, 35], [30, 10]]]}
    assert result.filename.endswith(".png")
    mask = decode_png(result.image)
    assert mask.shape == (48, 64)
    assert mask[35, 50] == 1 and mask[20, 20] == 1  # [row=y, column=x]: the moved corner, the inside
    assert mask[5, 5] == 0 and mask[35, 55] == 0


def test_fixpolygon_2d_legacy_keys(server: LiveServer, tmp_path: Path) -> None:
    path = tmp_path / "slice.png"
    path.write_bytes(encode_png(np.zeros((40, 40), dtype=np.uint8)))
    square = [[10, 10], [10, 30], [30, 30], [30, 10]]
    params = {"prev_poly": [square], "vertexOffset": [2, 2], "dimension": 2, "polygonIndex": 0, "vertexIndex": 0,
              "propagate_neighbor": 1}
    response = post(server, "/v1/fixpolygon", path, params)
    assert response.status_code == 200, response.text
    result = parse_multipart(response.headers["content-type"], response.content)
    assert result.params["poly"][0][0] == [12, 12]
    assert result.params["poly"][0][1] == [11, 31] and result.params["poly"][0][3] == [31, 11]


def test_fixpolygon_3d_volume(server: LiveServer, tmp_path: Path) -> None:
    shape = (40, 40, 10)
    affine = lps_affine((0.8, 0.8, 3.0))
    path = save_nifti(tmp_path / "volume.nii.gz", np.zeros(shape, dtype=np.int16), affine)
    square = [[10, 10], [10, 20], [20, 20], [20, 10]]
    poly = [[] if z < 2 or z > 7 else [square] for z in range(shape[2])]
    params = {"poly": poly, "vertex_offset": [6, 6], "dimension": 3, "slice_index": 5, "polygon_index": 0,
              "vertex_index": 2, "propagate_neighbor": 0, "propagate_neighbor_3d": 2}
    response = post(server, "/v1/fixpolygon", path, params)
    assert response.status_code == 200, response.text
    result = parse_multipart(response.headers["content-type"], response.content)
    corners = [s[0][2] if s else None for s in result.params["poly"]]
    assert corners == [None, None, [20, 20], [22, 22], [24, 24], [26, 26], [24, 24], [22, 22], None, None]
    assert result.filename.endswith(".nii.gz")
    mask, mask_affine = decode_result(result.image, ImageFormat.NIFTI_GZ)
    np.testing.assert_allclose(mask_affine, nib.load(str(path)).affine, atol=1e-6)
    assert mask.shape == shape
    assert mask[26, 26, 5] == 1 and mask[24, 24, 4] == 1 and mask[22, 22, 3] == 1
    assert mask[25, 25, 4] == 0 and mask[23, 23, 2] == 0 and mask[15, 15, 2] == 1
    assert mask[:, :, :2].sum() == 0 and mask[:, :, 8:].sum() == 0


@pytest.mark.parametrize("params", [
    {"poly": [[[1, 1], [1, 5], [5, 5]]], "dimension": 2, "polygon_index": 3, "vertex_index": 0},
    {"poly": "not a list", "dimension": 2},
    {"dimension": 2},
])
def test_fixpolygon_bad_params_are_400(server: LiveServer, tmp_path: Path, params: dict) -> None:
    path = tmp_path / "slice.png"
    path.write_bytes(encode_png(np.zeros((10, 10), dtype=np.uint8)))
    response = post(server, "/v1/fixpolygon", path, params)
    assert response.status_code == 400, response.text


def test_fixpolygon_drag_past_the_image_border(server: LiveServer, tmp_path: Path) -> None:
    """Vertices may leave the image (up to one image size): the mask is clipped, the polygon kept as moved."""
    path = tmp_path / "slice.png"
    path.write_bytes(encode_png(np.zeros((40, 50), dtype=np.uint8)))  # 40 rows (y) x 50 columns (x)
    square = [[10, 10], [10, 30], [30, 30], [30, 10]]
    params = {"poly": [square], "vertex_offset": [45, 0], "dimension": 2, "vertex_index": 2}
    response = post(server, "/v1/fixpolygon", path, params)
    assert response.status_code == 200, response.text
    result = parse_multipart(response.headers["content-type"], response.content)
    assert result.params["poly"][0][2] == [75, 30]
    mask = decode_png(result.image)
    assert mask.shape == (40, 50) and mask[29, 49] == 1 and mask[5, 5] == 0


@pytest.mark.parametrize("path", ["/v1/mask2polygon", "/v1/fixpolygon"])
def test_no_image_is_400(server: LiveServer, path: str) -> None:
    params = {"poly": [[[1, 1], [1, 5], [5, 5]]], "dimension": 2}
    with server.client() as client:
        response = client.post(path, data={"params": json.dumps(params)})
    assert response.status_code == 400, response.text
    assert response.json()["detail"] == "no image uploaded: send the image as a multipart file part"

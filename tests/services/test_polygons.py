"""mask2polygon and fixpolygon on files, called directly (the HTTP shell: tests/api/test_polygons_api.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from aiaa_server.errors import BadRequest, InvalidImage, InvalidParams
from aiaa_server.imaging.formats import ImageFormat
from aiaa_server.imaging.io import decode_result
from aiaa_server.imaging.limits import DecodeLimits
from aiaa_server.imaging.png import decode_png, encode_png
from aiaa_server.services.inference import ImageUpload
from aiaa_server.services.polygons import PolygonService, fixed_filename
from tests.support.volumes import lps_affine, save_nifti

SQUARE = [[10, 10], [10, 30], [30, 30], [30, 10]]


@pytest.fixture()
def service() -> PolygonService:
    return PolygonService(DecodeLimits())


def png_upload(folder: Path, image: np.ndarray, name: str = "slice.png") -> ImageUpload:
    path = folder / name
    path.write_bytes(encode_png(image))
    return ImageUpload(path, name)


def nifti_upload(folder: Path, array: np.ndarray, name: str = "volume.nii.gz") -> ImageUpload:
    return ImageUpload(save_nifti(folder / name, array, lps_affine((1.0, 1.0, 2.0))), name)


def test_mask_to_polygons_3d_gives_one_list_per_slice(service: PolygonService, tmp_path: Path) -> None:
    mask = np.zeros((30, 20, 4), dtype=np.uint8)
    mask[5:15, 2:12, 1] = 1
    slices = service.mask_to_polygons({"more_points": 10}, nifti_upload(tmp_path, mask))
    assert [len(s) for s in slices] == [0, 1, 0, 0]
    assert sorted(map(tuple, slices[1][0])) == [(5, 2), (5, 11), (14, 2), (14, 11)]  # [x, y] corners


def test_mask_to_polygons_2d_png_is_x_y(service: PolygonService, tmp_path: Path) -> None:
    image = np.zeros((20, 30), dtype=np.uint8)  # 20 rows (y) x 30 columns (x)
    image[2:6, 10:20] = 1
    slices = service.mask_to_polygons({}, png_upload(tmp_path, image))
    assert len(slices) == 1 and len(slices[0]) == 1  # a 2D mask is one slice
    assert sorted(map(tuple, slices[0][0])) == [(10, 2), (10, 5), (19, 2), (19, 5)]


def test_mask_to_polygons_checks_params_before_the_upload(service: PolygonService) -> None:
    with pytest.raises(InvalidParams, match="more_points"):
        service.mask_to_polygons({"more_points": "many"}, None)
    with pytest.raises(BadRequest, match="^no image uploaded: send the image as a multipart file part$"):
        service.mask_to_polygons({}, None)


def test_mask_to_polygons_refuses_4d_masks(service: PolygonService, tmp_path: Path) -> None:
    upload = nifti_upload(tmp_path, np.zeros((4, 4, 4, 2), dtype=np.uint8))
    with pytest.raises(InvalidImage, match="4D"):
        service.mask_to_polygons({}, upload)


def test_fix_polygon_2d(service: PolygonService, tmp_path: Path) -> None:
    upload = png_upload(tmp_path, np.zeros((48, 64), dtype=np.uint8))
    params = {"poly": [SQUARE], "vertex_offset": [20, 5], "dimension": 2, "vertex_index": 2}
    fixed = service.fix_polygon(params, upload)
    assert fixed.poly == [[[10, 10], [10, 30], [50, 35], [30, 10]]]
    assert fixed.filename == "slice_fixed.png"
    mask = decode_png(fixed.mask)
    assert mask.shape == (48, 64)
    assert mask[35, 50] == 1 and mask[20, 20] == 1 and mask[5, 5] == 0  # [row=y, column=x]


def test_fix_polygon_3d_keeps_the_input_format_and_grid(service: PolygonService, tmp_path: Path) -> None:
    upload = nifti_upload(tmp_path, np.zeros((40, 40, 4), dtype=np.int16), name="scan.nii.gz")
    params = {"poly": [[], [SQUARE], [], []], "vertex_offset": [3, 3], "slice_index": 1, "vertex_index": 2}
    fixed = service.fix_polygon(params, upload)  # dimension guessed: slices of polygons
    assert fixed.poly[1][0][2] == [33, 33]
    assert fixed.filename == "scan_fixed.nii.gz"
    mask, _ = decode_result(fixed.mask, ImageFormat.NIFTI_GZ)
    assert mask.shape == (40, 40, 4)
    assert mask[32, 32, 1] == 1 and mask[:, :, 0].sum() == 0


@pytest.mark.parametrize("dimension, image, message", [
    (2, "nifti", "2D fixpolygon takes a PNG image"),
    (3, "png", "3D fixpolygon takes a NIfTI or NRRD volume"),
])
def test_fix_polygon_refuses_the_wrong_image_kind(
    service: PolygonService, tmp_path: Path, dimension: int, image: str, message: str
) -> None:
    array = np.zeros((40, 40), dtype=np.uint8)
    upload = png_upload(tmp_path, array) if image == "png" else nifti_upload(tmp_path, array[..., None])
    with pytest.raises(InvalidImage, match=message):
        service.fix_polygon({"poly": [SQUARE], "dimension": dimension}, upload)


def test_fix_polygon_refuses_a_2d_nifti_for_3d(service: PolygonService, tmp_path: Path) -> None:
    upload = ImageUpload(save_nifti(tmp_path / "flat.nii", np.zeros((40, 40), dtype=np.int16), np.eye(4)), "flat.nii")
    with pytest.raises(InvalidImage, match="3D fixpolygon needs a 3D volume"):
        service.fix_polygon({"poly": [[SQUARE]], "dimension": 3}, upload)


@pytest.mark.parametrize("params, message", [
    ({"poly": [SQUARE], "dimension": 2, "polygon_index": 1}, "polygon_index 1 is out of range"),
    ({"poly": [SQUARE], "dimension": 2, "vertex_index": 4}, "vertex_index 4 is out of range"),
    ({"poly": [[SQUARE]] * 5, "dimension": 3}, "poly has 5 slices but the volume only 4"),
    ({"poly": [[SQUARE]] * 4, "dimension": 3, "slice_index": 4}, "slice_index 4 is out of range"),
])
def test_fix_polygon_refuses_bad_indices(
    service: PolygonService, tmp_path: Path, params: dict, message: str
) -> None:
    if params["dimension"] == 2:
        upload = png_upload(tmp_path, np.zeros((40, 40), dtype=np.uint8))
    else:
        upload = nifti_upload(tmp_path, np.zeros((40, 40, 4), dtype=np.int16))
    with pytest.raises(InvalidParams, match=message):
        service.fix_polygon(params, upload)


def test_fix_polygon_far_outside_the_image_is_a_params_error(service: PolygonService, tmp_path: Path) -> None:
    upload = png_upload(tmp_path, np.zeros((40, 40), dtype=np.uint8))
    with pytest.raises(InvalidParams, match="outside the image"):
        service.fix_polygon({"poly": [SQUARE], "vertex_offset": [500, 0], "dimension": 2}, upload)


@pytest.mark.parametrize("client_name, extension, expected", [
    ("scan.nii.gz", "nii.gz", "scan_fixed.nii.gz"),
    ("C:\\data\\slice.png", "png", "slice_fixed.png"),
    ("/tmp/upload/seg.nrrd", "nrrd", "seg_fixed.nrrd"),
    ("", "png", "image_fixed.png"),
    (".png", "png", "image_fixed.png"),
])
def test_fixed_filename(client_name: str, extension: str, expected: str) -> None:
    assert fixed_filename(client_name, extension) == expected

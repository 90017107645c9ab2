"""Decoding volumes and encoding results on the input's exact geometry."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from aiaa_server.errors import InvalidImage
from aiaa_server.imaging.formats import ImageFormat
from aiaa_server.imaging.io import decode_result, encode_volume, read_volume
from tests.support.volumes import lps_affine, save_nifti


@pytest.fixture()
def oblique_nifti(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    angle = np.deg2rad(12)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([0.7, 0.8, 3.0])
    affine[:3, 3] = [-12.5, 30.25, 100.0]
    array = np.random.default_rng(1).integers(-1000, 1000, size=(20, 18, 6)).astype(np.int16)
    return save_nifti(tmp_path / "oblique.nii.gz", array, affine), array, affine


def test_nifti_round_trip_keeps_voxels_and_geometry(oblique_nifti) -> None:
    path, array, _ = oblique_nifti
    volume = read_volume(path, "oblique.nii.gz")
    assert volume.name == "oblique"
    np.testing.assert_array_equal(volume.array, array)
    mask = (array > 0).astype(np.uint8)
    for fmt in (ImageFormat.NIFTI_GZ, ImageFormat.NIFTI, ImageFormat.NRRD):
        payload = encode_volume(mask, volume, fmt, compress=fmt is not ImageFormat.NIFTI)
        decoded, affine = decode_result(payload, fmt)
        np.testing.assert_array_equal(decoded, mask)
        np.testing.assert_allclose(affine, nib.load(str(path)).affine, atol=1e-5)


def test_result_keeps_qform_and_sform_codes(tmp_path: Path) -> None:
    affine = lps_affine((1.0, 1.0, 2.0))
    image = nib.Nifti1Image(np.zeros((5, 5, 5), np.int16), affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=2)
    nib.save(image, str(tmp_path / "codes.nii"))
    volume = read_volume(tmp_path / "codes.nii", "codes.nii")
    result = nib.Nifti1Image.from_bytes(encode_volume(np.ones((5, 5, 5), np.uint8), volume, ImageFormat.NIFTI))
    assert int(result.header["qform_code"]) == 1
    assert int(result.header["sform_code"]) == 2


def test_nrrd_lps_geometry_becomes_ras(tmp_path: Path) -> None:
    import nrrd

    array = np.arange(24, dtype=np.int16).reshape(4, 3, 2)
    nrrd.write(str(tmp_path / "v.nrrd"), array, {"space": "left-posterior-superior",
                                                 "space directions": np.diag([0.5, 0.6, 2.0]),
                                                 "space origin": np.array([10.0, 20.0, 30.0])})
    volume = read_volume(tmp_path / "v.nrrd", "v.nrrd")
    np.testing.assert_array_equal(volume.array, array)
    np.testing.assert_allclose(volume.affine[:3, :3], np.diag([-0.5, -0.6, 2.0]))
    np.testing.assert_allclose(volume.affine[:3, 3], [-10.0, -20.0, 30.0])


def test_trailing_singleton_dimensions_are_dropped(tmp_path: Path) -> None:
    path = save_nifti(tmp_path / "v.nii.gz", np.zeros((6, 5, 4, 1), np.int16), np.eye(4))
    assert read_volume(path, "v.nii.gz").array.shape == (6, 5, 4)


def test_4d_and_corrupt_files_are_invalid(tmp_path: Path, oblique_nifti) -> None:
    path = save_nifti(tmp_path / "v4.nii.gz", np.zeros((6, 5, 4, 3), np.int16), np.eye(4))
    with pytest.raises(InvalidImage, match="4D"):
        read_volume(path, "v4.nii.gz")
    good, _, _ = oblique_nifti
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(good.read_bytes()[:300])
    with pytest.raises(InvalidImage, match="could not decode 'cut.nii.gz'"):
        read_volume(cut, "cut.nii.gz")


def test_encode_refuses_a_result_off_the_input_grid(oblique_nifti) -> None:
    path, _, _ = oblique_nifti
    volume = read_volume(path, "oblique.nii.gz")
    with pytest.raises(ValueError, match="not the input grid"):
        encode_volume(np.zeros((2, 2, 2), np.uint8), volume, ImageFormat.NIFTI_GZ)


@pytest.mark.parametrize("kind", ["nifti1-big-endian-with-extension", "nifti2"])
@pytest.mark.parametrize("order", ["C", "F"])
def test_results_stream_the_voxels_in_the_headers_layout(tmp_path: Path, kind: str, order: str) -> None:
    """Results are written as header + voxel view (no nibabel copy): any header byte order, NIfTI-1 with
    extensions or NIfTI-2, any array order and result dtype must decode to the same voxels and geometry."""
    affine = lps_affine((0.9, 0.9, 2.5))
    source = np.arange(6 * 7 * 4, dtype=np.int16).reshape(6, 7, 4)
    if kind == "nifti2":
        image: nib.Nifti1Image = nib.Nifti2Image(source, affine)
    else:
        header = nib.Nifti1Header(endianness=">")
        header.extensions.append(nib.nifti1.Nifti1Extension(6, b"acquisition notes"))
        image = nib.Nifti1Image(source.astype(">i2"), affine, header=header)
    path = tmp_path / "ref.nii"
    nib.save(image, str(path))
    volume = read_volume(path, path.name)
    result = np.asarray(source % 3, order=order)
    for dtype, fmt in ((np.dtype(np.uint8), ImageFormat.NIFTI), (np.dtype(np.int16), ImageFormat.NIFTI_GZ)):
        payload = encode_volume(result, volume, fmt, dtype=dtype)
        if fmt is ImageFormat.NIFTI_GZ:
            payload = gzip.decompress(payload)
        decoded = type(image).from_bytes(payload)
        np.testing.assert_array_equal(np.asanyarray(decoded.dataobj), result)
        assert decoded.get_data_dtype().newbyteorder("=") == dtype.newbyteorder("=")
        np.testing.assert_allclose(decoded.affine, affine, atol=1e-5)
        assert decoded.header.endianness == image.header.endianness
        assert len(payload) == len(decoded.to_bytes())  # the layout nibabel itself writes, nothing trailing
    if kind != "nifti2":
        assert [e.get_content() for e in nib.Nifti1Image.from_bytes(
            encode_volume(result, volume, ImageFormat.NIFTI)).header.extensions] == [b"acquisition notes"]


@pytest.mark.parametrize("encoding", ["raw", "gzip", "bzip2", "ascii"])
@pytest.mark.parametrize("endian", ["little", "big"])
def test_nrrd_encodings_and_byte_orders_decode_like_pynrrd(tmp_path: Path, encoding: str, endian: str) -> None:
    import nrrd

    array = np.random.default_rng(2).integers(-1000, 1000, size=(7, 5, 3)).astype(np.int16)
    path = tmp_path / "v.nrrd"
    nrrd.write(str(path), array, {"encoding": encoding, "endian": endian, "space": "left-posterior-superior",
                                  "space directions": np.diag([0.5, 0.6, 2.0])})
    volume = read_volume(path, "v.nrrd")
    np.testing.assert_array_equal(volume.array, array)
    np.testing.assert_array_equal(volume.array, nrrd.read(str(path), index_order="F")[0])
    assert volume.header["encoding"] == encoding


def test_nrrd_spacings_without_space_directions(tmp_path: Path) -> None:
    import nrrd

    array = np.arange(60, dtype=np.float32).reshape(5, 4, 3)
    nrrd.write(str(tmp_path / "s.nrrd"), array, {"spacings": np.array([0.7, 0.8, 2.5])})
    volume = read_volume(tmp_path / "s.nrrd", "s.nrrd")
    np.testing.assert_array_equal(volume.array, array)
    np.testing.assert_allclose(volume.affine, np.diag([0.7, 0.8, 2.5, 1.0]))


def test_multi_component_nrrd_is_refused(tmp_path: Path) -> None:
    import nrrd

    directions = np.array([[np.nan] * 3, [1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
    nrrd.write(str(tmp_path / "rgb.nrrd"), np.zeros((3, 4, 4, 2), np.uint8),
               {"space": "left-posterior-superior", "space directions": directions,
                "kinds": ["vector", "domain", "domain", "domain"]})
    with pytest.raises(InvalidImage, match="multi-component"):
        read_volume(tmp_path / "rgb.nrrd", "rgb.nrrd")


def test_2d_nrrd_in_3d_space_keeps_its_geometry(tmp_path: Path) -> None:
    import nrrd

    array = np.arange(12, dtype=np.uint8).reshape(4, 3)
    nrrd.write(str(tmp_path / "slice.nrrd"), array, {"space": "left-posterior-superior",
                                                      "space directions": np.array([[0.5, 0, 0], [0, 0, 0.7]])})
    volume = read_volume(tmp_path / "slice.nrrd", "slice.nrrd")
    np.testing.assert_array_equal(volume.array, array)
    np.testing.assert_allclose(volume.affine[:3, :2], [[-0.5, 0], [0, 0], [0, 0.7]])


def test_uncompressed_nifti_is_mapped_and_scaled_like_nibabel(tmp_path: Path) -> None:
    image = nib.Nifti1Image(np.arange(120, dtype=np.int16).reshape(6, 5, 4), lps_affine((1.0, 1.0, 2.0)))
    image.header.set_slope_inter(0.5, -3.0)
    nib.save(image, str(tmp_path / "s.nii"))
    volume = read_volume(tmp_path / "s.nii", "s.nii")
    expected = np.asanyarray(nib.load(str(tmp_path / "s.nii")).dataobj)
    np.testing.assert_array_equal(volume.array, expected)
    assert volume.array.dtype == expected.dtype
    cut = tmp_path / "cut.nii"
    cut.write_bytes((tmp_path / "s.nii").read_bytes()[:-10])
    with pytest.raises(InvalidImage, match="shorter than the data"):
        read_volume(cut, "cut.nii")


def test_nifti_pair_header_is_refused(tmp_path: Path) -> None:
    nib.save(nib.Nifti1Pair(np.zeros((4, 4, 4), np.int16), np.eye(4)), str(tmp_path / "pair.img"))
    single = tmp_path / "pair.nii"
    single.write_bytes((tmp_path / "pair.hdr").read_bytes() + b"\0" * 4 + (tmp_path / "pair.img").read_bytes())
    with pytest.raises(InvalidImage):
        read_volume(single, "pair.nii")


def test_a_volume_without_voxels_still_encodes_results_onto_its_grid(tmp_path: Path) -> None:
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    affine[:3, 3] = [-100.0, 20.0, 5.0]
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(np.arange(6 * 5 * 4, dtype=np.int16).reshape(6, 5, 4), affine), path)
    volume = read_volume(path, path.name)
    light = volume.without_voxels()
    assert light.spatial_shape == volume.spatial_shape and light.array.dtype == np.int16
    assert light.array.strides == (0, 0, 0) and not light.array.any()  # nothing held
    mask = np.zeros((6, 5, 4), np.uint8)
    mask[1:3, 2, 1] = 1
    payload = encode_volume(mask, light, ImageFormat.NIFTI_GZ, compress=True)
    assert payload == encode_volume(mask, volume, ImageFormat.NIFTI_GZ, compress=True)
    decoded, decoded_affine = decode_result(payload, ImageFormat.NIFTI_GZ)
    assert np.array_equal(decoded, mask) and np.allclose(decoded_affine, affine)

"""A volume written as a DICOM series comes back through the server's DICOM reader on the same world grid."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from aiaa_demo.datasets.dicom_export import subsample, volume_to_dicom_series
from aiaa_server.imaging.dicom import read_dicom_series


def canonical(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The array and affine reoriented to the closest RAS axes, to compare volumes stored in other axis orders."""
    ornt = nib.orientations.io_orientation(affine)
    return (nib.orientations.apply_orientation(array, ornt),
            affine @ nib.orientations.inv_ornt_aff(ornt, array.shape))


def oblique_affine(spacing: tuple[float, float, float], origin: tuple[float, float, float]) -> np.ndarray:
    angle = np.deg2rad(12.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0, 0, 1.0]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag(spacing)
    affine[:3, 3] = origin
    return affine


@pytest.mark.parametrize(("modality", "dtype", "affine"), [
    ("CT", np.int16, np.diag([-0.7, 0.7, 2.0, 1.0])),  # LAS: k along the normal's opposite, reversed on reading
    ("MR", np.float32, oblique_affine((0.9, 1.1, 3.0), (-20.5, 14.25, -7.0))),
])
def test_the_series_decodes_to_the_same_voxels_at_the_same_places(tmp_path: Path, modality: str, dtype: type,
                                                                  affine: np.ndarray) -> None:
    rng = np.random.default_rng(3)
    array = (rng.integers(-1024, 2000, (12, 9, 5)) if dtype is np.int16 else rng.random((12, 9, 5)) * 500).astype(dtype)
    series = volume_to_dicom_series(array, affine, tmp_path / "series", modality, series_description="test")
    assert [p.name for p in series.paths] == [f"slice_{k:04d}.dcm" for k in range(5)]
    first = pydicom.dcmread(series.paths[0])
    assert (first.Modality, first.SeriesInstanceUID, first.Rows, first.Columns) == (modality, series.series_uid, 9, 12)
    decoded = read_dicom_series(series.paths, tmp_path / "work")
    want_array, want_affine = canonical(array, affine)
    got_array, got_affine = canonical(np.asarray(decoded.array), decoded.affine)
    np.testing.assert_allclose(got_affine, want_affine, atol=1e-6)
    if dtype is np.int16:
        np.testing.assert_array_equal(got_array, want_array)
    else:
        np.testing.assert_allclose(got_array, want_array, atol=500 / 65535)


def test_subsample_keeps_the_first_voxel_in_place() -> None:
    array = np.arange(4 * 6 * 3).reshape(4, 6, 3)
    affine = oblique_affine((1.0, 2.0, 3.0), (5.0, 6.0, 7.0))
    small, small_affine = subsample(array, affine, (2, 3, 1))
    assert small.shape == (2, 2, 3) and small[1, 1, 2] == array[2, 3, 2]
    np.testing.assert_allclose(small_affine @ [1, 1, 2, 1], affine @ [2, 3, 2, 1])


def test_bad_volumes_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        volume_to_dicom_series(np.zeros((3, 3)), np.eye(4), tmp_path)
    with pytest.raises(ValueError):
        volume_to_dicom_series(np.zeros((3, 3, 2)), np.eye(4), tmp_path, "US")
    with pytest.raises(ValueError, match="singular"):
        volume_to_dicom_series(np.zeros((3, 3, 2)), np.diag([1.0, 1.0, 0.0, 1.0]), tmp_path)

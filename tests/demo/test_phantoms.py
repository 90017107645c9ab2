"""The synthetic abdominal CT phantoms: determinism, value ranges, anatomy side, NIfTI output."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from aiaa_demo.phantoms import ORGAN_LABELS, Phantom, make_abdomen_phantom, save_nifti

SMALL = {"shape": (72, 72, 28), "spacing": (5.0, 5.0, 7.5)}  # a whole abdomen at a coarse grid: fast


def _small(seed: int, lps: bool | None = None) -> Phantom:
    return make_abdomen_phantom(np.random.default_rng(seed), lps_orientation=lps, **SMALL)


def test_phantom_is_deterministic_per_seed() -> None:
    a, b, c = _small(3), _small(3), _small(4)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.affine, b.affine)
    assert not np.array_equal(a.image, c.image)


def test_phantom_values_and_geometry() -> None:
    phantom = _small(5)
    assert phantom.image.dtype == np.float32 and phantom.labels.dtype == np.uint8
    assert phantom.shape == SMALL["shape"] == phantom.labels.shape
    np.testing.assert_allclose(phantom.spacing, SMALL["spacing"])
    assert phantom.image.min() >= -1024.0 and phantom.image.max() <= 3071.0
    assert set(np.unique(phantom.labels)) <= {0, *ORGAN_LABELS.values()}
    assert (phantom.labels == ORGAN_LABELS["spleen"]).sum() > 20


@pytest.mark.parametrize("lps", [False, True])
def test_spleen_is_on_the_patients_left_in_both_layouts(lps: bool) -> None:
    phantom = _small(6, lps=lps)
    assert (phantom.affine[0, 0] < 0) == lps
    voxels = np.argwhere(phantom.labels == ORGAN_LABELS["spleen"])
    world = voxels @ phantom.affine[:3, :3].T + phantom.affine[:3, 3]
    liver = np.argwhere(phantom.labels == ORGAN_LABELS["liver"]) @ phantom.affine[:3, :3].T + phantom.affine[:3, 3]
    assert world[:, 0].mean() < 0 < liver[:, 0].mean()  # RAS: the patient's left is -x


def test_default_geometry_keeps_random_volumes_modest() -> None:
    rng = np.random.default_rng(0)
    phantom = make_abdomen_phantom(rng, spacing=(4.0, 4.0, 6.0))
    fov = np.array(phantom.shape) * np.array(phantom.spacing)
    assert 300 <= fov[0] <= 424 and 150 <= fov[2] <= 266


def test_save_nifti_writes_image_and_labels(tmp_path: Path) -> None:
    phantom = _small(7, lps=True)
    image = nib.load(str(save_nifti(phantom, tmp_path / "sub" / "img.nii.gz")))
    labels = nib.load(str(save_nifti(phantom, tmp_path / "lbl.nii.gz", labels=True)))
    assert image.get_data_dtype() == np.int16 and labels.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(image.dataobj), np.rint(phantom.image).astype(np.int16))
    np.testing.assert_array_equal(np.asarray(labels.dataobj), phantom.labels)
    for img in (image, labels):
        np.testing.assert_allclose(img.affine, phantom.affine, atol=1e-5)
        assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 1

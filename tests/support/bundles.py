"""MONAI bundles and CT-like images for the bundle tests, built in temp dirs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage

from aiaa_demo.zoo_bundles import monai_bundle_output, write_bundle
from tests.support.volumes import lps_affine, save_nifti

__all__ = ["ct_like_image", "edit_config", "monai_mask", "write_bundle"]


def ct_like_image(path: Path, shape: tuple[int, int, int] = (70, 60, 30), seed: int = 0) -> Path:
    """Smooth random HU-like int16 values on an LPS grid with anisotropic voxels (0.8 × 0.75 × 2.5 mm), so that
    a bundle's Orientationd, Spacingd and Invertd all do real work."""
    noise = np.random.default_rng(seed).normal(0.0, 1.0, shape)
    values = ndimage.gaussian_filter(noise, 3.0) * 3000.0
    return save_nifti(path, values.astype(np.int16), lps_affine((0.8, 0.75, 2.5)))


def monai_mask(bundle: Path, image: Path, work: Path) -> np.ndarray:
    """The mask MONAI's own bundle run writes for `image`, as an (X, Y, Z) array."""
    return np.asarray(nib.load(monai_bundle_output(bundle, image, work)).dataobj).squeeze()


def edit_config(bundle: Path, edit: Any) -> None:
    """Rewrite the bundle's configs/inference.json through `edit(config) -> config`."""
    path = bundle / "configs" / "inference.json"
    path.write_text(json.dumps(edit(json.loads(path.read_text())), indent=2))

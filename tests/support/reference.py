"""The all-MONAI reference path that the fast paths are compared with, and the int16 phantom they run on."""

from __future__ import annotations

import numpy as np

from aiaa_demo.phantoms import make_abdomen_phantom
from aiaa_server.errors import ModelError
from aiaa_server.imaging.formats import ImageFormat
from aiaa_server.imaging.io import Volume
from aiaa_server.inference.fast_paths import configured_transforms
from aiaa_server.inference.pipeline import ModelPipeline, apply_transforms
from aiaa_server.inference.tensors import volume_to_tensor


def int16_phantom(shape: tuple[int, int, int], lps: bool, seed: int = 5) -> Volume:
    """A CT-like int16 abdomen (0.8×0.8×2.5 mm), RAS or LPS."""
    phantom = make_abdomen_phantom(np.random.default_rng(seed), shape=shape, spacing=(0.8, 0.8, 2.5),
                                   lps_orientation=lps)
    voxels = np.clip(phantom.image, -1024, 3071).astype(np.int16)
    return Volume(array=voxels, affine=phantom.affine, format=ImageFormat.NIFTI, name="phantom")


def all_monai_mask(pipeline: ModelPipeline, volume: Volume) -> np.ndarray:
    """The mask of the configured MONAI transforms, one by one (no fast path), from a float32 input."""
    data = apply_transforms(configured_transforms(pipeline.pre_transforms),
                            {pipeline.input_key: volume_to_tensor(volume)}, "pre-transform", ModelError)
    data = apply_transforms(configured_transforms(pipeline.post_transforms), pipeline.infer(data), "post-transform",
                            ModelError)
    image = pipeline.writer(data).image
    assert image is not None
    return image

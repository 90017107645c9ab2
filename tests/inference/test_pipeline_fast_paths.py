"""The segmentation pipeline's fast paths on the bundled demo spleen model: integer input kept until the
model grid, separable Spacingd, channel argmax, Restored into uint8; the mask equals the all-MONAI path."""

from __future__ import annotations

import dataclasses
import gc
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch

from aiaa_server.engines.torchscript import TorchScriptPool
from aiaa_server.errors import ModelError
from aiaa_server.imaging.io import Volume
from aiaa_server.inference.fast_discrete import FastAsDiscreted
from aiaa_server.inference.fast_spacing import FastSpacingd
from aiaa_server.inference.pipeline import ModelPipeline, apply_transforms
from aiaa_server.inference.transforms import restore_to_grid
from aiaa_server.mmar.registry import ModelRegistry
from tests.support.reference import all_monai_mask, int16_phantom

SPLEEN = Path(__file__).resolve().parents[2] / "models" / "demo_spleen_ct_segmentation"


@pytest.fixture(scope="module")
def spleen() -> ModelPipeline:
    model = ModelRegistry(TorchScriptPool()).load(SPLEEN)
    assert model is not None
    return model.pipeline


def _phantom(lps: bool) -> Volume:
    return int16_phantom((192, 192, 40), lps)


def _all_monai(pipeline: ModelPipeline, volume: Volume) -> np.ndarray:
    return all_monai_mask(pipeline, volume)


def test_demo_spleen_takes_the_fast_paths(spleen: ModelPipeline) -> None:
    assert any(isinstance(t, FastSpacingd) for t in spleen.pre_transforms)
    assert any(isinstance(t, FastAsDiscreted) for t in spleen.post_transforms)
    assert spleen.converts_on_model_grid
    tensor = spleen.input_tensor(_phantom(lps=False))
    assert tensor.dtype == torch.int16  # no float32 copy of the full-size volume


@pytest.mark.parametrize("lps", [False, True])
def test_fast_mask_equals_the_all_monai_mask(spleen: ModelPipeline, lps: bool) -> None:
    volume = _phantom(lps)
    reference = _all_monai(spleen, volume)
    output = spleen.run({spleen.input_key: spleen.input_tensor(volume)})
    assert output.image is not None and output.image.shape == reference.shape == volume.array.shape
    assert reference.any()  # the model finds a spleen, so the comparison means something
    agreement = float((output.image == reference).mean())
    assert agreement >= 0.9999
    assert set(output.json) == {"points", "bbox"}


def test_float_input_stays_float_for_other_pipelines(spleen: ModelPipeline) -> None:
    """A pipeline whose first pre-transforms are not only voxel moves before Spacingd gets float32."""
    other = ModelPipeline(name="x", config=spleen.config, pre_transforms=list(reversed(spleen.pre_transforms)),
                          post_transforms=[], writer=spleen.writer, engine=None, args=spleen.args)
    assert not other.converts_on_model_grid
    assert other.input_tensor(_phantom(lps=False)).dtype == torch.float32


def test_restore_of_float_labels_is_uint8_with_the_same_values() -> None:
    labels = torch.zeros(1, 20, 18, 8)
    labels[0, 5:12, 4:9, 2:6] = 2.0
    source = np.diag([2.5, 2.5, 2.5, 1.0])
    target = np.diag([-0.8, -0.8, 2.5, 1.0])
    target[:3, 3] = [40.0, 38.0, 0.0]
    restored = restore_to_grid(labels, source, target, (64, 60, 8), "nearest")
    as_float = restore_to_grid(labels + 0.5, source, target, (64, 60, 8), "nearest")  # not labels: stays float
    assert restored.dtype == np.uint8 and as_float.dtype == np.float32
    np.testing.assert_array_equal(restored.astype(np.float32) + 0.5 * (as_float > 0), as_float)


def test_the_request_input_is_freed_before_the_network_runs(spleen: ModelPipeline) -> None:
    """run_request consumes its dict: once the model-grid Spacingd replaced the image, nothing (not the caller's
    frame, not the first dict) keeps the full-size int16 input alive through the forward and post-processing."""
    volume = _phantom(lps=False)
    tensor = spleen.input_tensor(volume)
    alive = weakref.ref(tensor)
    seen: list[bool] = []

    def probe(data: dict) -> dict:
        gc.collect()
        seen.append(alive() is not None)
        return data

    pipeline = dataclasses.replace(spleen, post_transforms=[probe, *spleen.post_transforms])
    data = {spleen.input_key: tensor}
    del tensor, volume
    output = pipeline.run_request(data)
    assert seen == [False]
    assert data == {}  # emptied by the first pre-transform
    assert output.image is not None and output.image.any()


def test_transforms_leave_the_callers_dict_unless_told_to_consume_it(spleen: ModelPipeline) -> None:
    """Crop growth and session caches read the same dict again: only run_request's own call consumes."""
    data = {spleen.input_key: spleen.input_tensor(_phantom(lps=False))}
    apply_transforms(spleen.pre_transforms, data, "pre-transform", ModelError)
    assert list(data) == [spleen.input_key]

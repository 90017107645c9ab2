"""A bundle's preprocessing and postprocessing `Compose` run the MMARs' fast paths: integer input kept until the
model-grid Spacingd, separable Spacingd, channel argmax; `Invertd` still inverts through the configured MONAI
transforms, exactly; the mask equals the all-MONAI path; bundles the fast paths do not fit run as configured."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, Invertd, Spacingd

from aiaa_server.bundles.loader import load_bundle
from aiaa_server.engines.torchscript import TorchScriptPool
from aiaa_server.errors import ModelError
from aiaa_server.imaging.io import Volume
from aiaa_server.inference.fast_discrete import FastAsDiscreted
from aiaa_server.inference.fast_invert import FastInvertArgmaxd
from aiaa_server.inference.fast_paths import configured_transforms, opened
from aiaa_server.inference.fast_spacing import FastSpacingd
from aiaa_server.inference.pipeline import ModelPipeline, apply_transforms
from aiaa_server.inference.tensors import volume_to_tensor
from tests.support.bundles import edit_config, write_bundle
from tests.support.reference import all_monai_mask, int16_phantom


def _pipeline(folder: Path) -> ModelPipeline:
    return load_bundle(folder, TorchScriptPool()).pipeline


@pytest.fixture(scope="module")
def spleen(tmp_path_factory: pytest.TempPathFactory) -> ModelPipeline:
    folder = tmp_path_factory.mktemp("bundles") / "spleen"
    return _pipeline(write_bundle(folder, "spleen_ct_segmentation", small=True, seed=3))


def _phantom(lps: bool) -> Volume:
    return int16_phantom((160, 150, 36), lps)


def _all_monai(pipeline: ModelPipeline, volume: Volume) -> np.ndarray:
    return all_monai_mask(pipeline, volume)


def _served(pipeline: ModelPipeline, volume: Volume) -> np.ndarray:
    output = pipeline.run({pipeline.input_key: pipeline.input_tensor(volume)})
    assert output.image is not None
    return output.image


def _invertd(pipeline: ModelPipeline) -> Invertd:
    (invert,) = [t for t in configured_transforms(pipeline.post_transforms) if isinstance(t, Invertd)]
    return invert


def test_the_spleen_bundle_takes_the_fast_paths(spleen: ModelPipeline) -> None:
    pre, post = opened(spleen.pre_transforms), opened(spleen.post_transforms)
    assert [type(t).__name__ for t in pre] == ["LoadImaged", "EnsureChannelFirstd", "Orientationd", "FastSpacingd",
                                               "ScaleIntensityRanged", "EnsureTyped"]
    assert [type(t).__name__ for t in post] == ["Activationsd", "FastInvertArgmaxd", "ResultOnInputGrid"]
    fused = post[1]
    assert isinstance(fused.wrapped, Invertd) and isinstance(fused.discrete, FastAsDiscreted)
    assert spleen.converts_on_model_grid
    assert spleen.input_tensor(_phantom(lps=False)).dtype == torch.int16  # no full-size float32 copy
    # Invertd keeps the configured preprocessing: MONAI's own Spacingd, the very instance the wrapper runs
    configured = _invertd(spleen).transform
    assert isinstance(configured, Compose) and configured is not spleen.pre_transforms[0]
    spacing = next(t for t in pre if isinstance(t, FastSpacingd))
    assert any(t is spacing.wrapped for t in configured.transforms)
    assert not any(isinstance(t, FastSpacingd) for t in configured.transforms)


@pytest.mark.parametrize("lps", [False, True])
def test_the_fast_mask_equals_the_all_monai_mask(spleen: ModelPipeline, lps: bool) -> None:
    volume = _phantom(lps)
    reference = _all_monai(spleen, volume)
    served = _served(spleen, volume)
    assert served.shape == reference.shape == volume.array.shape
    assert 0 < reference.mean() < 1  # random weights, but both classes present: the comparison means something
    assert float((served == reference).mean()) >= 0.9999


def test_invertd_inverts_the_fast_spacing_exactly_as_monais(spleen: ModelPipeline) -> None:
    """The same network output inverted after the fast preprocessing and after MONAI's: identical arrays (the
    fast Spacingd records the operation MONAI records)."""
    volume = _phantom(lps=True)
    fast = apply_transforms(spleen.pre_transforms, {"image": spleen.input_tensor(volume)}, "pre", ModelError)
    monai = apply_transforms(configured_transforms(spleen.pre_transforms), {"image": volume_to_tensor(volume)}, "pre",
                             ModelError)
    assert fast["image"].shape == monai["image"].shape
    np.testing.assert_allclose(fast["image"].numpy(), monai["image"].numpy(), atol=1e-4)
    assert [op["class"] for op in fast["image"].applied_operations] == \
        [op["class"] for op in monai["image"].applied_operations]
    pred = torch.softmax(torch.randn(2, *fast["image"].shape[1:], generator=torch.Generator().manual_seed(0)), 0)
    invert = _invertd(spleen)  # pred as Activationsd leaves it: a MetaTensor without operations of its own
    inverted = [invert({**data, "pred": MetaTensor(pred.clone())})["pred"] for data in (fast, monai)]
    assert tuple(inverted[0].shape[1:]) == volume.array.shape
    np.testing.assert_array_equal(inverted[0].numpy(), inverted[1].numpy())
    np.testing.assert_array_equal(inverted[0].affine.numpy(), inverted[1].affine.numpy())


def test_argmax_before_a_nearest_invertd(tmp_path: Path) -> None:
    """wholeBody: its Spacingd stays MONAI's (a NormalizeIntensityd(nonzero=True) follows: see fast_paths), its
    argmax (then a nearest-neighbour Invertd) is the fast one; EnsureTyped before the channel move keeps the
    input float32. Exactly the all-MONAI mask."""
    pipeline = _pipeline(write_bundle(tmp_path / "wb", "wholeBody_ct_segmentation", small=True, seed=3))
    assert any(type(t) is Spacingd for t in opened(pipeline.pre_transforms))
    assert any(isinstance(t, FastAsDiscreted) for t in opened(pipeline.post_transforms))
    assert not pipeline.converts_on_model_grid
    volume = _phantom(lps=True)
    reference = _all_monai(pipeline, volume)
    assert len(np.unique(reference)) > 1
    np.testing.assert_array_equal(_served(pipeline, volume), reference)


def test_transforms_without_a_fast_path_run_as_configured(tmp_path: Path) -> None:
    """A nearest Spacingd and an argmax with MONAI options (the wrappers fall back to MONAI), and a lazy Compose
    (never opened: its transforms stay as configured), give exactly MONAI's mask."""
    folder = write_bundle(tmp_path / "other", "spleen_ct_segmentation", small=True, seed=3)

    def edit(config: dict[str, Any]) -> dict[str, Any]:
        config["preprocessing"]["transforms"][3]["mode"] = "nearest"
        config["postprocessing"]["transforms"][2]["keepdim"] = True
        return config

    edit_config(folder, edit)
    pipeline = _pipeline(folder)
    volume = _phantom(lps=True)
    reference = _all_monai(pipeline, volume)
    assert 0 < reference.mean() < 1
    np.testing.assert_array_equal(_served(pipeline, volume), reference)

    edit_config(folder, lambda c: {**c, "preprocessing": {**c["preprocessing"], "lazy": True}})
    lazy = _pipeline(folder)
    assert type(lazy.pre_transforms[0]) is Compose
    assert [type(t) for t in lazy.pre_transforms[0].transforms][3] is Spacingd  # not opened: as configured
    assert not lazy.converts_on_model_grid
    assert isinstance(lazy.input_tensor(volume), MetaTensor)
    np.testing.assert_array_equal(_served(lazy, volume), _all_monai(lazy, volume))


@pytest.mark.parametrize("lps", [False, True])
def test_the_fused_inverse_and_argmax_equal_monais_invertd_then_argmax(spleen: ModelPipeline, lps: bool) -> None:
    """Close class probabilities (the hardest case for an argmax), inverted by MONAI then argmaxed, vs the fused
    slab-by-slab path: the same labels (but for near-ties), the same grid, uint8 in NIfTI order."""
    volume = _phantom(lps)
    data = apply_transforms(spleen.pre_transforms, {"image": spleen.input_tensor(volume)}, "pre", ModelError)
    noise = torch.randn(2, *data["image"].shape[1:], generator=torch.Generator().manual_seed(1))
    pred = torch.softmax(noise * 0.5, 0)
    fused = next(t for t in opened(spleen.post_transforms) if isinstance(t, FastInvertArgmaxd))
    ours = fused({**data, "pred": MetaTensor(pred.clone())})["pred"]
    theirs = fused.discrete.wrapped(fused.wrapped({**data, "pred": MetaTensor(pred.clone())}))["pred"]
    assert tuple(ours.shape) == tuple(theirs.shape) == (1, *volume.array.shape)
    assert ours.dtype == torch.uint8 and ours.numpy()[0].flags.f_contiguous
    np.testing.assert_allclose(ours.affine.numpy(), theirs.affine.numpy(), atol=1e-6)
    agreement = float((ours.numpy() == theirs.numpy()).mean())
    assert agreement >= 0.999
    assert 0.2 < float(ours.float().mean()) < 0.8  # both labels present


def test_the_fused_pair_falls_back_where_its_plan_does_not_hold(spleen: ModelPipeline) -> None:
    """A nearest-neighbour Invertd is MONAI's pair unchanged (float32 labels)."""
    volume = _phantom(lps=False)
    data = apply_transforms(spleen.pre_transforms, {"image": spleen.input_tensor(volume)}, "pre", ModelError)
    fused = next(t for t in opened(spleen.post_transforms) if isinstance(t, FastInvertArgmaxd))
    nearest = copy.copy(fused.wrapped)
    nearest.nearest_interp = (True,)
    pred = MetaTensor(torch.softmax(torch.randn(2, *data["image"].shape[1:]), 0))
    out = FastInvertArgmaxd(nearest, fused.discrete)({**data, "pred": pred})["pred"]
    assert out.dtype == torch.float32 and tuple(out.shape) == (1, *volume.array.shape)

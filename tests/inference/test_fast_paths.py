"""Which configured MONAI transforms the loader replaces by fast equivalents, including crop growth's passes."""

from __future__ import annotations

from pathlib import Path

from monai.transforms import AsDiscreted, ScaleIntensityRangePercentilesd, Spacingd

from aiaa_server.engines.torchscript import TorchScriptPool
from aiaa_server.inference.fast_discrete import FastAsDiscreted
from aiaa_server.inference.fast_intensity import FastScaleIntensityRangePercentilesd
from aiaa_server.inference.fast_paths import with_fast_paths
from aiaa_server.inference.fast_spacing import FastSpacingd
from aiaa_server.mmar.registry import ModelRegistry

MODELS = Path(__file__).resolve().parents[2] / "models"


def test_exactly_the_listed_monai_classes_are_wrapped_once() -> None:
    class CustomSpacing(Spacingd):
        pass

    spacing, custom = Spacingd(keys="image", pixdim=[1, 1, 1]), CustomSpacing(keys="image", pixdim=[1, 1, 1])
    discrete = AsDiscreted(keys="pred", argmax=True)
    scaling = ScaleIntensityRangePercentilesd(keys="image", lower=1, upper=99, b_min=0.0, b_max=1.0)
    other = object()
    wrapped = with_fast_paths([spacing, custom, discrete, scaling, other])
    assert [type(t) for t in wrapped] == [FastSpacingd, CustomSpacing, FastAsDiscreted,
                                          FastScaleIntensityRangePercentilesd, object]
    assert [wrapped[i].wrapped for i in (0, 2, 3)] == [spacing, discrete, scaling]
    assert with_fast_paths(wrapped) == wrapped  # already wrapped: left as they are


def test_the_loaded_models_and_their_crop_growth_passes_run_the_fast_paths() -> None:
    registry = ModelRegistry(TorchScriptPool())
    spleen = registry.load(MODELS / "demo_spleen_ct_segmentation").pipeline
    assert any(isinstance(t, FastSpacingd) for t in spleen.pre_transforms)
    assert any(isinstance(t, FastAsDiscreted) for t in spleen.post_transforms)
    deepgrow = registry.load(MODELS / "demo_deepgrow_3d").pipeline
    assert deepgrow.growth is not None
    crop_passes = [*deepgrow.growth.before_crop, *deepgrow.growth.from_crop]
    assert any(isinstance(t, FastScaleIntensityRangePercentilesd) for t in crop_passes)
    assert not any(type(t) is ScaleIntensityRangePercentilesd for t in [*deepgrow.pre_transforms, *crop_passes])

"""Which configured MONAI transforms the loader replaces by fast equivalents, including crop growth's passes."""

from __future__ import annotations

from pathlib import Path

from monai.transforms import (
    AsDiscreted,
    Compose,
    NormalizeIntensityd,
    OneOf,
    RandFlipd,
    ScaleIntensityRangePercentilesd,
    Spacingd,
)

from aiaa_server.engines.torchscript import TorchScriptPool
from aiaa_server.inference.fast_discrete import FastAsDiscreted
from aiaa_server.inference.fast_intensity import FastScaleIntensityRangePercentilesd
from aiaa_server.inference.fast_paths import opened, with_fast_paths
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


def test_a_plain_compose_is_opened_into_a_copy_and_left_as_configured() -> None:
    """A bundle's preprocessing: the copy runs the wrappers; the configured Compose (which an Invertd may hold)
    keeps MONAI's instances; random transforms inside are not reseeded; nothing to wrap: the same instance."""
    spacing, discrete = Spacingd(keys="image", pixdim=[1, 1, 1]), AsDiscreted(keys="pred", argmax=True)
    flip = RandFlipd(keys="image", prob=0.5)
    inner = Compose([discrete])
    configured = Compose([spacing, flip, inner], map_items=False, log_stats=True)
    state = flip.R.get_state()[1].copy()
    (fast,) = with_fast_paths([configured])
    assert type(fast) is Compose and fast is not configured
    assert configured.transforms == (spacing, flip, inner)
    assert (fast.map_items, fast.log_stats, fast.lazy) == (False, True, False)
    assert [type(t) for t in opened([fast])] == [FastSpacingd, RandFlipd, FastAsDiscreted]
    assert opened([fast])[0].wrapped is spacing and opened([fast])[1] is flip
    assert (flip.R.get_state()[1] == state).all()
    untouched = Compose([flip])
    assert with_fast_paths([untouched])[0] is untouched


def test_lazy_and_choosing_composes_are_not_opened() -> None:
    spacing = Spacingd(keys="image", pixdim=[1, 1, 1])
    lazy, one_of = Compose([spacing], lazy=True), OneOf([spacing])
    assert with_fast_paths([lazy, one_of]) == [lazy, one_of]
    assert opened([lazy, one_of]) == [lazy, one_of]


def test_a_spacing_read_by_a_nonzero_normalisation_stays_monais() -> None:
    spacing = Spacingd(keys="image", pixdim=[1, 1, 1])
    nonzero = NormalizeIntensityd(keys="image", nonzero=True)
    assert with_fast_paths([spacing, Compose([nonzero])])[0] is spacing
    compose = Compose([spacing, nonzero])
    assert with_fast_paths([compose])[0] is compose
    other_key = NormalizeIntensityd(keys="label", nonzero=True)
    plain = NormalizeIntensityd(keys="image")
    assert [type(t) for t in with_fast_paths([spacing, other_key, plain])] == [FastSpacingd, NormalizeIntensityd,
                                                                                NormalizeIntensityd]

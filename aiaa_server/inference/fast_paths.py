"""Configured MONAI transforms replaced by our faster equivalents when a model's pipeline is built.

Each replacement wraps the configured MONAI instance (`wrapped`: errors name it, a profile can unwrap it), gives
the same output, and falls back to the MONAI transform where its fast path does not apply. Exactly these
classes are replaced (not subclasses, which may change the behaviour):

* `Spacingd` → `fast_spacing.FastSpacingd` (separable float32 resampling, integer input read directly);
* `AsDiscreted` → `fast_discrete.FastAsDiscreted` (a channel argmax without `torch.argmax`);
* `ScaleIntensityRangePercentilesd` → `fast_intensity.FastScaleIntensityRangePercentilesd` (one partial sort).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from monai.transforms import AsDiscreted, ScaleIntensityRangePercentilesd, Spacingd

from aiaa_server.inference.fast_discrete import FastAsDiscreted
from aiaa_server.inference.fast_intensity import FastScaleIntensityRangePercentilesd
from aiaa_server.inference.fast_spacing import FastSpacingd

_REPLACEMENTS: dict[type, Callable[[Any], Any]] = {
    Spacingd: FastSpacingd,
    AsDiscreted: FastAsDiscreted,
    ScaleIntensityRangePercentilesd: FastScaleIntensityRangePercentilesd,
}


def with_fast_paths(transforms: list[Any]) -> list[Any]:
    """`transforms` with every instance of a class above wrapped in its fast equivalent; others unchanged
    (already wrapped ones too)."""
    return [_REPLACEMENTS[type(t)](t) if type(t) in _REPLACEMENTS else t for t in transforms]

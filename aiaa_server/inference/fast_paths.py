"""Configured MONAI transforms replaced by our faster equivalents when a model's pipeline is built.

Each replacement wraps the configured MONAI instance (`wrapped`: errors name it, a profile can unwrap it), gives
the same output, and falls back to the MONAI transform where its fast path does not apply. Exactly these
classes are replaced (not subclasses, which may change the behaviour):

* `Spacingd` → `fast_spacing.FastSpacingd` (separable float32 resampling, integer input read directly);
* `AsDiscreted` → `fast_discrete.FastAsDiscreted` (a channel argmax without `torch.argmax`);
* `ScaleIntensityRangePercentilesd` → `fast_intensity.FastScaleIntensityRangePercentilesd` (the order statistics
  selected from the image's tails);
* an `Invertd` directly followed by an argmax `AsDiscreted` of the same key → `fast_invert.FastInvertArgmaxd`
  (the inverse resampling and the argmax fused, slab by slab: bounded memory, uint8 labels).

One exception: a `Spacingd` followed (in the same sequence) by a `NormalizeIntensityd(nonzero=True)` reading one of
its keys stays MONAI's. That normalisation singles out voxels that are exactly 0, and where neighbours of mixed sign
interpolate to zero, MONAI's float64 gives ±1e-13 and the float32 path 0 (or the reverse): those voxels then get
far apart values (wholeBody_ct_segmentation's preprocessing on raw HU: 0.3 % of its mask changed).

A plain, eager MONAI `Compose` (a bundle's `preprocessing` or `postprocessing`) is opened: a shallow copy of it
runs the same transforms with these replaced, and the configured `Compose` is left as it was, so that an `Invertd`
holding it (`"transform": "@preprocessing"`) still inverts through MONAI's own transforms. That works because a
wrapper records MONAI's own trace (the wrapped instance's id and operation; `FastSpacingd` pushes the operation
MONAI computed). Subclasses of `Compose` (`OneOf`, `RandomOrder`, `SomeOf`, which trace their choices) and lazy
ones are left unopened.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any

from monai.transforms import (
    AsDiscreted,
    Compose,
    Invertd,
    NormalizeIntensityd,
    ScaleIntensityRangePercentilesd,
    Spacingd,
)

from aiaa_server.inference.fast_discrete import FastAsDiscreted
from aiaa_server.inference.fast_intensity import FastScaleIntensityRangePercentilesd
from aiaa_server.inference.fast_invert import FastInvertArgmaxd
from aiaa_server.inference.fast_spacing import FastSpacingd

_REPLACEMENTS: dict[type, Callable[[Any], Any]] = {
    Spacingd: FastSpacingd,
    AsDiscreted: FastAsDiscreted,
    ScaleIntensityRangePercentilesd: FastScaleIntensityRangePercentilesd,
}


def _opens(transform: Any) -> bool:
    return type(transform) is Compose and transform.lazy is False


def with_fast_paths(transforms: list[Any]) -> list[Any]:
    """`transforms` with every instance of a class above wrapped in its fast equivalent, looking inside plain
    `Compose`s (see the module doc); others unchanged (already wrapped ones too)."""
    out: list[Any] = []
    for index, transform in enumerate(transforms):
        if out and _invert_then_argmax(out[-1], transform):
            out[-1] = FastInvertArgmaxd(out[-1], _with_fast_paths(transform))
        elif _zero_sensitive_after(transform, transforms[index + 1 :]):
            out.append(transform)
        else:
            out.append(_with_fast_paths(transform))
    return out


def _invert_then_argmax(previous: Any, transform: Any) -> bool:
    """An `Invertd` directly followed by an `AsDiscreted` of its keys (fused when the argmax is plain)."""
    return (type(previous) is Invertd and type(transform) is AsDiscreted
            and tuple(transform.keys) == tuple(previous.keys) and any(transform.argmax))


def _zero_sensitive_after(transform: Any, later: list[Any]) -> bool:
    """Whether `transform` is a Spacingd whose output a later NormalizeIntensityd(nonzero=True) reads."""
    if type(transform) is not Spacingd:
        return False
    keys = set(transform.keys)
    return any(isinstance(t, NormalizeIntensityd) and t.normalizer.nonzero and keys & set(t.keys)
               for t in opened(later))


def _with_fast_paths(transform: Any) -> Any:
    if type(transform) in _REPLACEMENTS:
        return _REPLACEMENTS[type(transform)](transform)
    if not _opens(transform):
        return transform
    inner = with_fast_paths(list(transform.transforms))
    if all(new is old for new, old in zip(inner, transform.transforms)):
        return transform  # nothing to replace: the configured instance itself
    opened = copy.copy(transform)  # not Compose(...): its __init__ would reseed the random transforms inside
    opened.transforms = tuple(inner)
    return opened


def opened(transforms: Iterable[Any]) -> list[Any]:
    """The transforms in the order they run, with every plain `Compose` opened into its own (recursively)."""
    return [item for t in transforms for item in (opened(t.transforms) if _opens(t) else [t])]


def configured_transforms(transforms: Iterable[Any]) -> list[Any]:
    """The configured MONAI transforms behind `transforms`, in the order they run (plain `Compose`s opened, each
    wrapper replaced by what it wraps, a fused pair by both): the all-MONAI reference path."""
    out: list[Any] = []
    for transform in opened(transforms):
        if isinstance(transform, FastInvertArgmaxd):
            out += [transform.wrapped, getattr(transform.discrete, "wrapped", transform.discrete)]
        else:
            out.append(getattr(transform, "wrapped", transform))
    return out

"""`ScaleIntensityRangePercentilesd` with the same results at a fraction of the cost.

MONAI computes the two percentiles with `torch.quantile` for images up to 10⁶ voxels: a full sort per
percentile, ~0.35 s each on a 96³ DeepGrow crop on a loaded CPU core, more than the click's network forward.
Here both come from `percentile_pair`: the same linear interpolation between the same order statistics (what
`numpy.percentile` gives, which MONAI itself uses above 10⁶ voxels), so the same values up to float rounding;
the order statistics are selected from the image's tails only (`order_statistics`), ~4× faster than one
`numpy.percentile` call on a 96³ crop. Everything else (relative, channel-wise, clip, dtype, the keys) is
MONAI's. `inference.fast_paths` puts it in place of a configured MONAI transform.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from monai.transforms import ScaleIntensityRange, ScaleIntensityRangePercentilesd
from monai.transforms import ScaleIntensityRangePercentiles as _MonaiScaleIntensityRangePercentiles
from monai.utils import convert_to_tensor

_TAIL_SELECTION_MIN = 1 << 16  # smaller images: one numpy.percentile call costs less than the tail selection
_SAMPLE_SIZE = 1 << 14  # values the tail thresholds are estimated from
_TAIL_MARGIN = 2.0  # the estimated tail holds this many times the values it needs, plus 0.5 % of the image


def percentile_pair(image: torch.Tensor | np.ndarray, lower: float, upper: float) -> tuple[float, float]:
    """The `lower` and `upper` percentiles (0–100, linear interpolation, as `numpy.percentile`) of all values
    of `image`; the same values up to float rounding, from the exact order statistics (`order_statistics`).
    NaN anywhere gives NaN for both, as in numpy."""
    values = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    values = values.reshape(-1)
    count = values.size
    if values.dtype.kind == "f" and np.isnan(values.min()):
        return math.nan, math.nan
    positions = [q / 100.0 * (count - 1) for q in (lower, upper)]
    below = [min(int(np.floor(p)), count - 1) for p in positions]
    ranks = sorted({rank for b in below for rank in (b, min(b + 1, count - 1))})
    stats = order_statistics(values, ranks)
    pair = []
    for position, rank in zip(positions, below):
        low, high = float(stats[rank]), float(stats[min(rank + 1, count - 1)])
        fraction = position - rank
        pair.append(low + (high - low) * fraction if fraction < 0.5 else high - (high - low) * (1.0 - fraction))
    return pair[0], pair[1]


def order_statistics(values: np.ndarray, ranks: list[int]) -> dict[int, Any]:
    """The values of `values` (1D, real, no NaN) at sorted positions `ranks` (0-based, ascending), exactly as
    a full sort would put them.

    Large arrays are not partitioned whole: the values below (above) a threshold estimated from a strided
    sample hold the lowest (highest) ranks, and only those are partitioned. Where the threshold proves too
    tight, or a rank lies in the middle, the whole array is partitioned instead.
    """
    count = values.size
    if count < _TAIL_SELECTION_MIN or not ranks:
        return _partitioned(values, ranks)
    middle = count // 2
    low_ranks, high_ranks = [r for r in ranks if r < middle], [r for r in ranks if r >= middle]
    sample = values[:: max(1, count // _SAMPLE_SIZE)]
    found: dict[int, Any] = {}
    for tail, side_ranks in (("low", low_ranks), ("high", high_ranks)):
        if not side_ranks:
            continue
        needed = (max(side_ranks) + 1) if tail == "low" else (count - min(side_ranks))
        part = _tail_statistics(values, sample, side_ranks, needed, tail)
        if part is None:
            return _partitioned(values, ranks)
        found.update(part)
    return found


def _tail_statistics(values: np.ndarray, sample: np.ndarray, ranks: list[int], needed: int, tail: str
                     ) -> dict[int, Any] | None:
    """`order_statistics` of the `needed` lowest (`tail` "low") or highest values, from the values beyond a
    sample-estimated threshold; None when that tail would hold half the array or more, or misses a rank."""
    count = values.size
    share = min(1.0, _TAIL_MARGIN * needed / count + 0.005)
    if share >= 0.5:
        return None
    threshold = np.quantile(sample, share if tail == "low" else 1.0 - share)
    tail_values = values[values <= threshold] if tail == "low" else values[values >= threshold]
    if tail_values.size < needed:
        return None
    offset = 0 if tail == "low" else count - tail_values.size
    local = _partitioned(tail_values, [rank - offset for rank in ranks])
    return {rank: local[rank - offset] for rank in ranks}


def _partitioned(values: np.ndarray, ranks: list[int]) -> dict[int, Any]:
    arranged = np.partition(values, ranks) if ranks else values
    return {rank: arranged[rank] for rank in ranks}


class _PercentilePairScaling(_MonaiScaleIntensityRangePercentiles):
    """MONAI's `ScaleIntensityRangePercentiles` (same Args) with both percentiles from `percentile_pair`."""

    def _normalize(self, img: Any) -> Any:
        a_min, a_max = percentile_pair(img, self.lower, self.upper)
        b_min, b_max = self.b_min, self.b_max
        if self.relative:
            if b_min is None or b_max is None:
                raise ValueError("If it is relative, b_min and b_max should not be None.")
            span = b_max - b_min
            b_min, b_max = span * (self.lower / 100.0) + b_min, span * (self.upper / 100.0) + b_min
        scaler = ScaleIntensityRange(a_min=a_min, a_max=a_max, b_min=b_min, b_max=b_max, clip=self.clip, dtype=self.dtype)
        return convert_to_tensor(scaler(img), track_meta=False)


class FastScaleIntensityRangePercentilesd:
    """A configured MONAI `ScaleIntensityRangePercentilesd` whose percentiles come from one partial sort.

    Args:
        scaling: the configured MONAI transform (kept as `wrapped`); same output as it.
    """

    def __init__(self, scaling: ScaleIntensityRangePercentilesd) -> None:
        self.wrapped = scaling
        monai = scaling.scaler
        self.scaler = _PercentilePairScaling(
            monai.lower, monai.upper, monai.b_min, monai.b_max, clip=monai.clip, relative=monai.relative,
            channel_wise=monai.channel_wise, dtype=monai.dtype,
        )

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        """A copy of `data` with the keys scaled."""
        d = dict(data)
        for key in self.wrapped.key_iterator(d):
            d[key] = self.scaler(d[key])
        return d

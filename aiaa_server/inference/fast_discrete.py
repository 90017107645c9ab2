"""A fast path for MONAI's `AsDiscreted(argmax=True)` on channel-first network outputs.

`torch.argmax(x, dim=0)` on a (C, *spatial) CPU tensor reduces across the outermost, strided axis and runs
at a fraction of memory speed (0.6 s for 2 × 165 × 165 × 120 on the test machine, 20× a softmax over the same
tensor). A running comparison, channel by channel, reads each channel once contiguously and gives the same
labels: a later channel wins only when strictly greater, which is `argmax`'s first-maximum rule. Inputs
holding NaN (where `argmax` picks the NaN) and every other option (one-hot, threshold, rounding, `dim`,
`keepdim`, `dtype` overrides) run the wrapped transform unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
from monai.transforms import AsDiscreted
from monai.utils import convert_to_dst_type


def channel_argmax(values: torch.Tensor) -> torch.Tensor:
    """The index of the largest channel per voxel, first one on ties.

    Args:
        values: (C, *spatial) float tensor without NaN.

    Returns:
        (1, *spatial) uint8 tensor (int64 beyond 256 channels), equal in value to
        `torch.argmax(values, dim=0, keepdim=True)`.
    """
    best = values[0].clone()
    small = torch.uint8 if values.shape[0] <= 256 else torch.int64  # 1 byte a voxel while comparing
    labels = torch.zeros(values.shape[1:], dtype=small, device=values.device)
    for channel in range(1, values.shape[0]):
        wins = values[channel] > best
        labels.masked_fill_(wins, channel)
        torch.maximum(best, values[channel], out=best)
    return labels[None]


def plain_argmax(converter: Any, argmax: bool, to_onehot: Any, threshold: Any, rounding: Any) -> bool:
    """Whether this key's settings are a bare channel argmax (MONAI's defaults: dim 0, keepdim, float)."""
    return bool(argmax) and to_onehot is None and threshold is None and rounding is None and not converter.kwargs


class FastAsDiscreted:
    """`AsDiscreted` whose plain `argmax=True` keys take `channel_argmax` (see the module doc).

    Args:
        discrete: the configured MONAI `AsDiscreted`.

    Same output as `discrete`: a float32 (1, *spatial) label map with the input's meta.
    """

    def __init__(self, discrete: AsDiscreted) -> None:
        self.wrapped = discrete

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        """A copy of `data` with the keys made discrete."""
        w = self.wrapped
        d = dict(data)
        for key, argmax, to_onehot, threshold, rounding in w.key_iterator(d, w.argmax, w.to_onehot, w.threshold,
                                                                           w.rounding):
            value = d[key]
            tensor = value.as_subclass(torch.Tensor) if isinstance(value, torch.Tensor) else None
            plain = plain_argmax(w.converter, argmax, to_onehot, threshold, rounding)
            if (not plain or tensor is None or tensor.ndim < 2 or not tensor.dtype.is_floating_point
                    or bool(torch.isnan(tensor).any())):
                d[key] = w.converter(value, argmax, to_onehot, threshold, rounding)
                continue
            d[key] = convert_to_dst_type(channel_argmax(tensor), value, dtype=torch.float)[0]
        return d

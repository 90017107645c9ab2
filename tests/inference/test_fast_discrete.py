"""FastAsDiscreted: the channel argmax fast path gives MONAI's AsDiscreted(argmax=True) result exactly."""

from __future__ import annotations

import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import AsDiscreted

from aiaa_server.inference.fast_discrete import FastAsDiscreted, channel_argmax


@pytest.mark.parametrize("channels", [1, 2, 3, 5])
def test_channel_argmax_is_torch_argmax_with_ties(channels: int) -> None:
    values = torch.randn(channels, 17, 13, 9)
    values[:, :4] = 0.5  # exact ties: the first channel wins, as in torch.argmax
    values[-1, 5] = values[0, 5]
    assert torch.equal(channel_argmax(values).long(), torch.argmax(values, dim=0, keepdim=True))


def test_output_equals_monai_with_meta() -> None:
    affine = torch.diag(torch.tensor([2.5, 2.5, 2.5, 1.0], dtype=torch.float64))
    logits = MetaTensor(torch.randn(2, 30, 28, 12), affine=affine, meta={"filename_or_obj": "x"})
    discrete = AsDiscreted(keys="pred", argmax=True)
    reference = discrete({"pred": logits})["pred"]
    fast = FastAsDiscreted(discrete)({"pred": logits})["pred"]
    assert isinstance(fast, MetaTensor) and fast.dtype == reference.dtype == torch.float32
    assert torch.equal(fast.as_tensor(), reference.as_tensor())
    assert torch.equal(fast.affine, reference.affine)
    assert fast.meta["filename_or_obj"] == "x"


@pytest.mark.parametrize("options", [{"argmax": True, "to_onehot": 2}, {"argmax": False, "threshold": 0.5},
                                     {"argmax": True, "keepdim": False}])
def test_other_options_run_monai(options: dict) -> None:
    discrete = AsDiscreted(keys="pred", **options)
    logits = torch.randn(2, 8, 8, 8)
    fast = FastAsDiscreted(discrete)({"pred": logits})["pred"]
    assert torch.equal(torch.as_tensor(fast), torch.as_tensor(discrete({"pred": logits})["pred"]))


def test_nan_takes_monai_argmax() -> None:
    logits = torch.randn(2, 6, 6, 6)
    logits[1, 0, 0, 0] = float("nan")
    discrete = AsDiscreted(keys="pred", argmax=True)
    fast = FastAsDiscreted(discrete)({"pred": logits})["pred"]
    assert torch.equal(torch.as_tensor(fast), torch.as_tensor(discrete({"pred": logits})["pred"]))
    assert float(fast[0, 0, 0, 0]) == 1.0

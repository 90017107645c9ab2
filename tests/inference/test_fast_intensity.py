"""The fast `ScaleIntensityRangePercentilesd` against MONAI's own."""

from __future__ import annotations

import monai.transforms as mt
import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from aiaa_server.inference.fast_intensity import FastScaleIntensityRangePercentilesd, percentile_pair


def _image(seed: int, shape: tuple[int, ...] = (2, 40, 36, 30)) -> MetaTensor:
    rng = np.random.default_rng(seed)
    values = rng.normal(100.0, 400.0, size=shape).astype(np.float32)
    values[:, :5] = -1024.0  # a block of air, as in CT, so the low percentile sits on a tie
    return MetaTensor(torch.from_numpy(values), affine=torch.diag(torch.tensor([0.8, 0.8, 2.5, 1.0])))


@pytest.mark.parametrize("args", [
    {"lower": 0.5, "upper": 99.5, "b_min": 0.0, "b_max": 1.0, "clip": True},
    {"lower": 5, "upper": 95, "b_min": -1.0, "b_max": 1.0, "clip": False, "relative": True},
    {"lower": 1, "upper": 99, "b_min": 0.0, "b_max": 1.0, "clip": True, "channel_wise": True},
    {"lower": 0, "upper": 100, "b_min": 0.0, "b_max": 255.0, "dtype": np.float32},
])
def test_same_result_as_monai(args: dict) -> None:
    monai = mt.ScaleIntensityRangePercentilesd(keys="image", **args)
    ours = FastScaleIntensityRangePercentilesd(monai)
    for seed in range(3):
        image = _image(seed)
        expected = monai({"image": image.clone()})["image"]
        got = ours({"image": image.clone()})["image"]
        assert got.dtype == expected.dtype and got.shape == expected.shape
        assert torch.allclose(got.as_tensor(), expected.as_tensor(), rtol=1e-5, atol=1e-5)
        assert torch.equal(got.affine, expected.affine)


def test_constant_image_as_monai() -> None:
    image = MetaTensor(torch.full((1, 8, 8, 8), 7.0))
    monai = mt.ScaleIntensityRangePercentilesd(keys="image", lower=1, upper=99, b_min=0.0, b_max=1.0, clip=True)
    got = FastScaleIntensityRangePercentilesd(monai)({"image": image.clone()})["image"]
    assert torch.equal(got.as_tensor(), monai({"image": image.clone()})["image"].as_tensor())


def test_missing_keys_follow_the_monai_setting() -> None:
    lenient = mt.ScaleIntensityRangePercentilesd(keys=["image", "other"], lower=1, upper=99, b_min=0.0, b_max=1.0,
                                                 allow_missing_keys=True)
    assert set(FastScaleIntensityRangePercentilesd(lenient)({"image": _image(0)})) == {"image"}
    strict = mt.ScaleIntensityRangePercentilesd(keys=["image", "other"], lower=1, upper=99, b_min=0.0, b_max=1.0)
    with pytest.raises(KeyError):
        FastScaleIntensityRangePercentilesd(strict)({"image": _image(0)})


def test_percentiles_match_torch_quantile() -> None:
    values = torch.from_numpy(np.random.default_rng(1).random(5000).astype(np.float32))
    low, high = percentile_pair(values, 0.5, 99.5)
    expected = torch.quantile(values, torch.tensor([0.005, 0.995]))
    assert low == pytest.approx(float(expected[0]), abs=1e-6) and high == pytest.approx(float(expected[1]), abs=1e-6)

"""The fast `ScaleIntensityRangePercentilesd` against MONAI's own."""

from __future__ import annotations

import monai.transforms as mt
import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from aiaa_server.inference.fast_intensity import (
    FastScaleIntensityRangePercentilesd,
    order_statistics,
    percentile_pair,
)


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


def _large(kind: str, seed: int) -> np.ndarray:
    """Arrays large enough for the tail selection (over 2¹⁶ values)."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(70_000, 300_000))
    if kind == "normal":
        return rng.normal(0.0, 1.0, n).astype(np.float32)
    if kind == "int16":
        return rng.integers(-1024, 3000, n).astype(np.int16)
    if kind == "air":  # 40 % ties at the minimum, as in CT
        return np.where(rng.random(n) < 0.4, -1024.0, rng.normal(40.0, 300.0, n)).astype(np.float32)
    return rng.exponential(1.0, n)


@pytest.mark.parametrize("kind", ["normal", "int16", "air", "float64"])
@pytest.mark.parametrize("quantiles", [(0.5, 99.5), (0.0, 100.0), (5.0, 50.0), (1.0, 99.0)])
def test_percentiles_equal_numpy(kind: str, quantiles: tuple[float, float]) -> None:
    for seed in range(3):
        values = _large(kind, seed)
        got = percentile_pair(values, *quantiles)
        expected = np.percentile(values, quantiles)
        assert got == pytest.approx(tuple(float(e) for e in expected), rel=1e-6, abs=1e-9)


def test_order_statistics_are_exact() -> None:
    values = _large("air", 7)
    ordered = np.sort(values)
    ranks = [0, 1, 200, 1500, len(values) // 2, len(values) - 300, len(values) - 1]
    got = order_statistics(values, ranks)
    assert [got[r] for r in ranks] == [ordered[r] for r in ranks]


def test_a_misleading_sample_falls_back_to_the_whole_array() -> None:
    # every sampled value (a stride of the array) is the minimum, so the estimated low tail is too small
    values = np.random.default_rng(3).uniform(0.0, 1.0, 100_000).astype(np.float32)
    values[:: max(1, values.size // 2**14)] = -5.0
    got = percentile_pair(values, 20.0, 99.5)
    assert got == pytest.approx(tuple(float(e) for e in np.percentile(values, [20.0, 99.5])), rel=1e-6)


def test_nan_gives_nan_as_numpy() -> None:
    values = _large("normal", 0)
    values[123] = np.nan
    low, high = percentile_pair(values, 0.5, 99.5)
    assert np.isnan(low) and np.isnan(high) and np.isnan(np.percentile(values, 0.5))

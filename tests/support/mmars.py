"""Real MMAR folders with small real TorchScript networks, built in temp dirs for tests."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch


class ThresholdNet(torch.nn.Module):
    """Two-channel logits whose argmax is `x > threshold`: lets tests predict the exact mask."""

    def __init__(self, threshold: float = 0.5) -> None:
        super().__init__()
        self.threshold = threshold

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.threshold - x, x - self.threshold], dim=1)


class SlowNet(torch.nn.Module):
    """A real convolutional workload repeated `repeats` times, then a threshold head (to keep the CPU busy)."""

    def __init__(self, repeats: int = 40, width: int = 16) -> None:
        super().__init__()
        self.repeats = repeats
        self.expand = torch.nn.Conv3d(1, width, 3, padding=1)
        self.body = torch.nn.Conv3d(width, width, 3, padding=1)
        self.head = ThresholdNet()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.expand(x)
        for _ in range(self.repeats):
            y = torch.tanh(self.body(y))
        return self.head(x) + 0.0 * y.mean()


SEGMENTATION_PRE = [
    {"name": "monai.transforms.LoadImaged", "args": {"keys": "image"}},
    {"name": "monai.transforms.AddChanneld", "args": {"keys": "image"}},
    {"name": "Orientationd", "args": {"keys": "image", "axcodes": "RAS"}},
    {"name": "Spacingd", "args": {"keys": "image", "pixdim": [2.0, 2.0, 2.0], "mode": "bilinear"}},
    {"name": "ScaleIntensityRanged",
     "args": {"keys": "image", "a_min": -500, "a_max": 500, "b_min": 0.0, "b_max": 1.0, "clip": True}},
]

SEGMENTATION_POST = [
    {"name": "monai.transforms.Activationsd", "args": {"keys": "pred", "softmax": True}},
    {"name": "monai.transforms.AsDiscreted", "args": {"keys": "pred", "argmax": True}},
    {"name": "aiaa.transforms.Restored", "args": {"keys": "pred", "ref_image": "image"}},
    {"name": "aiaa.transforms.ExtremePointsd", "args": {"keys": "pred", "result": "result", "points": "points"}},
    {"name": "aiaa.transforms.BoundingBoxd", "args": {"keys": "pred", "result": "result", "bbox": "bbox"}},
]


def segmentation_config(
    labels: list[str] | None = None,
    pre: list[dict[str, Any]] | None = None,
    post: list[dict[str, Any]] | None = None,
    scanning_window: bool = True,
    roi: list[int] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    args: dict[str, Any] = {"scanning_window": scanning_window}
    if scanning_window:
        args.update(roi=roi or [32, 32, 32], overlap=0.25, sw_batch_size=2)
    return {
        "version": 1,
        "type": "segmentation",
        "labels": labels if labels is not None else ["bright"],
        "description": "test model: voxels brighter than 0 HU",
        "pre_transforms": pre if pre is not None else copy.deepcopy(SEGMENTATION_PRE),
        "inference": {"input": "image", "output": "pred", "AIAA": {"name": "aiaa.inference.PyTorchInference",
                                                                    "args": args}},
        "post_transforms": post if post is not None else copy.deepcopy(SEGMENTATION_POST),
        "writer": {"name": "aiaa.transforms.Writer", "args": {"image": "pred", "json": "result"}},
        **extra,
    }


def write_mmar(folder: Path, config: dict[str, Any], network: torch.nn.Module | None = None) -> Path:
    """Write `config/config_aiaa.json` and (if given) `models/model.ts` (TorchScript) into `folder`."""
    (folder / "config").mkdir(parents=True, exist_ok=True)
    (folder / "config" / "config_aiaa.json").write_text(json.dumps(config, indent=2))
    if network is not None:
        (folder / "models").mkdir(exist_ok=True)
        torch.jit.save(torch.jit.script(network.eval()), str(folder / "models" / "model.ts"))
    return folder


def write_threshold_mmar(folder: Path, **config_overrides: Any) -> Path:
    return write_mmar(folder, segmentation_config(**config_overrides), ThresholdNet())


class MeanClassNet(torch.nn.Module):
    """Two-class logits from the image's mean: "bright" when the mean intensity is above `threshold`, with a
    probability tests can compute (`mean_class_probability`). Any number of spatial dims."""

    def __init__(self, threshold: float = 0.5, gain: float = 4.0) -> None:
        super().__init__()
        self.threshold = threshold
        self.gain = gain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.flatten(1).mean(dim=1, keepdim=True)
        return torch.cat([self.threshold - mean, mean - self.threshold], dim=1) * self.gain


def mean_class_probability(scaled_mean: float, threshold: float = 0.5, gain: float = 4.0) -> float:
    """MeanClassNet's softmax probability of its second class for an input of mean `scaled_mean`."""
    return float(torch.softmax(torch.tensor([threshold - scaled_mean, scaled_mean - threshold]) * gain, 0)[1])


def classification_config(labels: list[str] | None = None, spatial_dims: int = 3, **extra: Any) -> dict[str, Any]:
    """The issue's form: Clara `classification` type, softmax, `Writer` with `"image": null, "json": "pred"`;
    intensities scaled 0..1 over [-500, 500] (2D: over [0, 255])."""
    low, high = (-500, 500) if spatial_dims == 3 else (0, 255)
    return {
        "version": "2", "type": "classification", "labels": labels or ["dark", "bright"],
        "description": "test classifier: is the mean intensity bright",
        "pre_transforms": [
            {"name": "LoadImaged", "args": {"keys": "image"}},
            {"name": "EnsureChannelFirstd", "args": {"keys": "image", "channel_dim": "no_channel"}},
            {"name": "ScaleIntensityRanged",
             "args": {"keys": "image", "a_min": low, "a_max": high, "b_min": 0.0, "b_max": 1.0, "clip": True}},
        ],
        "inference": {"input": "image", "output": "pred", "meta_data": {"spatial_dims": spatial_dims},
                      "AIAA": {"name": "aiaa.inference.PyTorchInference", "args": {"scanning_window": False}}},
        "post_transforms": [{"name": "Activationsd", "args": {"keys": "pred", "softmax": True}}],
        "writer": {"name": "aiaa.transforms.Writer", "args": {"image": None, "json": "pred"}},
        **extra,
    }

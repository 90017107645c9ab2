"""A small trainable segmentation MMAR (a real TorchScript conv net) and labelled volumes it can learn from."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tests.support.mmars import segmentation_config, write_mmar


class TinySegNet(torch.nn.Module):
    """Three 3D convolutions, two output channels (background, foreground); untrained it segments nothing useful."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv3d(1, width, 3, padding=1), torch.nn.ReLU(),
            torch.nn.Conv3d(width, width, 3, padding=1), torch.nn.ReLU(),
            torch.nn.Conv3d(width, 2, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def write_trainable_mmar(folder: Path, seed: int = 0) -> Path:
    """A segmentation MMAR (label `ball`, 2 mm resampling, 32³ scanning window) with a randomly initialised
    `TinySegNet`: a deliberately weak starting point for fine-tuning."""
    torch.manual_seed(seed)
    config = segmentation_config(labels=["ball"], scanning_window=True, roi=[32, 32, 32])
    config["description"] = "test model: a tiny trainable net, untrained"
    return write_mmar(folder, config, TinySegNet())


def ball_volume(rng: np.random.Generator, shape: tuple[int, int, int] = (40, 40, 32)) -> tuple[np.ndarray, np.ndarray]:
    """int16 HU volume with one bright ball (+ noise) at a random place, and its mask (uint8)."""
    grid = np.indices(shape).astype(np.float32)
    centre = [rng.uniform(10, s - 10) for s in shape]
    radius = rng.uniform(5, 8)
    mask = (sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)) <= radius**2).astype(np.uint8)
    image = np.where(mask > 0, 200.0, -300.0) + rng.normal(0, 40, shape)
    return image.astype(np.int16), mask

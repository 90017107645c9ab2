"""The demo classifier's cases: abdominal phantoms (aiaa_demo.phantoms), half of them with the spleen removed.

Case ``i`` of a stream uses ``np.random.default_rng((seed, stream, i))``: stream 0 trains, stream 1 is held out
for ``evaluate.py``, so the two sets never coincide. Even cases keep their spleen (label 1, "spleen"); odd ones
have every spleen voxel replaced by fat of the same scan (values drawn from its own fat voxels, so the noise and
blur match), as after a splenectomy (label 0, "no spleen").
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import torch

from aiaa_demo.phantoms import ORGAN_LABELS, Phantom, make_abdomen_phantom

MMAR_DIR = Path(__file__).resolve().parents[1]
LABELS = ("no spleen", "spleen")
FAT_HU = (-150.0, -50.0)


def case(seed: int, stream: int, index: int) -> tuple[Phantom, int]:
    """Phantom ``index`` of ``stream`` and its label (1: spleen kept, 0: removed)."""
    rng = np.random.default_rng((seed, stream, index))
    phantom = make_abdomen_phantom(rng)
    label = 1 - index % 2
    if label == 0:
        remove_spleen(phantom, rng)
    return phantom, label


def remove_spleen(phantom: Phantom, rng: np.random.Generator) -> None:
    """Replace the spleen's voxels by the scan's own fat values (in place); the label map loses the spleen."""
    spleen = phantom.labels == ORGAN_LABELS["spleen"]
    image = phantom.image
    fat = image[(phantom.labels == 0) & (image > FAT_HU[0]) & (image < FAT_HU[1])]
    image[spleen] = rng.choice(fat, size=int(spleen.sum())) if fat.size else -100.0
    phantom.labels[spleen] = 0


class TinyClassifier(torch.nn.Module):
    """Four conv blocks (8-16-32-32 channels, the first three halving the grid), global max pooling, a linear
    head: (N, 1, X, Y, Z) -> (N, 2) logits, for any spatial size divisible by 8."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[torch.nn.Module] = []
        channels = [1, 8, 16, 32, 32]
        for block, (c_in, c_out) in enumerate(itertools.pairwise(channels)):
            layers += [torch.nn.Conv3d(c_in, c_out, 3, padding=1), torch.nn.BatchNorm3d(c_out), torch.nn.ReLU()]
            if block < len(channels) - 2:  # total stride 8, as the demo UNets: aiaa_demo.export's sizes fit
                layers.append(torch.nn.MaxPool3d(2))
        self.features = torch.nn.Sequential(*layers)
        self.head = torch.nn.Linear(channels[-1], len(LABELS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.amax(self.features(x), dim=(2, 3, 4)))

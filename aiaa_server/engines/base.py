"""The engine interface the inference pipeline calls; it never knows which engine runs."""

from __future__ import annotations

from typing import Protocol

import torch


class Engine(Protocol):
    """Runs the network on a batch `(N, C, *spatial)` and returns `(N, C_out, *spatial)`."""

    name: str
    device: torch.device

    def __call__(self, batch: torch.Tensor) -> torch.Tensor: ...

"""The engine interfaces: what the inference pipeline calls, and what builds and forgets engines for models."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import torch

if TYPE_CHECKING:
    from aiaa_server.mmar.config import AIAAConfig


class Engine(Protocol):
    """Runs the network on a batch `(N, C, *spatial)` and returns `(N, C_out, *spatial)`."""

    name: str
    device: torch.device

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """Run the network on `batch` (N, C, *spatial); returns its first output, on `device` (CPU for Triton)."""
        ...


class EngineProvider(Protocol):
    """Builds each model's engine and forgets engines built from a file (what the model registry needs)."""

    def create(self, name: str, model_file: Path, config: AIAAConfig, device: str | None = None) -> Engine:
        """The engine running model `name` from its `model_file` (`models/model.pt2` torch.export program, or
        TorchScript `model.ts`/`model.pt`) (`device`: e.g. "cuda:0")."""
        ...

    def evict(self, path: Path) -> None:
        """Forget every engine built from the model file `path` (deleted or replaced)."""
        ...

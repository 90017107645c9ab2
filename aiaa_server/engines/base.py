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
        """Run the network on `batch` (N, C, *spatial); returns its first output on `device`, except where the
        output goes back to the host: Triton, and a CUDA engine given a CPU batch (`engines.cuda`)."""
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


class ModuleEngine:
    """The Engine protocol over a callable torch module on one device (a TorchScript module, an
    ExportedProgram's module, an eager network).

    Args:
        module: maps (N, C, *spatial) float32 to the network output (a tensor, or a tuple/list/dict of them).
        device: where the module's weights are and where batches are moved.
        name: the model name.
    """

    def __init__(self, module: torch.nn.Module | torch.jit.ScriptModule, device: torch.device, name: str) -> None:
        self.module = module
        self.device = device
        self.name = name

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """Run the module on `batch` (N, C, *spatial), moved to the device as float32, in inference mode.

        Returns:
            The output tensor on the device; of a tuple/list output its first item, of a dict its first value.
        """
        with torch.inference_mode():
            output = self.module(batch.to(self.device, dtype=torch.float32))
        if isinstance(output, (tuple, list)):
            output = output[0]
        if isinstance(output, dict):
            output = next(iter(output.values()))
        return output

"""Small real `torch.export` programs (`models/model.pt2`) for tests."""

from __future__ import annotations

from pathlib import Path

import torch


def save_program(network: torch.nn.Module, path: Path, example_shape: tuple[int, ...] = (2, 1, 4, 4, 4)) -> Path:
    """Export `network` in eval mode with every axis dynamic (sizes >= 2 at export; any size at run time where
    the network allows) and `torch.export.save` it to `path`."""
    dims = {axis: torch.export.Dim.AUTO for axis in range(len(example_shape))}
    with torch.no_grad():
        program = torch.export.export(network.eval(), (torch.zeros(example_shape),), dynamic_shapes=(dims,))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, str(path))
    return path


def add_program(mmar: Path, network: torch.nn.Module) -> Path:
    """Write `mmar/models/model.pt2` (beside whatever TorchScript file the MMAR has)."""
    return save_program(network, mmar / "models" / "model.pt2")

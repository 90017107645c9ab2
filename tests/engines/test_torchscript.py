"""The local TorchScript engine."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from aiaa_server.engines.torchscript import TorchScriptPool, resolve_device
from aiaa_server.errors import InvalidModel
from tests.support.mmars import ThresholdNet


def test_loaded_once_per_file_and_device(tmp_path: Path) -> None:
    path = tmp_path / "model.ts"
    torch.jit.save(torch.jit.script(ThresholdNet()), str(path))
    pool = TorchScriptPool()
    first = pool.get(path, torch.device("cpu"), "m")
    assert pool.get(path, torch.device("cpu"), "m") is first
    output = first(torch.tensor([[[[[0.2, 0.9]]]]]))
    assert output.argmax(dim=1).flatten().tolist() == [0, 1]


def test_pickled_checkpoint_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.ts"
    torch.save({"state_dict": ThresholdNet().state_dict()}, str(path))
    with pytest.raises(InvalidModel, match="not a loadable TorchScript"):
        TorchScriptPool().get(path, torch.device("cpu"), "m")


def test_cuda_request_falls_back_to_cpu_without_gpu() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("cuda", "cpu").type == expected
    assert resolve_device(None, "cpu").type == "cpu"

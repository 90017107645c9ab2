"""The local engine for torch.export programs (`models/model.pt2`), through the shared pool."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from aiaa_server.engines.exported import ExportedEngine, looks_like_exported_program
from aiaa_server.engines.torchscript import TorchScriptEngine, TorchScriptPool
from aiaa_server.errors import InvalidModel
from tests.support.mmars import ThresholdNet
from tests.support.programs import save_program

CPU = torch.device("cpu")


def test_program_is_served_cached_reloaded_when_rewritten_and_evicted(tmp_path: Path) -> None:
    path = save_program(ThresholdNet(), tmp_path / "model.pt2")
    pool = TorchScriptPool()
    engine = pool.get(path, CPU, "m")
    assert isinstance(engine, ExportedEngine) and (engine.name, engine.device) == ("m", CPU)
    assert pool.get(path, CPU, "m") is engine and len(pool) == 1
    x = torch.tensor([0.2, 0.9, 0.4, 0.7, 0.1, 0.6, 0.3, 0.8]).reshape(1, 1, 2, 2, 2)
    output = engine(x.double())  # any dtype in: float32 to the program
    assert output.dtype == torch.float32 and output.shape == (1, 2, 2, 2, 2)
    assert output.argmax(dim=1).flatten().tolist() == [0, 1, 0, 1, 0, 1, 0, 1]
    bigger = engine(torch.rand(3, 1, 5, 6, 7))  # dynamic batch and spatial sizes
    assert bigger.shape == (3, 2, 5, 6, 7)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # rewritten: a new mtime
    assert pool.get(path, CPU, "m") is not engine and len(pool) == 2
    pool.evict(path)
    assert len(pool) == 0


def test_suffix_picks_the_loader(tmp_path: Path) -> None:
    torchscript = tmp_path / "model.ts"
    torch.jit.save(torch.jit.script(ThresholdNet()), str(torchscript))
    program = save_program(ThresholdNet(), tmp_path / "model.pt2")
    pool = TorchScriptPool()
    assert isinstance(pool.get(torchscript, CPU, "a"), TorchScriptEngine)
    assert isinstance(pool.get(program, CPU, "b"), ExportedEngine)


@pytest.mark.parametrize("content", ["garbage", "truncated", "torchscript", "pickle"])
def test_corrupt_program_is_an_invalid_model_naming_the_file(tmp_path: Path, content: str) -> None:
    path = tmp_path / "model.pt2"
    if content == "garbage":
        path.write_bytes(b"not a zip at all" * 10)
    elif content == "truncated":
        whole = save_program(ThresholdNet(), tmp_path / "whole.pt2").read_bytes()
        path.write_bytes(whole[: len(whole) // 2])
    elif content == "torchscript":
        torch.jit.save(torch.jit.script(ThresholdNet()), str(path))
    else:
        torch.save({"state_dict": torch.nn.Conv3d(1, 1, 1).state_dict()}, str(path))
    with pytest.raises(InvalidModel, match=r"model\.pt2 is not a loadable torch\.export program") as caught:
        TorchScriptPool().get(path, CPU, "m")
    assert caught.value.details["file"] == "model.pt2"


class _TrainModeNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv3d(1, 4, 3, padding=1)
        self.norm = torch.nn.BatchNorm3d(4)
        self.drop = torch.nn.Dropout(0.5)
        self.head = torch.nn.Conv3d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.norm(self.conv(x))))


def test_program_exported_in_training_mode_is_served_in_eval_mode(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = _TrainModeNet()
    with torch.no_grad():
        for _ in range(3):  # running statistics away from their initial 0/1
            net(torch.randn(2, 1, 6, 6, 6) * 3 + 1)
    net.train()
    program = torch.export.export(net, (torch.randn(2, 1, 6, 6, 6),))  # training mode: dropout on, batch stats
    path = tmp_path / "model.pt2"
    torch.export.save(program, str(path))
    engine = TorchScriptPool().get(path, CPU, "m")
    x = torch.randn(2, 1, 6, 6, 6)
    with torch.no_grad():
        expected = net.eval()(x)
    first, second = engine(x), engine(x)
    assert torch.equal(first, second)  # no dropout
    torch.testing.assert_close(first, expected)  # running statistics, as in eval()


def test_exported_programs_are_recognised_by_their_archive(tmp_path: Path) -> None:
    program = save_program(ThresholdNet(), tmp_path / "model.pt2")
    torchscript = tmp_path / "model.ts"
    torch.jit.save(torch.jit.script(ThresholdNet()), str(torchscript))
    garbage = tmp_path / "x.bin"
    garbage.write_bytes(b"PK\x03\x04 nope")
    assert looks_like_exported_program(program)
    assert not looks_like_exported_program(torchscript) and not looks_like_exported_program(garbage)

"""CPU forwards on oneDNN: the exported programs' convolutions switched to `mkldnn_convolution`, TorchScript
frozen and optimized for inference; same values as the plain module, and off for autocast."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from aiaa_server.engines.exported import load_exported, use_onednn_convolutions
from aiaa_server.engines.factory import EngineFactory
from aiaa_server.engines.torchscript import TorchScriptPool, load_torchscript
from aiaa_server.mmar.loader import read_config

MODELS = Path(__file__).resolve().parents[2] / "models"
ONEDNN = torch.ops.aten.mkldnn_convolution.default


class SmallUNetLike(nn.Module):
    """Convolutions on a small deep feature map with a batch of one (where PyTorch would pick its slow kernel),
    a strided and a dilated one, batch norm and a transposed convolution."""

    def __init__(self) -> None:
        super().__init__()
        self.down = nn.Sequential(nn.Conv3d(2, 8, 3, padding=1), nn.BatchNorm3d(8), nn.PReLU(),
                                  nn.Conv3d(8, 16, 3, stride=2, padding=1), nn.Conv3d(16, 16, 3, padding=2, dilation=2),
                                  nn.Conv3d(16, 16, 1, bias=False))
        self.up = nn.ConvTranspose3d(16, 2, 2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))


def _network() -> nn.Module:
    torch.manual_seed(0)
    network = SmallUNetLike().eval()
    with torch.no_grad():  # non-trivial running statistics, so folding them is checked
        network.down[1].running_mean.uniform_(-0.5, 0.5)
        network.down[1].running_var.uniform_(0.5, 2.0)
    return network


def _count(module: torch.nn.Module, target: object) -> int:
    return sum(1 for node in module.graph.nodes if node.op == "call_function" and node.target is target)


def test_exported_convolutions_run_on_onednn_with_the_same_values(tmp_path: Path) -> None:
    network, x = _network(), torch.rand(1, 2, 12, 10, 8)
    path = tmp_path / "model.pt2"
    torch.export.save(torch.export.export(network, (x,)), str(path))
    plain = load_exported(path, torch.device("cpu"), optimize=False)
    fast = load_exported(path, torch.device("cpu"))
    assert _count(plain, ONEDNN) == 0 and _count(fast, ONEDNN) == 4  # the transposed one keeps PyTorch's kernel
    assert _count(fast, torch.ops.aten.conv_transpose3d.input) == 1
    with torch.inference_mode():
        expected = network(x)
        assert torch.allclose(fast(x), expected, atol=1e-5) and torch.allclose(plain(x), expected, atol=1e-5)
    assert use_onednn_convolutions(fast) == 0  # nothing left to switch


def test_torchscript_is_frozen_and_optimized_on_the_cpu_only_for_float32(tmp_path: Path) -> None:
    network, x = _network(), torch.rand(1, 2, 12, 10, 8)
    path = tmp_path / "model.ts"
    torch.jit.save(torch.jit.script(network), str(path))
    fast = load_torchscript(path, torch.device("cpu"))
    plain = load_torchscript(path, torch.device("cpu"), optimize=False)
    assert "down" not in dict(fast.named_children())  # frozen: submodules inlined, batch norm folded
    assert "down" in dict(plain.named_children())
    with torch.inference_mode():
        expected = network(x)
        assert torch.allclose(fast(x), expected, atol=1e-5) and torch.allclose(plain(x), expected, atol=1e-5)
        assert fast(torch.rand(2, 2, 8, 8, 8)).shape == (2, 2, 8, 8, 8)  # other shapes still run


def test_the_factory_loads_autocast_models_without_onednn_kernels() -> None:
    pool = TorchScriptPool()
    model = MODELS / "demo_deepgrow_3d"
    config = read_config(model / "config" / "config_aiaa.json")
    engine = EngineFactory(pool, precision="bfloat16").create("demo_deepgrow_3d", model / "models" / "model.pt2", config)
    output = engine(torch.rand(1, 3, 32, 32, 32))
    assert output.dtype == torch.float32 and output.shape == (1, 1, 32, 32, 32)
    float32 = EngineFactory(pool).create("demo_deepgrow_3d", model / "models" / "model.pt2", config)
    assert _count(float32.module, ONEDNN) > 0 and len(pool) == 2  # one engine per kernel choice

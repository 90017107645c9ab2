"""The demos' torch.export programs (`aiaa_demo.export`): served by default with no TorchScript deprecation
warning, and giving the output of their `model.ts` on the shapes each config feeds them."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import pytest
import torch

from aiaa_demo.export import TOLERANCE, check_program, config_shapes, export_program
from aiaa_server.engines.exported import ExportedEngine
from aiaa_server.engines.torchscript import TorchScriptPool
from aiaa_server.mmar.config import ModelType
from aiaa_server.mmar.loader import load_mmar

MODELS = Path(__file__).resolve().parents[2] / "models"
DEMOS = sorted(p.parents[1].name for p in MODELS.glob("*/models/model.ts"))


def _jit_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if "torch.jit" in str(w.message) or "/torch/jit/" in w.filename]


def test_every_demo_with_torchscript_has_a_program() -> None:
    assert DEMOS == ["demo_deepgrow_2d", "demo_deepgrow_3d", "demo_dextr3d_annotation", "demo_spleen_ct_segmentation",
                     "demo_spleen_presence_classification"]
    for demo in DEMOS:
        assert (MODELS / demo / "models" / "model.pt2").stat().st_size <= 30 * 2**20, demo


@pytest.mark.parametrize("demo", DEMOS)
def test_demo_loads_its_program_without_torchscript_warnings(demo: str, tmp_path: Path) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = load_mmar(MODELS / demo, TorchScriptPool())
        engine = model.pipeline.engine
        shape = config_shapes(MODELS / demo)[0]
        classes = model.config.type is ModelType.CLASSIFICATION  # (N, C) scores, no spatial axes
        assert engine is not None and engine(torch.zeros(shape)).shape[2:] == (() if classes else shape[2:])
    assert isinstance(engine, ExportedEngine) and model.model_file == MODELS / demo / "models" / "model.pt2"
    assert _jit_warnings(caught) == []
    # The check can fail: the same MMAR with only its model.ts warns.
    copy = shutil.copytree(MODELS / demo, tmp_path / demo, ignore=shutil.ignore_patterns("model.pt2", "commands"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_mmar(copy, TorchScriptPool())
    assert _jit_warnings(caught)


@pytest.mark.parametrize("demo", DEMOS)
def test_demo_program_gives_the_torchscript_output(demo: str) -> None:
    shapes = config_shapes(MODELS / demo)
    torchscript = torch.jit.load(str(MODELS / demo / "models" / "model.ts"), map_location="cpu").eval()
    errors = check_program(MODELS / demo / "models" / "model.pt2", torchscript, shapes, seed=1)
    assert set(errors) == set(shapes) and max(errors.values()) < TOLERANCE
    engine = TorchScriptPool().get(MODELS / demo / "models" / "model.pt2", torch.device("cpu"), demo)
    x = torch.rand(shapes[0])
    with torch.inference_mode():
        assert float((engine(x) - torchscript(x)).abs().max()) < TOLERANCE


def test_config_shapes_cover_the_sliding_window_batches() -> None:
    assert config_shapes(MODELS / "demo_spleen_ct_segmentation") == [
        (1, 1, 64, 64, 64), (4, 1, 64, 64, 64), (2, 1, 16, 24, 32)]
    assert config_shapes(MODELS / "demo_deepgrow_2d")[0] == (1, 3, 128, 128)


def _tiny() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(4, 1, 1))


def test_export_program_has_dynamic_sizes_and_the_check_catches_another_network(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = _tiny()
    path = tmp_path / "model.pt2"
    export_program(net, path, channels=1, spatial_dims=3)
    assert net.training  # left as it was
    errors = check_program(path, net.eval(), [(1, 1, 16, 16, 16), (3, 1, 8, 24, 40)])
    assert max(errors.values()) < TOLERANCE
    with pytest.raises(AssertionError, match="differs"):
        check_program(path, _tiny().eval(), [(1, 1, 16, 16, 16)])

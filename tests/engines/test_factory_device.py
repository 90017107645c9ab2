"""The engine factory's device options: precision (server and per model) and click batching of interactive
models, from the server's settings to the engines the bundled models get."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from aiaa_server.engines.batching import BatchingEngine
from aiaa_server.engines.cuda import AcceleratedEngine
from aiaa_server.engines.factory import EngineFactory
from aiaa_server.engines.torchscript import TorchScriptEngine, TorchScriptPool
from aiaa_server.mmar.loader import parse_config, read_config
from aiaa_server.services.runtime import factory_from_settings
from aiaa_server.settings import Settings, settings_from_cli

MODELS = Path(__file__).resolve().parents[2] / "models"
CONFIG = Path("config") / "config_aiaa.json"
MODEL = Path("models") / "model.ts"


def create(factory: EngineFactory, model: str, config: dict | None = None) -> object:
    parsed = parse_config(config) if config is not None else read_config(MODELS / model / CONFIG)
    return factory.create(model, MODELS / model / MODEL, parsed)


def test_defaults_leave_the_plain_engine() -> None:
    factory = EngineFactory(TorchScriptPool())
    assert isinstance(create(factory, "demo_deepgrow_3d"), TorchScriptEngine)
    assert isinstance(create(factory, "demo_spleen_ct_segmentation"), TorchScriptEngine)


def test_click_batching_wraps_interactive_models_only() -> None:
    factory = EngineFactory(TorchScriptPool(), click_batch_ms=5.0, click_batch_max=4)
    for interactive in ("demo_deepgrow_3d", "demo_dextr3d_annotation"):
        engine = create(factory, interactive)
        assert isinstance(engine, BatchingEngine)
        assert (engine.window_s, engine.max_batch) == (0.005, 4)
    assert isinstance(create(factory, "demo_spleen_ct_segmentation"), TorchScriptEngine)


def test_server_precision_and_per_model_override() -> None:
    factory = EngineFactory(TorchScriptPool(), precision="bfloat16")
    engine = create(factory, "demo_spleen_ct_segmentation")
    assert isinstance(engine, AcceleratedEngine) and engine.precision == "bfloat16"
    raw = json.loads((MODELS / "demo_spleen_ct_segmentation" / CONFIG).read_text())
    raw["inference"]["AIAA"]["args"]["precision"] = "float32"
    assert isinstance(create(factory, "demo_spleen_ct_segmentation", raw), TorchScriptEngine)
    raw["inference"]["AIAA"]["args"]["precision"] = "float16"
    engine = create(EngineFactory(TorchScriptPool()), "demo_spleen_ct_segmentation", raw)
    assert isinstance(engine, AcceleratedEngine) and engine.precision == "float16"
    output = engine(torch.zeros(1, 1, 64, 64, 64))
    assert output.dtype == torch.float32 and output.shape == (1, 2, 64, 64, 64)


def test_a_bad_model_precision_is_refused() -> None:
    raw = json.loads((MODELS / "demo_spleen_ct_segmentation" / CONFIG).read_text())
    raw["inference"]["AIAA"]["args"]["precision"] = "int8"
    with pytest.raises(Exception, match="precision"):
        parse_config(raw)


def test_settings_reach_the_factory(tmp_path: Path) -> None:
    settings = settings_from_cli(["--workspace", str(tmp_path), "--precision", "BFloat16", "--click_batch_ms", "5",
                                  "--click_batch_max", "6"])
    factory = factory_from_settings(settings)
    assert (factory.precision, factory.click_batch_ms, factory.click_batch_max) == ("bfloat16", 5.0, 6)
    defaults = Settings(workspace=tmp_path)
    assert (defaults.precision, defaults.click_batch_ms) == ("float32", 0.0)


@pytest.mark.parametrize(("args", "option"), [(["--precision", "int8"], "--precision"),
                                              (["--click_batch_ms", "-1"], "--click_batch_ms"),
                                              (["--click_batch_max", "0"], "--click_batch_max")])
def test_bad_device_options_exit_2_naming_the_option(capsys: pytest.CaptureFixture[str], args: list[str],
                                                    option: str) -> None:
    from aiaa_server.cli import main

    with pytest.raises(SystemExit) as exited:
        main(args)
    assert exited.value.code == 2
    assert option in capsys.readouterr().err

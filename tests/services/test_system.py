"""Health, readiness, log tail and model overview, called directly (the HTTP shell: tests/api/test_system_api.py)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from aiaa_server import __version__
from aiaa_server.engines.torchscript import TorchScriptPool
from aiaa_server.logs import LogTail
from aiaa_server.mmar.registry import ModelRegistry
from aiaa_server.services.system import Readiness, SystemService
from tests.support.mmars import write_threshold_mmar


class ServerEngine:
    """An engine that reports its own state, as Triton-backed ones do."""

    def __init__(self, state: str) -> None:
        self.state = state

    def readiness(self) -> str:
        return self.state


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    write_threshold_mmar(root / "alpha", labels=["spleen"])
    write_threshold_mmar(root / "beta", labels=["liver"])
    broken = root / "broken" / "config"
    broken.mkdir(parents=True)
    (broken / "config_aiaa.json").write_text(json.dumps({"type": "segmentation",
                                                          "pre_transforms": [{"name": "NoSuchThing"}]}))
    return root


@pytest.fixture()
def registry(models_dir: Path) -> ModelRegistry:
    registry = ModelRegistry(TorchScriptPool())
    registry.scan([models_dir])
    return registry


def test_health_names_the_version() -> None:
    system = SystemService(ModelRegistry(TorchScriptPool()), LogTail(10))
    assert system.health() == {"status": "ok", "version": __version__}


def test_readiness_lists_models_and_load_failures(registry: ModelRegistry) -> None:
    readiness = SystemService(registry, LogTail(10)).readiness()
    assert readiness.ready is True
    assert readiness.models == {"alpha": "ready", "beta": "ready"}
    assert "NoSuchThing" in readiness.failed["broken"]
    assert list(readiness.to_json()) == ["ready", "models", "failed"]


def test_engine_state_and_removed_models(registry: ModelRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry.get("alpha").pipeline, "engine", ServerEngine("unavailable"))
    find = registry.find
    monkeypatch.setattr(registry, "find", lambda name: None if name == "beta" else find(name))
    readiness = SystemService(registry, LogTail(10)).readiness()
    assert readiness.models == {"alpha": "unavailable", "beta": "removed"}
    assert readiness.ready is False


def test_not_ready_without_models() -> None:
    readiness = SystemService(ModelRegistry(TorchScriptPool()), LogTail(10)).readiness()
    assert readiness == Readiness(models={}, failed={})
    assert readiness.to_json() == {"ready": False, "models": {}, "failed": {}}


def test_log_text_is_the_last_lines() -> None:
    tail = LogTail(10)
    for number in range(5):
        tail.handle(logging.makeLogRecord({"msg": f"line {number}", "levelname": "INFO", "name": "test"}))
    system = SystemService(ModelRegistry(TorchScriptPool()), tail)
    text = system.log_text(2)
    assert text.endswith("line 4\n")
    assert text.count("\n") == 2 and "line 3" in text and "line 2" not in text
    assert system.log_text(0) == "\n"


def test_models_for_the_landing_page(registry: ModelRegistry) -> None:
    assert [info.name for info in SystemService(registry, LogTail(10)).models()] == ["alpha", "beta"]

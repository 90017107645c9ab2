"""Discovering MMARs and serving their info."""

from __future__ import annotations

import json
from pathlib import Path

from aiaa_server.engines.torchscript import TorchScriptPool
from aiaa_server.mmar.registry import ModelRegistry
from tests.support.mmars import write_threshold_mmar


def test_scan_loads_valid_models_and_reports_broken_ones(tmp_path: Path) -> None:
    write_threshold_mmar(tmp_path / "good", labels=["Liver", "spleen"])
    broken = tmp_path / "broken" / "config"
    broken.mkdir(parents=True)
    (broken / "config_aiaa.json").write_text(json.dumps({"type": "segmentation",
                                                          "pre_transforms": [{"name": "NoSuchThing"}]}))
    (tmp_path / "not_a_model").mkdir()
    registry = ModelRegistry(TorchScriptPool())
    registry.scan([tmp_path, tmp_path / "missing"])
    assert registry.names() == ["good"]
    assert "NoSuchThing" in registry.load_errors["broken"]
    assert [i.name for i in registry.infos(label="liver")] == ["good"]
    assert registry.infos(label="kidney") == []
    assert [i.name for i in registry.infos(model_type="SEGMENTATION")] == ["good"]


def test_later_folders_win_and_engines_are_shared(tmp_path: Path) -> None:
    write_threshold_mmar(tmp_path / "a" / "same", labels=["first"])
    write_threshold_mmar(tmp_path / "b" / "same", labels=["second"])
    pool = TorchScriptPool()
    registry = ModelRegistry(pool)
    registry.scan([tmp_path / "a", tmp_path / "b"])
    assert registry.get("same").info.labels == ["second"]
    registry.scan([tmp_path / "b"])
    assert len(pool) == 2  # reloading the same file on the same device reuses its engine

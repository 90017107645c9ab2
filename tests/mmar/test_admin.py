"""The model admin service: install, replace and delete through the store and the registry."""

from __future__ import annotations

import json
import os
from pathlib import Path

from aiaa_server.engines.torchscript import TorchScriptPool
from aiaa_server.mmar.admin import ModelAdmin
from aiaa_server.mmar.registry import ModelRegistry
from aiaa_server.mmar.store import ModelStore
from tests.support.mmars import write_threshold_mmar


def _admin(tmp_path: Path) -> ModelAdmin:
    store = ModelStore(tmp_path / "ws" / "models")
    store.root.mkdir(parents=True)
    return ModelAdmin(store, ModelRegistry(TorchScriptPool()), fallback_dirs=[])


def _stage(admin: ModelAdmin, labels: list[str]) -> tuple[Path, Path, Path]:
    staging = admin.store.new_staging()
    src = write_threshold_mmar(staging / "src", labels=labels)
    config_part = staging / "config.part"
    data_part = staging / "data.part"
    os.replace(src / "config" / "config_aiaa.json", config_part)
    os.replace(src / "models" / "model.ts", data_part)
    return staging, config_part, data_part


def test_install_replace_and_delete(tmp_path: Path) -> None:
    admin = _admin(tmp_path)
    staging, config_part, data_part = _stage(admin, ["v1"])
    first = admin.install("m", staging, config_part, data_part)
    admin.store.discard_staging(staging)
    assert not first.replaced and admin.registry.get("m").config.labels == ["v1"]
    staging, config_part, data_part = _stage(admin, ["v2"])
    second = admin.install("m", staging, config_part, data_part)
    admin.store.discard_staging(staging)
    assert second.replaced
    assert admin.registry.get("m").config.labels == ["v2"]
    assert first.model.config.labels == ["v1"]  # the old object stays usable for requests holding it
    assert json.loads((admin.store.root / "m" / "config" / "config_aiaa.json").read_text())["labels"] == ["v2"]
    assert list(admin.store.staging_root.iterdir()) == []
    admin.delete("m")
    assert not (admin.store.root / "m").exists() and admin.registry.find("m") is None

"""The model admin service: upload, replace and delete models, keeping the store and the registry in step."""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiaa_server.bundles.layout import METADATA_PATH, NETWORK_FILES
from aiaa_server.bundles.loader import BUNDLE_FORMAT
from aiaa_server.errors import AIAAError, Conflict, InvalidModel, NotFound
from aiaa_server.mmar.folders import is_model_folder, load_model_folder
from aiaa_server.mmar.loader import CONFIG_PATH, MODEL_FILES, LoadedModel, find_model_file, is_mmar
from aiaa_server.mmar.registry import ModelRegistry
from aiaa_server.mmar.sandbox import SandboxLimits, validate_isolated
from aiaa_server.mmar.store import ModelStore, check_model_name
from aiaa_server.mmar.validation import assemble_mmar, precheck_mmar, validate_mmar

log = logging.getLogger(__name__)

DEFAULT_SANDBOX = SandboxLimits()


@dataclass(frozen=True)
class InstallResult:
    model: LoadedModel
    replaced: bool


@dataclass(frozen=True)
class DeleteResult:
    name: str
    now_serving: Path | None  # the read-only MMAR of that name served again, if any


class ModelAdmin:
    """Upload/replace/delete models: the store on disk plus the registry that serves them."""

    def __init__(
        self,
        store: ModelStore,
        registry: ModelRegistry,
        fallback_dirs: list[Path],
        allow_code: bool = False,
        default_device: str = "cpu",
        sandbox: SandboxLimits | None = DEFAULT_SANDBOX,
    ) -> None:
        """`sandbox`: limits of the child process that validates uploads (None: validate in this process)."""
        self.store = store
        self.registry = registry
        self.fallback_dirs = fallback_dirs
        self.allow_code = allow_code
        self.default_device = default_device
        self.sandbox = sandbox
        self._commit = threading.Lock()

    def install(self, name: str, staging: Path, config_part: Path | None, data_part: Path | None) -> InstallResult:
        """Validate the uploaded parts and make them the served `name` (blocking: call from a thread)."""
        check_model_name(name)
        mmar = assemble_mmar(staging, config_part, data_part, self.store.limits)
        if self.sandbox is not None:
            precheck_mmar(mmar, self.allow_code)  # refusals that need no process
            verdict = validate_isolated(mmar, name, self.allow_code, self.default_device, self.sandbox)
            log.info("model %s validated in a sandbox (network namespace: %s)", name,
                     "yes" if verdict.get("network_namespace") else "no; audit hook only")
        else:
            validate_mmar(mmar, name, self.allow_code, self.default_device)
        with self._commit:
            replaced = self.registry.find(name) is not None
            aside = self.store.swap_in(name, mmar)
            target = self.store.path(name)
            self._evict(target)
            try:
                model = load_model_folder(target, self.registry.engines, self.default_device, name=name,
                                          trusted=self.allow_code)
            except AIAAError:
                self.store.roll_back(name, aside)
                raise
            self.registry.put(model)
            self.store.drop_aside(aside)
        log.info("model %s %s from upload (%s)", name, "replaced" if replaced else "installed",
                 model.config.type.value)
        return InstallResult(model=model, replaced=replaced)

    def delete(self, name: str) -> DeleteResult:
        check_model_name(name)
        with self._commit:
            if not self.store.has(name):
                if self.registry.find(name) is not None:
                    raise Conflict(
                        f"model {name!r} is served from a read-only model folder, not uploaded: remove it from "
                        "that folder (or start without it); uploads of the same name override it",
                        model=name,
                    )
                raise NotFound(f"model {name!r} not found", model=name)
            self.store.delete(name)
            self.registry.discard(name)
            self._evict(self.store.path(name))
            fallback = self._fallback(name)
            if fallback is not None:
                self.registry.load(fallback, name=name)
        log.info("model %s deleted%s", name, f"; serving {fallback} again" if fallback else "")
        return DeleteResult(name=name, now_serving=fallback)

    def stored_config(self, name: str) -> dict[str, Any]:
        """The model's config_aiaa.json as stored, plus server-added keys (`path`, `format`, `source`...)."""
        check_model_name(name)
        model = self.registry.find(name)
        folder = model.path if model is not None else (self.store.path(name) if self.store.has(name) else None)
        if folder is None or not is_model_folder(folder):
            raise NotFound(f"model {name!r} not found", model=name)
        if not is_mmar(folder):
            return self._stored_bundle(name, folder, model)
        try:
            raw = json.loads((folder / CONFIG_PATH).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InvalidModel(f"stored config of {name!r} cannot be read: {exc}") from exc
        inference = raw.get("inference") if isinstance(raw, dict) else None
        weight_free = isinstance(inference, dict) and inference.get("network") is not None
        model_file = None if weight_free else find_model_file(folder)
        uploaded = folder.resolve().parent == self.store.root.resolve()
        extra = {
            "name": name,
            "path": str(model_file or folder),
            "mmar_path": str(folder),
            "format": _format(weight_free, model_file),
            "source": "uploaded" if uploaded else "folder",
            "loaded": model is not None,
        }
        if model is None:
            extra["error"] = self.registry.load_errors.get(name, "not loaded")
        return {**raw, **extra}

    def _stored_bundle(self, name: str, folder: Path, model: LoadedModel | None) -> dict[str, Any]:
        """A bundle's `configs/metadata.json` as stored, plus the same server keys as an MMAR's config."""
        try:
            raw = json.loads((folder / METADATA_PATH).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InvalidModel(f"stored metadata of {name!r} cannot be read: {exc}") from exc
        extra = {
            "name": name, "path": str(model.model_file if model and model.model_file else folder),
            "mmar_path": str(folder), "format": BUNDLE_FORMAT,
            "source": "uploaded" if folder.resolve().parent == self.store.root.resolve() else "folder",
            "loaded": model is not None,
        }
        if model is None:
            extra["error"] = self.registry.load_errors.get(name, "not loaded")
        return {**(raw if isinstance(raw, dict) else {}), **extra}

    def _fallback(self, name: str) -> Path | None:
        for folder in reversed(self.fallback_dirs):  # later folders win, as in the startup scan
            candidate = folder / name
            if is_model_folder(candidate):
                return candidate
        return None

    def _evict(self, folder: Path) -> None:
        """Forget the engines of every network file the folder may have held (the served one may have been a
        `.pt2` replaced by a `.ts`, or the other way round)."""
        for relative in {*MODEL_FILES, *NETWORK_FILES}:
            self.registry.engines.evict(folder / relative)


def _format(weight_free: bool, model_file: Path | None) -> str:
    """The `format` `GET /admin/model/{name}` shows: weight-free, torch.export, torchscript or pipeline."""
    if weight_free:
        return "weight-free"
    if model_file is None:
        return "pipeline"
    return "torch.export" if model_file.suffix == ".pt2" else "torchscript"


"""The models the server serves: discovered in model folders, replaceable at run time."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from aiaa_server.engines.base import EngineProvider
from aiaa_server.engines.factory import EngineFactory
from aiaa_server.engines.torchscript import TorchScriptPool
from aiaa_server.errors import AIAAError, NotFound
from aiaa_server.mmar.folders import is_model_folder, load_model_folder
from aiaa_server.mmar.loader import LoadedModel, ModelInfo

log = logging.getLogger(__name__)


class ModelRegistry:
    """The models being served, by name (thread-safe), and why the others failed to load (`load_errors`)."""

    def __init__(self, engines: EngineProvider | TorchScriptPool, default_device: str = "cpu") -> None:
        """`engines` builds each model's engine (e.g. an EngineFactory); a bare TorchScriptPool runs all locally."""
        if isinstance(engines, TorchScriptPool):
            engines = EngineFactory(engines, default_device)
        self.engines: EngineProvider = engines
        self.default_device = default_device
        self._models: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()
        self.load_errors: dict[str, str] = {}

    @property
    def pool(self) -> EngineProvider:
        """The former name of `engines`."""
        return self.engines

    def scan(self, folders: list[Path], untrusted: tuple[Path, ...] = ()) -> None:
        """Load every MMAR or MONAI bundle found directly under each folder; later folders win on name clashes.

        Models in the `untrusted` folders (uploads) are held to the upload allow-list at every load."""
        for folder in folders:
            if not folder.is_dir():
                log.warning("model folder %s does not exist; skipped", folder)
                continue
            for candidate in sorted(p for p in folder.iterdir() if p.is_dir()):
                if is_model_folder(candidate):
                    self.load(candidate, trusted=folder not in untrusted)

    def load(self, folder: Path, name: str | None = None, trusted: bool = True) -> LoadedModel | None:
        """Load the MMAR or bundle in `folder` as `name` (default: the folder's name) and serve it, replacing a model of
        that name; on failure log it, keep the message in `load_errors` and return None (nothing raised).

        `trusted=False` holds the MMAR to the upload allow-list (see `load_mmar`).
        """
        model_name = name or folder.name
        try:
            model = load_model_folder(folder, self.engines, self.default_device, name=model_name, trusted=trusted)
        except AIAAError as exc:
            self.load_errors[model_name] = exc.message
            log.error("model %s not loaded: %s", model_name, exc.message)
            return None
        self.put(model)
        log.info("model %s loaded from %s (%s)", model.name, folder, model.config.type.value)
        return model

    def put(self, model: LoadedModel) -> None:
        """Serve `model` under its name, replacing any model of that name and forgetting its load error."""
        with self._lock:
            self._models[model.name] = model
            self.load_errors.pop(model.name, None)

    def remove(self, name: str) -> LoadedModel:
        """Stop serving `name` and return it.

        Raises:
            NotFound: (404) no model of that name is served.
        """
        with self._lock:
            model = self._models.pop(name, None)
        if model is None:
            raise NotFound(f"model {name!r} not found")
        return model

    def find(self, name: str) -> LoadedModel | None:
        """The model served as `name`, or None."""
        with self._lock:
            return self._models.get(name)

    def discard(self, name: str) -> LoadedModel | None:
        """Stop serving `name` (and forget its load error); no error if it is unknown."""
        with self._lock:
            self.load_errors.pop(name, None)
            return self._models.pop(name, None)

    def get(self, name: str | None) -> LoadedModel:
        """The model served as `name` (a request's `?model=`).

        Raises:
            NotFound: (404) no name given, or no model of that name.
        """
        if not name:
            raise NotFound("no model given: add ?model=NAME (see GET /v1/models)")
        with self._lock:
            model = self._models.get(name)
        if model is None:
            raise NotFound(f"model {name!r} not found", model=name)
        return model

    def names(self) -> list[str]:
        """The served models' names, sorted."""
        with self._lock:
            return sorted(self._models)

    def infos(self, label: str | None = None, model_type: str | None = None) -> list[ModelInfo]:
        """Models filtered by label (case-insensitive exact) and type, AND-combined.

        Args:
            label: keep models with this label (any case); None or empty: no filter.
            model_type: keep models of this `type` (any case, e.g. "segmentation"); None or empty: no filter.

        Returns:
            `GET /v1/models` entries, sorted by model name.
        """
        with self._lock:
            models = [self._models[n] for n in sorted(self._models)]
        infos = [m.info for m in models]
        if label:
            wanted = label.strip().lower()
            infos = [i for i in infos if any(lbl.lower() == wanted for lbl in i.labels)]
        if model_type:
            wanted_type = model_type.strip().lower()
            infos = [i for i in infos if i.type == wanted_type]
        return infos

    def __len__(self) -> int:
        return len(self._models)

"""Chooses and builds each model's engine: the local pool (TorchScript or torch.export) or a Triton Inference Server.

Which engine runs a model:
1. `inference.engine` in the MMAR's `config_aiaa.json`, when present, forces it: `"local"` (alias `"AIAA"`) or
   `"triton"` (alias `"TRITON"`), case-insensitive. E.g. keep a tiny model in-process while the rest use Triton,
   or send one heavy model to Triton from a server started with the local engine.
2. Otherwise the server's `--engine` (`local` by default).
A factory built without a Triton setup (e.g. the private one that validates uploads) runs every model locally.

For Triton, `inference.TRITON.triton_model_config` (Clara 4.x) shapes the generated `config.pbtxt` when present;
the presence of a TRITON section alone does not choose the engine (Clara configs carry both sections).
Triton runs TorchScript only: a model whose network is `models/model.pt2` goes to Triton with the `model.ts` next
to it (`triton_repository.triton_model_file`), and is refused for Triton without one.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from aiaa_server.engines.base import Engine
from aiaa_server.engines.batching import BatchingEngine
from aiaa_server.engines.cuda import AcceleratedEngine, precision_dtype
from aiaa_server.engines.torchscript import TorchScriptPool, resolve_device
from aiaa_server.engines.triton import TritonClient, TritonEngine, TritonOptions
from aiaa_server.engines.triton_repository import TritonBackend, remove_model, triton_model_file, write_model
from aiaa_server.errors import InvalidModel, ModelError, ServiceUnavailable
from aiaa_server.mmar.config import AIAAConfig, ModelType

log = logging.getLogger(__name__)

EngineKind = Literal["local", "triton"]
INTERACTIVE_TYPES = frozenset({ModelType.DEEPGROW, ModelType.ANNOTATION})  # batched with --click_batch_ms
_ALIASES: dict[str, EngineKind] = {"local": "local", "aiaa": "local", "triton": "triton"}


def engine_kind(value: object) -> EngineKind:
    """Normalise `local`/`AIAA`/`triton`/`TRITON` (any case); raises ValueError for anything else."""
    kind = _ALIASES.get(str(value).strip().lower())
    if kind is None:
        raise ValueError(f"unknown engine {value!r}: use 'local' (or 'AIAA') or 'triton' (or 'TRITON')")
    return kind


@dataclass(frozen=True)
class TritonSetup:
    """Where and how models run on Triton; `repository` must be visible to Triton at the same path."""

    options: TritonOptions
    repository: Path
    backend: TritonBackend = "pytorch"


class EngineFactory:
    """The server's EngineProvider: the local pool, or Triton where the model or server asks.

    Args:
        pool: the shared cache of local engines (TorchScript and torch.export files).
        default_device: where local engines run when the model names no device ("cpu", "cuda", "cuda:1").
        default_engine: the server's `--engine`, for models whose config does not force one.
        triton: where Triton models are written and served; None runs every model locally.
        precision: the server's `--precision` of local forwards ("float32", "float16", "bfloat16"); a model's
            `inference.AIAA.args.precision` overrides it.
        click_batch_ms: > 0: interactive models' (deepgrow, annotation) concurrent same-shaped forwards within
            this many milliseconds share one (`engines.batching`); 0: off.
        click_batch_max: most items in one shared forward.
    """

    def __init__(
        self,
        pool: TorchScriptPool,
        default_device: str = "cpu",
        default_engine: EngineKind = "local",
        triton: TritonSetup | None = None,
        precision: str = "float32",
        click_batch_ms: float = 0.0,
        click_batch_max: int = 8,
    ) -> None:
        precision_dtype(precision)  # refuse unknown names here
        self.pool = pool
        self.default_device = default_device
        self.default_engine = default_engine
        self.triton = triton
        self.precision = precision
        self.click_batch_ms = click_batch_ms
        self.click_batch_max = click_batch_max
        self._client: TritonClient | None = None
        self._triton_engines: dict[str, TritonEngine] = {}  # by model name
        self._sources: dict[str, str] = {}  # model name -> resolved model file
        self._lock = threading.Lock()

    def kind_for(self, config: AIAAConfig) -> EngineKind:
        """The engine that runs a model: its `inference.engine` if set, else the default; "local" without Triton.

        Raises:
            InvalidModel: `inference.engine` names no known engine.
        """
        forced = (config.inference.model_extra or {}).get("engine")
        try:
            kind = self.default_engine if forced is None else engine_kind(forced)
        except ValueError as exc:
            raise InvalidModel(f"inference.engine: {exc}") from exc
        return kind if self.triton is not None else "local"

    def create(self, name: str, model_file: Path, config: AIAAConfig, device: str | None = None) -> Engine:
        """The engine for model `name`: a shared local engine, or a Triton one (its repository entry written and
        a load requested; a Triton that is down only delays the load).

        Args:
            name: the model name (also its Triton model name).
            model_file: the MMAR's network file (`loader.find_model_file`): `models/model.pt2` (torch.export)
                or TorchScript `models/model.ts`/`model.pt`. Triton gets the TorchScript file beside a `.pt2`.
            config: the MMAR's config (engine choice, Triton model config).
            device: the local device the model asks for; None: `default_device`. CUDA falls back to CPU.

        Raises:
            InvalidModel: an unknown `inference.engine`, an unloadable model file, a Triton model with no
                TorchScript file, or a Triton model config or load that fails.
        """
        if self.kind_for(config) == "local":
            resolved: torch.device = resolve_device(device, self.default_device)
            precision = config.inference.args.precision or self.precision
            engine = self.pool.get(model_file, resolved, name, optimize=precision == "float32")
            return self._accelerated(engine, config, precision)
        return self._create_triton(name, model_file, config)

    def _accelerated(self, engine: Engine, config: AIAAConfig, precision: str) -> Engine:
        """`engine` with the device paths (`engines.cuda`) where it runs on CUDA or not in float32, and shared
        forwards (`engines.batching`) for interactive models when `click_batch_ms` > 0."""
        if engine.device.type == "cuda" or precision != "float32":
            engine = AcceleratedEngine(engine, precision)
        if self.click_batch_ms > 0 and config.type in INTERACTIVE_TYPES:
            engine = BatchingEngine(engine, self.click_batch_ms / 1000.0, self.click_batch_max)
        return engine

    def _create_triton(self, name: str, model_file: Path, config: AIAAConfig) -> TritonEngine:
        assert self.triton is not None
        torchscript = triton_model_file(name, model_file)
        spec = write_model(self.triton.repository, name, torchscript, config, self.triton.backend)
        engine = TritonEngine(name, spec, self._triton_client())
        with self._lock:
            self._triton_engines[name] = engine
            self._sources[name] = str(model_file.resolve())  # the file the loader found: what evict() names
        # Always (re)load: Triton may still hold an older version of this model from before our restart, and
        # reloads only when the files changed. When Triton is down, the first request or readiness check loads it.
        try:
            engine.ensure_loaded()
        except ServiceUnavailable as exc:
            log.warning("model %s: %s; it will be loaded into Triton when Triton answers", name, exc.message)
        except ModelError as exc:
            with self._lock:
                self._triton_engines.pop(name, None)
                self._sources.pop(name, None)
            raise InvalidModel(f"model {name!r}: {exc.message}") from exc
        return engine

    def _triton_client(self) -> TritonClient:
        assert self.triton is not None
        with self._lock:
            if self._client is None:
                self._client = TritonClient(self.triton.options)
            return self._client

    def evict(self, path: Path) -> None:
        """Forget engines built from `path` (the model is deleted or replaced): unload it from Triton too."""
        self.pool.evict(path)
        resolved = str(path.resolve())
        with self._lock:
            names = [name for name, source in self._sources.items() if source == resolved]
            engines = [self._triton_engines.pop(name) for name in names]
            for name in names:
                del self._sources[name]
        for engine in engines:
            engine.unload()
            if self.triton is not None:
                remove_model(self.triton.repository, engine.name)


def engine_readiness(engine: object) -> str:
    """`ready` for in-process engines; engines backed by a server (Triton) report their own state."""
    readiness = getattr(engine, "readiness", None)
    return readiness() if callable(readiness) else "ready"


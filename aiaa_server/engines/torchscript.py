"""Local engines: model files loaded once per (file, mtime, device) and shared by every request.

The pool loads by suffix: `.pt2` is a `torch.export` program (`engines.exported`), anything else (`.ts`, `.pt`)
TorchScript.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import torch

from aiaa_server.engines.base import ModuleEngine
from aiaa_server.engines.exported import EXPORTED_SUFFIX, ExportedEngine, load_exported
from aiaa_server.errors import InvalidModel

log = logging.getLogger(__name__)


def resolve_device(requested: str | None, default: str) -> torch.device:
    """The device to run on; CUDA requests fall back to CPU (with a warning) where no GPU is present.

    Args:
        requested: the model's device ("cpu", "cuda", "cuda:1", any case), or None.
        default: the server's device, used when `requested` is empty.
    """
    name = (requested or default or "cpu").lower()
    if name.startswith("cuda") and not torch.cuda.is_available():
        log.warning("device %s requested but CUDA is not available; using cpu", name)
        name = "cpu"
    return torch.device(name)


class TorchScriptEngine(ModuleEngine):
    """The Engine protocol over a loaded TorchScript module on one device."""


def load_torchscript(path: Path, device: torch.device, optimize: bool = True) -> torch.jit.ScriptModule:
    """Load a TorchScript file in eval mode; pickled checkpoints are refused (TorchScript loading runs no pickle code).
    On the CPU (with `optimize`: float32 forwards) the module is frozen and optimized for inference
    (`optimized_for_cpu`).

    Raises:
        InvalidModel: the file is not loadable TorchScript.
    """
    try:
        module = torch.jit.load(str(path), map_location=device)
    except Exception as exc:
        raise InvalidModel(f"{path.name} is not a loadable TorchScript model: {exc}", file=path.name) from exc
    module.eval()
    return optimized_for_cpu(module, path.name) if optimize and device.type == "cpu" else module


def optimized_for_cpu(module: torch.jit.ScriptModule, name: str) -> torch.jit.ScriptModule:
    """`module` frozen and optimized for CPU inference (`torch.jit.optimize_for_inference`: batch norms folded,
    convolutions on oneDNN with prepacked weights, as `engines.exported` does for programs): the same values up to
    float rounding, 1.8× faster for the demo DeepGrow 3D network and 3× for DExtr3D (batch of one). A module the
    optimizer refuses is served as loaded."""
    try:
        return torch.jit.optimize_for_inference(torch.jit.freeze(module))
    except Exception as exc:  # noqa: BLE001 - an optimization, never a reason not to serve the model
        log.info("%s: served without TorchScript freezing/optimization (%s)", name, exc)
        return module


LocalEngine = TorchScriptEngine | ExportedEngine


def load_engine(path: Path, device: torch.device, name: str, optimize: bool = True) -> LocalEngine:
    """The local engine of a model file, by suffix: `.pt2` an ExportedProgram, else TorchScript.

    Raises:
        InvalidModel: the file does not load as what its suffix says (naming the file).
    """
    if path.suffix.lower() == EXPORTED_SUFFIX:
        return ExportedEngine(load_exported(path, device, optimize), device, name)
    return TorchScriptEngine(load_torchscript(path, device, optimize), device, name)


class TorchScriptPool:
    """Process-wide cache of local engines: each model file (TorchScript `.ts`/`.pt` or `torch.export` `.pt2`)
    is loaded once per device and reused."""

    def __init__(self) -> None:
        self._engines: dict[tuple[str, int, str, bool], LocalEngine] = {}
        self._lock = threading.Lock()

    def get(self, path: Path, device: torch.device, name: str, optimize: bool = True) -> LocalEngine:
        """The engine for `path` on `device`, loaded on first use; a file rewritten since (new mtime) is reloaded.
        `optimize`: CPU kernels for float32 forwards (oneDNN; see `load_torchscript`, `load_exported`); off for
        autocast to float16/bfloat16, whose inputs those prepacked float32 kernels refuse.

        Raises:
            InvalidModel: the file is not loadable (TorchScript, or an ExportedProgram for `.pt2`).
        """
        stat = path.stat()
        key = (str(path.resolve()), stat.st_mtime_ns, str(device), optimize)
        with self._lock:
            engine = self._engines.get(key)
            if engine is None:
                engine = load_engine(path, device, name, optimize)
                self._engines[key] = engine
            return engine

    def evict(self, path: Path) -> None:
        """Drop the engines loaded from `path`, on every device and of every mtime."""
        resolved = str(path.resolve())
        with self._lock:
            for key in [k for k in self._engines if k[0] == resolved]:
                del self._engines[key]

    def __len__(self) -> int:
        return len(self._engines)

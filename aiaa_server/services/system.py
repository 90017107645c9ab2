"""System use cases: liveness, readiness of the loaded models, the server log tail, the model overview."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiaa_server import __version__
from aiaa_server.engines.factory import engine_readiness
from aiaa_server.logs import LogTail
from aiaa_server.mmar.loader import ModelInfo
from aiaa_server.mmar.registry import ModelRegistry

READY = "ready"
REMOVED = "removed"  # listed a moment ago, deleted (admin) before its state was read


@dataclass(frozen=True)
class Readiness:
    """Each model's state (`ready`, `removed`, or an engine's own word such as Triton's) and the load failures."""

    models: dict[str, str]
    failed: dict[str, str]

    @property
    def ready(self) -> bool:
        """At least one model can serve."""
        return any(state == READY for state in self.models.values())

    def to_json(self) -> dict[str, Any]:
        return {"ready": self.ready, "models": self.models, "failed": self.failed}


class SystemService:
    """What the health, readiness, log and landing pages report, read from the registry and the log tail."""

    def __init__(self, registry: ModelRegistry, log_tail: LogTail) -> None:
        self.registry = registry
        self.log_tail = log_tail

    def health(self) -> dict[str, str]:
        """Liveness: answering at all is the check."""
        return {"status": "ok", "version": __version__}

    def readiness(self) -> Readiness:
        """The state of every registered model; engines backed by a server (Triton) are asked."""
        models = {name: self._model_state(name) for name in self.registry.names()}
        return Readiness(models=models, failed=dict(self.registry.load_errors))

    def log_text(self, lines: int) -> str:
        """The last `lines` log lines, newline-terminated."""
        return "\n".join(self.log_tail.tail(lines)) + "\n"

    def models(self) -> list[ModelInfo]:
        """Every loaded model, for the landing page."""
        return self.registry.infos()

    def _model_state(self, name: str) -> str:
        model = self.registry.find(name)
        if model is None:
            return REMOVED
        engine = model.pipeline.engine
        return engine_readiness(engine) if engine is not None else READY

"""Trained versions of a model, kept on disk next to the workspace's models:

    <root>/<name>/versions/1/            a complete model folder (config + models/model.ts) and its metrics.json
    <root>/<name>/versions/2/
    <root>/<name>/versions/serving.json  {"version": N}: the version served; missing or 0: the original folder

A version appears by one `os.replace` of a finished folder, and the serving pointer changes by one atomic write,
so a crash at any moment leaves either the old or the new state, never a half-written version being served.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from aiaa_server.datastore.atomic import atomic_write_json
from aiaa_server.errors import BadRequest, NotFound
from aiaa_server.mmar.fsync import fsync_dir

log = logging.getLogger(__name__)

VERSIONS_DIR = "versions"
SERVING_FILE = "serving.json"
METRICS_FILE = "metrics.json"
STAGING_PREFIX = ".staging-"
_NUMBER = re.compile(r"[1-9][0-9]{0,8}")
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")


class VersionInfo(BaseModel):
    """One trained version: its number, folder, when it was added and the figures its training measured."""

    version: int
    path: str
    created: float
    metrics: dict[str, Any] = Field(default_factory=dict)


class ModelVersions:
    """The trained versions of every model under `root` (thread-safe).

    Args:
        root: the folder holding one sub-folder per model name (the workspace's `models/`).
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._lock = threading.Lock()
        self._figures: dict[str, tuple[tuple[int, int], tuple[int, float | None]]] = {}
        self._pointers: dict[str, str] = {}  # name → its serving pointer's path, for the per-call stat

    def folder(self, name: str) -> Path:
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise BadRequest(f"invalid model name {name!r}")
        return self.root / name / VERSIONS_DIR

    def staging_dir(self, name: str) -> Path:
        """A fresh empty-named path on the versions' filesystem where a job may build its candidate folder."""
        folder = self.folder(name)
        folder.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=folder)) / "candidate"

    def list(self, name: str) -> list[VersionInfo]:
        """The versions of `name`, oldest first (none: `[]`)."""
        folder = self.folder(name)
        found = []
        with contextlib.suppress(OSError):
            for entry in folder.iterdir():
                if _NUMBER.fullmatch(entry.name) and entry.is_dir():
                    found.append(self._info(entry))
        return sorted(found, key=lambda info: info.version)

    def get(self, name: str, version: int) -> VersionInfo:
        """Raises NotFound: (404) no such version."""
        path = self.folder(name) / str(version)
        if version < 1 or not path.is_dir():
            raise NotFound(f"model {name!r} has no version {version}", model=name, version=version)
        return self._info(path)

    def add(self, name: str, candidate: Path, metrics: dict[str, Any] | None = None) -> VersionInfo:
        """Make the finished folder `candidate` the next version (one rename; `candidate` must be on the same
        filesystem, e.g. from `staging_dir`). `metrics` (if given) is written as its metrics.json first."""
        folder = self.folder(name)
        with self._lock:
            if metrics is not None:
                atomic_write_json(Path(candidate) / METRICS_FILE, metrics)
            number = max((info.version for info in self.list(name)), default=0) + 1
            target = folder / str(number)
            os.replace(candidate, target)
            fsync_dir(folder)
        if Path(candidate).parent.name.startswith(STAGING_PREFIX):
            shutil.rmtree(Path(candidate).parent, ignore_errors=True)
        log.info("model %s: version %d added", name, number)
        return self._info(target)

    def serving(self, name: str) -> int:
        """The version served (0: the original folder)."""
        try:
            value = json.loads((self.folder(name) / SERVING_FILE).read_text()).get("version", 0)
        except (OSError, ValueError, AttributeError):
            return 0
        return value if isinstance(value, int) and value >= 0 else 0

    def serving_figures(self, name: str) -> tuple[int, float | None]:
        """(the version served, its validation Dice or None), read once per change of the serving pointer:
        `/v1/models` asks for every model on every call, so a call costs one `stat` per model, not two reads."""
        try:
            pointer = self._pointers.get(name)
            if pointer is None:
                pointer = self._pointers[name] = str(self.folder(name) / SERVING_FILE)
            status = os.stat(pointer)
        except OSError:
            return 0, None
        stamp = (status.st_mtime_ns, status.st_ino)  # an atomic rewrite is a new inode
        cached = self._figures.get(name)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        version, dice = self.serving(name), None
        if version:
            with contextlib.suppress(NotFound, OSError, ValueError):
                value = self.get(name, version).metrics.get("best_dice")
                dice = float(value) if isinstance(value, (int, float)) else None
        self._figures[name] = (stamp, (version, dice))
        return version, dice

    def set_serving(self, name: str, version: int) -> None:
        """Point `name` at `version` (0: the original); the version must exist."""
        if version != 0:
            self.get(name, version)
        folder = self.folder(name)
        folder.mkdir(parents=True, exist_ok=True)
        with self._lock:
            atomic_write_json(folder / SERVING_FILE, {"version": version})
        log.info("model %s: serving version %d", name, version)

    def clean_staging(self, name: str) -> None:
        """Remove candidate folders a killed job left behind."""
        with contextlib.suppress(OSError):
            for entry in self.folder(name).iterdir():
                if entry.name.startswith(STAGING_PREFIX):
                    shutil.rmtree(entry, ignore_errors=True)

    def _info(self, path: Path) -> VersionInfo:
        try:
            metrics = json.loads((path / METRICS_FILE).read_text())
        except (OSError, ValueError):
            metrics = {}
        return VersionInfo(version=int(path.name), path=str(path), created=path.stat().st_mtime,
                           metrics=metrics if isinstance(metrics, dict) else {})

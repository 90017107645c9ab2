"""The on-disk folder of uploaded models: staging, atomic swap-in, roll-back, delete and crash recovery.

Layout: `<workspace>/models/<name>/` is an installed MMAR; `<workspace>/models/.staging/` holds everything
transient (uploads in progress, models moved aside during a replace, models being deleted). Nothing under
`.staging` is ever served: a scan only looks one level down for `config/config_aiaa.json`.

Install = build the MMAR in `.staging/up-*`, validate it there, fsync it, then rename it into place. A replace
first renames the old folder to `.staging/aside-*/<name>`; `recover()` (run at startup, before the scan) puts
such a folder back if the crash happened before the new one arrived, and deletes every other leftover.

Archive extraction lives in `mmar.archives`, upload checks in `mmar.validation` and the admin service in
`mmar.admin`; their names are re-exported here so `from aiaa_server.mmar.store import ...` keeps working.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiaa_server.errors import InvalidModelName, NotFound
from aiaa_server.mmar.archives import (
    ARCHIVE_JUNK,
    COPY_CHUNK,
    ArchiveKind,
    ArchiveLimits,
    extract_archive,
    locate_mmar_root,
    member_path,
    sniff_archive,
)
from aiaa_server.mmar.fsync import fsync_dir, fsync_tree
from aiaa_server.mmar.loader import is_mmar
from aiaa_server.mmar.validation import (
    MAX_CONFIG_BYTES,
    MAX_DRY_RUN_VOXELS,
    MODEL_TS,
    assemble_mmar,
    config_is_dense,
    dry_run,
    dry_run_shapes,
    read_uploaded_config,
    validate_mmar,
)

if TYPE_CHECKING:
    from aiaa_server.mmar.admin import DEFAULT_SANDBOX, DeleteResult, InstallResult, ModelAdmin

log = logging.getLogger(__name__)

MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
STAGING_DIR = ".staging"


def check_model_name(name: str) -> str:
    """`name`, if it can name a model folder: 1-128 letters, digits, `.`, `_` or `-`, starting with a letter or digit.

    Raises:
        InvalidModelName: (400) any other name.
    """
    if not MODEL_NAME.match(name):
        raise InvalidModelName(
            f"invalid model name {name!r}: use 1-128 letters, digits, '.', '_' or '-', starting with a letter "
            "or digit",
        )
    return name


class ModelStore:
    """The on-disk folder of uploaded models (no registry knowledge).

    Args:
        root: `<workspace>/models`; `.staging` below it holds transient folders.
        limits: bounds on uploaded archives; None: `ArchiveLimits()`.
    """

    def __init__(self, root: Path, limits: ArchiveLimits | None = None) -> None:
        self.root = root
        self.limits = limits or ArchiveLimits()
        self.staging_root = root / STAGING_DIR

    def path(self, name: str) -> Path:
        """Where model `name` is installed (it may not exist); raises InvalidModelName for a bad name."""
        return self.root / check_model_name(name)

    def has(self, name: str) -> bool:
        """Whether a folder (an MMAR or not) of that name is installed."""
        return is_mmar(self.path(name)) or self.path(name).is_dir()

    def names(self) -> list[str]:
        """The installed folders with valid model names, sorted (`.staging` is never one)."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and MODEL_NAME.match(p.name))

    def _ensure(self) -> None:
        self.staging_root.mkdir(parents=True, exist_ok=True)

    def recover(self) -> list[str]:
        """Undo what an interrupted install left: restore models moved aside, drop everything else."""
        self._ensure()
        restored: list[str] = []
        for entry in sorted(self.staging_root.iterdir()):
            if entry.is_dir() and entry.name.startswith("aside-"):
                for old in entry.iterdir():
                    if MODEL_NAME.match(old.name) and not (self.root / old.name).exists():
                        os.rename(old, self.root / old.name)
                        restored.append(old.name)
                        log.warning("model %s restored: its replacement was interrupted", old.name)
            log.info("removing leftover %s from an interrupted upload", entry.name)
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
        fsync_dir(self.root)
        return restored

    def new_staging(self) -> Path:
        """A private folder for one upload; pass it to discard_staging when done."""
        self._ensure()
        return Path(tempfile.mkdtemp(prefix="up-", dir=self.staging_root))

    def discard_staging(self, folder: Path) -> None:
        """Delete a staging folder and whatever is left in it."""
        shutil.rmtree(folder, ignore_errors=True)

    @contextmanager
    def staging(self) -> Iterator[Path]:
        """A private staging folder for the `with` block, deleted when it ends."""
        folder = self.new_staging()
        try:
            yield folder
        finally:
            self.discard_staging(folder)

    def _move_aside(self, name: str, prefix: str) -> Path | None:
        target = self.path(name)
        if not target.exists():
            return None
        holder = Path(tempfile.mkdtemp(prefix=prefix, dir=self.staging_root))
        fsync_dir(self.staging_root)
        aside = holder / name
        os.rename(target, aside)
        return aside

    def swap_in(self, name: str, mmar: Path) -> Path | None:
        """Atomically publish `mmar` as `name`; returns where the previous version was moved (or None).

        `mmar` must be on the same file system (a staging folder). Pass the returned path to `drop_aside`
        once the new version serves, or to `roll_back` if it does not.
        """
        fsync_tree(mmar)
        aside = self._move_aside(name, "aside-")
        os.rename(mmar, self.path(name))
        fsync_dir(self.root)
        if aside is not None:
            fsync_dir(aside.parent)
        return aside

    def drop_aside(self, aside: Path | None) -> None:
        """Delete the previous version `swap_in` moved aside (nothing for None)."""
        if aside is not None:
            shutil.rmtree(aside.parent, ignore_errors=True)

    def roll_back(self, name: str, aside: Path | None) -> None:
        """Undo swap_in: the new version goes, the previous one (if any) comes back."""
        doomed = self._move_aside(name, "trash-")
        if aside is not None:
            os.rename(aside, self.path(name))
            shutil.rmtree(aside.parent, ignore_errors=True)
        fsync_dir(self.root)
        if doomed is not None:
            shutil.rmtree(doomed.parent, ignore_errors=True)

    def delete(self, name: str) -> None:
        """Uninstall model `name`: moved into staging at once (so never served again), then deleted.

        Raises:
            NotFound: (404) nothing is installed under that name.
            InvalidModelName: (400) a name that cannot name a model.
        """
        # "trash-" folders are never restored by recover(): a crash after this rename still deletes.
        doomed = self._move_aside(name, "trash-")
        if doomed is None:
            raise NotFound(f"model {name!r} not found")
        fsync_dir(self.root)
        shutil.rmtree(doomed.parent, ignore_errors=True)


# mmar.admin imports this module, so its names are re-exported lazily (PEP 562) rather than at import time.
_ADMIN_NAMES = frozenset({"DEFAULT_SANDBOX", "DeleteResult", "InstallResult", "ModelAdmin"})


def __getattr__(name: str) -> Any:
    if name in _ADMIN_NAMES:
        from aiaa_server.mmar import admin

        return getattr(admin, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ARCHIVE_JUNK",
    "COPY_CHUNK",
    "DEFAULT_SANDBOX",
    "MAX_CONFIG_BYTES",
    "MAX_DRY_RUN_VOXELS",
    "MODEL_NAME",
    "MODEL_TS",
    "STAGING_DIR",
    "ArchiveKind",
    "ArchiveLimits",
    "DeleteResult",
    "InstallResult",
    "ModelAdmin",
    "ModelStore",
    "assemble_mmar",
    "check_model_name",
    "config_is_dense",
    "dry_run",
    "dry_run_shapes",
    "extract_archive",
    "fsync_dir",
    "fsync_tree",
    "locate_mmar_root",
    "member_path",
    "read_uploaded_config",
    "sniff_archive",
    "validate_mmar",
]

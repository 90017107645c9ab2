"""Workspace hygiene: request upload folders (`<workspace>/tmp/req-*`) left behind by crashed processes.

A request removes its folder when it ends; only a process killed mid-request leaves one. Several replicas
may share the workspace, so a folder is only removed once nothing in it changed for a grace period far
longer than any upload stalls (`--body_timeout`) or any request waits for a worker.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
from pathlib import Path

log = logging.getLogger(__name__)

REQUEST_DIR_PREFIX = "req-"  # `api.forms.read_body` creates its folders with this prefix
STALE_REQUEST_S = 6 * 3600.0
SWEEP_INTERVAL_S = 600.0


def sweep_request_dirs(tmp_dir: Path, older_than_s: float = STALE_REQUEST_S, now: float | None = None) -> list[Path]:
    """Remove `req-*` folders in `tmp_dir` untouched for `older_than_s` seconds; returns the removed ones."""
    now = time.time() if now is None else now
    removed: list[Path] = []
    try:
        candidates = [p for p in tmp_dir.iterdir() if p.name.startswith(REQUEST_DIR_PREFIX)]
    except FileNotFoundError:
        return removed
    for folder in candidates:
        if folder.is_dir() and not folder.is_symlink() and now - _last_change(folder) > older_than_s:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    if removed:
        log.info("removed %d stale request folder(s) from %s", len(removed), tmp_dir)
    return removed


async def sweep_request_dirs_periodically(tmp_dir: Path, interval_s: float = SWEEP_INTERVAL_S) -> None:
    """Background task (started by the app's lifespan after its first sweep): sweep every `interval_s` s."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await asyncio.to_thread(sweep_request_dirs, tmp_dir)
        except OSError:  # a failing sweep must not kill the task; it retries next round
            log.exception("request folder sweep failed")


def _last_change(folder: Path) -> float:
    """Newest mtime of the folder and everything in it: an upload in progress keeps writing its file."""
    newest = _mtime(folder)
    for root, dirs, files in os.walk(folder):
        for name in (*dirs, *files):
            newest = max(newest, _mtime(Path(root) / name))
    return newest


def _mtime(path: Path) -> float:
    try:
        return path.lstat().st_mtime
    except OSError:  # removed meanwhile (the request ended): count it as fresh
        return time.time()

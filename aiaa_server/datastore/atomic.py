"""Crash-safe file writes: a temp file in the destination folder, fsync, `os.replace`, fsync the folder.

A kill -9 at any point leaves either the old file or the new one under the final name, never a partial one;
what it can leave is a temp file (`.aiaa-tmp-*`), which `clean_temp_files` removes when the datastore opens.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiaa_server.errors import PayloadTooLarge
from aiaa_server.mmar.fsync import fsync_dir

TEMP_PREFIX = ".aiaa-tmp-"
COPY_CHUNK = 1 << 20


def _replace_into(tmp: Path, dest: Path) -> None:
    try:
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(dest.parent)


def _write_temp(folder: Path, write: Callable[[Any], None]) -> Path:
    fd, name = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=folder)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            write(out)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return tmp


def atomic_copy(source: Path, dest: Path, max_bytes: int, what: str) -> tuple[int, str]:
    """Copy `source` to `dest` atomically, refusing files over `max_bytes`.

    Args:
        source: the file to copy (e.g. an upload spooled to disk).
        dest: the final path; its folder must exist.
        max_bytes: the size limit, checked before and while copying (a file still growing is caught).
        what: names the file in the error (`image`, `label`).

    Returns:
        `(size in bytes, "SHA256:<hex>")` of what was written.

    Raises:
        PayloadTooLarge: (413) `source` is larger than `max_bytes`; `dest` is untouched.
        OSError: `source` unreadable or the write failed; `dest` is untouched.
    """
    size = source.stat().st_size
    if size > max_bytes:
        raise PayloadTooLarge(f"{what} is {size} bytes, over the limit of {max_bytes}", limit=max_bytes)
    digest = hashlib.sha256()
    written = 0

    def write(out: Any) -> None:
        nonlocal written
        with source.open("rb") as src:
            while chunk := src.read(COPY_CHUNK):
                written += len(chunk)
                if written > max_bytes:
                    raise PayloadTooLarge(f"{what} is over the limit of {max_bytes} bytes", limit=max_bytes)
                digest.update(chunk)
                out.write(chunk)

    _replace_into(_write_temp(dest.parent, write), dest)
    return written, f"SHA256:{digest.hexdigest()}"


def atomic_write_json(dest: Path, data: Any) -> None:
    """Write `data` as JSON to `dest` atomically (temp file, fsync, replace, fsync the folder)."""
    payload = json.dumps(data, indent=1, sort_keys=True, default=str).encode()
    _replace_into(_write_temp(dest.parent, lambda out: out.write(payload)), dest)


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in `path`; None when it is missing, unreadable or not a JSON object."""
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def clean_temp_files(folders: list[Path]) -> list[Path]:
    """Delete the temp files an interrupted write left in `folders` (not recursive).

    Returns:
        the paths removed.
    """
    removed = []
    for folder in folders:
        with contextlib.suppress(OSError):
            for entry in folder.iterdir():
                if entry.name.startswith(TEMP_PREFIX) and entry.is_file() and not entry.is_symlink():
                    with contextlib.suppress(OSError):
                        entry.unlink()
                        removed.append(entry)
    return removed


def same_file(record: dict[str, Any], ext: str, stat: os.stat_result) -> bool:
    """Whether metadata written with a file (its `ext`, `size`, `mtime_ns`, `inode`) still describes the file now
    at that name: a file copied in by hand, or a crash between the file's write and its metadata's, fails this."""
    return (record.get("ext"), record.get("size"), record.get("mtime_ns"), record.get("inode")) == (
        ext, stat.st_size, stat.st_mtime_ns, stat.st_ino)

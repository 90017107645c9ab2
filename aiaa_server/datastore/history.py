"""Kept label versions: `.aiaa/history/<image id>/<tag>/v000001<ext>`, numbered upwards, bounded in count.

Saving a label first keeps the current file here (a hard link, or a copy where links are not supported), then
replaces it; removing a label moves it here. A crash between the two steps leaves one duplicate version, never
a lost one.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from pathlib import Path

from aiaa_server.mmar.fsync import fsync_dir

_VERSION = re.compile(r"v(\d{6,})(\.[A-Za-z0-9.]+)")


def list_versions(folder: Path) -> list[tuple[int, Path]]:
    """The kept versions in `folder`, oldest (lowest number) first; [] when the folder does not exist."""
    found = []
    with contextlib.suppress(OSError):
        for entry in folder.iterdir():
            match = _VERSION.fullmatch(entry.name)
            if match and entry.is_file():
                found.append((int(match.group(1)), entry))
    return sorted(found)


def archive(current: Path, folder: Path, ext: str, *, move: bool) -> Path:
    """Keep `current` as the next version in `folder`.

    Args:
        current: the label file being replaced or removed.
        folder: `.aiaa/history/<id>/<tag>`, created when missing.
        ext: the extension the version keeps (`.nii.gz`).
        move: True: rename `current` into the history (a removal); False: link or copy it (a replace follows).

    Returns:
        the path of the new version.
    """
    folder.mkdir(parents=True, exist_ok=True)
    existing = list_versions(folder)
    number = existing[-1][0] + 1 if existing else 1
    dest = folder / f"v{number:06d}{ext}"
    if move:
        os.replace(current, dest)
        fsync_dir(current.parent)
    else:
        try:
            os.link(current, dest)
        except OSError:
            shutil.copyfile(current, dest)
            with open(dest, "rb") as handle:
                os.fsync(handle.fileno())
    fsync_dir(folder)
    return dest


def prune(folder: Path, keep: int) -> list[str]:
    """Delete the oldest versions in `folder` beyond the newest `keep`.

    Returns:
        the names of the deleted files.
    """
    versions = list_versions(folder)
    dropped = []
    for _number, path in versions[: max(len(versions) - keep, 0)]:
        with contextlib.suppress(OSError):
            path.unlink()
            dropped.append(path.name)
    if dropped:
        fsync_dir(folder)
    return dropped


def version_number(name: str) -> int | None:
    """The number in a version file name (`v000003.nii.gz` -> 3), else None."""
    match = _VERSION.fullmatch(name)
    return int(match.group(1)) if match else None

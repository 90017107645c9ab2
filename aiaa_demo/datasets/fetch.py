"""Downloads into the cache: bounded in time and size, checked against a pinned sha256, written atomically.

A file is first written as `<name>.part` next to its final path and renamed only once its sha256 matches,
so the cache never holds an unverified file under its real name. A `.part` left by an interrupted
download is resumed with an HTTP Range request; a verified file already in place is never downloaded again.
"""

from __future__ import annotations

import hashlib
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

CHUNK = 2**20
USER_AGENT = "aiaa-demo-datasets/1 (+https://github.com/; python-urllib)"


class FetchError(RuntimeError):
    """A download that failed: network error, wrong size, or a sha256 other than the pinned one."""


class ChecksumError(FetchError):
    """The downloaded bytes do not have the pinned sha256 (the partial file has been deleted)."""


class SizeError(FetchError):
    """The server sends more bytes than the pinned size (the partial file has been deleted)."""


def sha256_of(path: Path) -> str:
    """The hex sha256 of the file at `path`, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def is_cached(dest: Path, sha256: str) -> bool:
    """Whether `dest` exists and has the pinned digest (a verified earlier download)."""
    return dest.is_file() and sha256_of(dest) == sha256


def _open(url: str, start: int, timeout: float) -> tuple[Any, int]:
    """The response for `url` from byte `start`, and the offset it really starts at (0 if Range was ignored)."""
    headers = {"User-Agent": USER_AGENT}
    if start:
        headers["Range"] = f"bytes={start}-"
    response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    status = getattr(response, "status", 200)
    return response, start if start and status == 206 else 0


def _download_once(url: str, part: Path, size: int, timeout: float, deadline: float,
                   progress: Callable[[int], None] | None) -> None:
    start = part.stat().st_size if part.exists() else 0
    if start == size:
        return  # complete: only the checksum is left to check
    if start > size:
        part.unlink()
        start = 0
    response, start = _open(url, start, timeout)
    with response, open(part, "r+b" if start else "wb") as out:
        out.seek(start)
        out.truncate()
        written = start
        while chunk := response.read(CHUNK):
            written += len(chunk)
            if written > size:
                raise SizeError(f"{url} is larger than its pinned size ({size} bytes)")
            if time.monotonic() > deadline:
                raise FetchError(f"{url}: download took longer than allowed")
            out.write(chunk)
            if progress is not None:
                progress(written)
    if written != size:
        raise FetchError(f"{url} ended after {written} of its pinned {size} bytes")


def download(url: str, dest: Path, sha256: str, size: int, *, timeout: float = 60.0, total_timeout: float = 1800.0,
             attempts: int = 3, progress: Callable[[int], None] | None = None) -> bool:
    """Download `url` to `dest` unless a verified copy is already there.

    Args:
        url: an http(s) (or file) URL.
        dest: the final path; its folder is created.
        sha256: the pinned hex digest the bytes must have.
        size: the pinned size in bytes: more is refused while downloading, less after it.
        timeout: seconds one connection may stay silent.
        total_timeout: seconds all attempts together may take.
        attempts: tries on a network error, each resuming the partial file.
        progress: called with the bytes written so far.

    Returns:
        True if it was downloaded now, False if a verified copy was already cached.

    Raises:
        ChecksumError: the complete download has another sha256; nothing is left in the cache.
        FetchError: it could not be downloaded whole (the `.part` file is kept to resume from).
    """
    if is_cached(dest, sha256):
        return False
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    deadline = time.monotonic() + total_timeout
    for attempt in range(attempts):
        try:
            _download_once(url, part, size, timeout, deadline, progress)
            break
        except SizeError:
            part.unlink(missing_ok=True)
            raise
        except (urllib.error.URLError, OSError, FetchError) as exc:  # resumed from the partial file
            if time.monotonic() > deadline or attempt == attempts - 1:
                raise FetchError(f"could not download {url}: {exc}") from exc
            time.sleep(min(2.0 * (attempt + 1), 10.0))
    actual = sha256_of(part)
    if actual != sha256:
        part.unlink(missing_ok=True)
        raise ChecksumError(f"{url}: sha256 {actual} is not the pinned {sha256}; the download was deleted")
    os.replace(part, dest)
    return True

"""Series downloaded from a PACS, kept on disk beside the volume decoded from them, bounded in bytes (LRU).

Layout::

    <folder>/<SeriesInstanceUID>/dicom/NNNNNN.dcm     the instances as the PACS sent them (the SEG writer's source)
    <folder>/<SeriesInstanceUID>/<uid>.nii.gz         the volume the rest of the server reads
    <folder>/<SeriesInstanceUID>/entry.json           bytes, checksum, instance count, fetch time; mtime = last use
    <folder>/.tmp-<pid>-*/                             a fill in progress; renamed into place once complete

An entry is complete or absent: a fill builds it in a temporary folder and renames it into place. Concurrent
fills of one series in one process wait for the first (one download); another process filling the same series
at the same moment loses the rename and uses the winner's entry. After each fill the least recently used entries
are removed until the folder is within `max_bytes`; the entry just filled always stays, so the folder may exceed
the bound by that one series. A removed entry is renamed away before it is deleted, so a reader never sees half
of one; a caller still reading an evicted entry's files keeps its open files (POSIX), not the paths.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from aiaa_server.datastore.atomic import read_json

log = logging.getLogger(__name__)

ENTRY = "entry.json"
DICOM_DIR = "dicom"
TEMP_PREFIX = ".tmp-"
TRASH_PREFIX = ".trash-"
HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class CachedSeries:
    """One complete cache entry: the decoded volume file, the instance files' folder and what was recorded."""

    series_uid: str
    folder: Path
    image: Path
    size: int
    checksum: str
    ts: float
    instances: int

    @property
    def dicom_dir(self) -> Path:
        return self.folder / DICOM_DIR

    def files(self) -> list[Path]:
        """The downloaded instance files, in the order received."""
        return sorted(path for path in self.dicom_dir.iterdir() if path.is_file())


class _KeyedLocks:
    """One lock per key, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._locks: dict[str, tuple[threading.Lock, list[int]]] = {}

    @contextlib.contextmanager
    def hold(self, key: str) -> Iterator[None]:
        with self._lock:
            lock, users = self._locks.setdefault(key, (threading.Lock(), [0]))
            users[0] += 1
        try:
            with lock:
                yield
        finally:
            with self._lock:
                users[0] -= 1
                if users[0] == 0:
                    del self._locks[key]


class SeriesCache:
    """A folder of downloaded series, least recently used evicted first.

    Args:
        folder: the cache folder; created when missing. Leftovers of dead processes' fills are removed.
        max_bytes: the folder's bound (the newest entry is kept even when it alone is larger).
        image_ext: the decoded volume's extension.
        clock: seconds since the epoch, recorded as an entry's fetch time.
    """

    def __init__(self, folder: Path, max_bytes: int, *, image_ext: str = ".nii.gz",
                 clock: Callable[[], float] = time.time) -> None:
        if max_bytes < 1:
            raise ValueError("max_bytes must be at least 1")
        self.folder = Path(folder)
        self.max_bytes = max_bytes
        self.image_ext = image_ext
        self.clock = clock
        self._locks = _KeyedLocks()
        self._evicting = threading.Lock()
        self.folder.mkdir(parents=True, exist_ok=True)
        self._remove_leftovers()

    def image_path(self, series_uid: str) -> Path:
        """Where the series' volume file is (or would be) once cached."""
        return self.folder / series_uid / f"{series_uid}{self.image_ext}"

    def get(self, series_uid: str, *, touch: bool = True) -> CachedSeries | None:
        """The complete entry of `series_uid`, or None; `touch` marks it as just used."""
        folder = self.folder / series_uid
        record = read_json(folder / ENTRY)
        image = self.image_path(series_uid)
        if record is None or not image.is_file():
            return None
        if touch:
            with contextlib.suppress(OSError):
                os.utime(folder / ENTRY)
        return CachedSeries(series_uid, folder, image, int(record.get("size", 0)), str(record.get("checksum", "")),
                            float(record.get("ts", 0.0)), int(record.get("instances", 0)))

    def fill(self, series_uid: str, build: Callable[[Path], int]) -> CachedSeries:
        """The entry of `series_uid`, built by `build` unless it is cached (or being built by another thread).

        Args:
            series_uid: the entry's name (a checked UID).
            build: given an empty temporary folder, writes the instances to `<folder>/dicom/` and the volume to
                `<folder>/<uid><image_ext>`, and returns the instance count; whatever it raises propagates,
                and its folder is removed.

        Returns:
            the complete entry, just used.
        """
        with self._locks.hold(series_uid):
            cached = self.get(series_uid)
            if cached is not None:
                return cached
            self._build(series_uid, build)
        self._evict(keep=series_uid)
        found = self.get(series_uid)
        if found is None:  # removed by another process between the rename and now
            raise FileNotFoundError(f"cache entry {series_uid} vanished")
        return found

    def _build(self, series_uid: str, build: Callable[[Path], int]) -> None:
        tmp = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-", dir=self.folder))
        try:
            (tmp / DICOM_DIR).mkdir()
            instances = build(tmp)
            image = tmp / f"{series_uid}{self.image_ext}"
            record = {"series_uid": series_uid, "instances": instances, "checksum": _sha256(image),
                      "ts": self.clock()}
            record["size"] = _tree_bytes(tmp) + 256  # the entry file itself, roughly
            (tmp / ENTRY).write_text(json.dumps(record, indent=1, sort_keys=True))
            self._place(tmp, self.folder / series_uid)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _place(self, tmp: Path, dest: Path) -> None:
        if dest.exists() and read_json(dest / ENTRY) is None:
            self._discard(dest)  # an incomplete folder under the final name (copied in, or a foreign crash)
        try:
            os.rename(tmp, dest)
        except OSError:
            if read_json(dest / ENTRY) is None:
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another process placed it first: use theirs

    def remove(self, series_uid: str) -> bool:
        """Drop an entry; True when there was one."""
        folder = self.folder / series_uid
        if not folder.exists():
            return False
        self._discard(folder)
        return True

    def entries(self) -> list[tuple[float, str, int]]:
        """(last use, series UID, bytes) of every complete entry, least recently used first."""
        found = []
        with contextlib.suppress(OSError):
            for child in self.folder.iterdir():
                if child.name.startswith(".") or not child.is_dir():
                    continue
                record = read_json(child / ENTRY)
                with contextlib.suppress(OSError):
                    if record is not None:
                        found.append(((child / ENTRY).stat().st_mtime, child.name, int(record.get("size", 0))))
        return sorted(found)

    def total_bytes(self) -> int:
        """The bytes of every complete entry, as recorded when filled."""
        return sum(size for _used, _uid, size in self.entries())

    def _evict(self, keep: str) -> None:
        with self._evicting:
            entries = self.entries()
            total = sum(size for _used, _uid, size in entries)
            for _used, uid, size in entries:
                if total <= self.max_bytes:
                    break
                if uid != keep and self.remove(uid):
                    total -= size
                    log.info("dicomweb cache: evicted series %s (%d bytes)", uid, size)

    def _discard(self, folder: Path) -> None:
        trash = self.folder / f"{TRASH_PREFIX}{os.getpid()}-{threading.get_ident()}-{folder.name}"
        try:
            os.rename(folder, trash)
        except OSError:
            return
        shutil.rmtree(trash, ignore_errors=True)

    def _remove_leftovers(self) -> None:
        for child in self.folder.iterdir():
            prefix = next((p for p in (TEMP_PREFIX, TRASH_PREFIX) if child.name.startswith(p)), None)
            if prefix is not None and child.is_dir() and not _alive(child.name[len(prefix):].split("-", 1)[0]):
                shutil.rmtree(child, ignore_errors=True)


def _alive(pid_text: str) -> bool:
    """Whether the process `pid_text` names may still be filling (this process counts as alive)."""
    if not pid_text.isdigit():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists but is not ours
        return True
    return True


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(HASH_CHUNK):
            digest.update(chunk)
    return f"SHA256:{digest.hexdigest()}"


def _tree_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())

"""Sessions (protocol section 5): an uploaded image stored once and reused by many interactive calls.

Each session lives on disk as `<root>/<id>/` holding the image and `meta.json` (written atomically), so
sessions survive a restart (`aiaa_server.sessions.files`). Its metadata is kept by a backend
(`aiaa_server.sessions.backends`): this process (disk), or Redis so that replicas sharing the workspace serve each other's
sessions. The store keeps the sessions under a byte budget (least recently accessed evicted first) and
expires idle ones. Decoded volumes and the models' image-only pre-processing results are kept in a bounded
in-memory LRU (`aiaa_server.sessions.cache`) so that clicks on a session neither re-read nor re-preprocess it. The
records are the models of `aiaa_server.sessions.models`.

Every use renews a session's expiry in the backend's live record, but only the first use in each window of
PERSIST_FRACTION × expiry seconds (counted from the session's creation) is `durable`: with the disk backend,
the others stay in memory until the next durable use or `close`. So `meta.json` lags the live record by
less than PERSIST_FRACTION × expiry (6 minutes of the default hour): after a crash a session expires at most
that much earlier than it would have, after a clean shutdown not at all. Redis writes every use.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import shutil
import threading
import time
import weakref
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import Any

from aiaa_server.errors import AIAAError, InvalidImage, NotFound, PayloadTooLarge
from aiaa_server.imaging.io import Volume, read_image
from aiaa_server.imaging.limits import DEFAULT_LIMITS, DecodeLimits
from aiaa_server.sessions.backends import (
    META_FILE,
    DiskSessionBackend,
    SessionBackend,
    is_session_id,
    new_session_id,
    short_id,
    write_json_atomically,
)
from aiaa_server.sessions.cache import ByteLRU, _Preprocessed
from aiaa_server.sessions.files import (
    DICOM_HEADERS,
    PARTIAL_SUFFIX,
    SessionUpload,
    folder_bytes,
    orphan_folders,
    save_format,
    saved_sessions,
    store_image,
)
from aiaa_server.sessions.models import (
    SessionInfo,
    SessionStats,
    image_meta,
    to_record,
)

log = logging.getLogger(__name__)

PERSIST_FRACTION = 0.1  # meta.json may lag the live expiry by this fraction of the session's expiry (module doc)


class SessionNotFound(NotFound):
    code = "session_not_found"


class NotSupported(AIAAError):
    status = 501
    code = "not_supported"


# --------------------------------------------------------------------------------------------------------
# Cache keys


def _for_session(session_id: str) -> Callable[[Hashable], bool]:
    return lambda key: isinstance(key, tuple) and len(key) > 1 and key[1] == session_id


# --------------------------------------------------------------------------------------------------------
# The store


def _parse(record: str | None) -> SessionInfo | None:
    if record is None:
        return None
    try:
        return SessionInfo.model_validate_json(record)
    except ValueError as exc:
        log.warning("ignoring an unreadable session record: %s", exc)
        return None


class SessionStore:
    """Sessions on disk under `root`, their metadata in a `SessionBackend` (memory + meta.json, or Redis).

    The caches (decoded volumes, pre-processing, stats) are per process; every call checks the backend first,
    so a session deleted or expired through another replica is noticed (and its cache entries dropped)."""

    def __init__(
        self,
        root: Path,
        default_expiry: int = 3600,
        budget_bytes: int = 10 * 2**30,
        cache_bytes: int = 2 * 2**30,
        gzip_level: int = 1,
        clock: Callable[[], float] = time.time,
        backend: SessionBackend | None = None,
        limits: DecodeLimits = DEFAULT_LIMITS,
    ) -> None:
        self.root = root
        self.default_expiry = default_expiry
        self.budget_bytes = budget_bytes
        self.gzip_level = gzip_level
        self.limits = limits
        self.cache = ByteLRU(cache_bytes)
        self.backend: SessionBackend = backend if backend is not None else DiskSessionBackend(root)
        self._clock = clock
        self._stats: dict[str, SessionStats] = {}
        self._guard = threading.RLock()
        self.root.mkdir(parents=True, exist_ok=True)
        if not self.backend.shared:  # a shared backend already knows its sessions; folders are swept instead
            self._reload()

    # -- lifecycle ---------------------------------------------------------------------------------------

    def effective_expiry(self, requested: int | None) -> int:
        """`min(requested, max)`; absent or <= 0 means the server default (which is also the maximum)."""
        if requested is None or requested <= 0:
            return self.default_expiry
        return min(int(requested), self.default_expiry)

    def create(
        self, uploads: Sequence[SessionUpload], expiry: int | None = None, save_as: str | None = None
    ) -> SessionInfo:
        """Store one volume (NIfTI/NRRD) or a DICOM series (several files or a zip) as a new session."""
        if not uploads:
            raise InvalidImage("no image uploaded: send the volume (or the DICOM files) as multipart file parts")
        save_fmt = save_format(save_as)
        session_id = new_session_id()
        partial = self.root / f"{session_id}{PARTIAL_SUFFIX}"
        partial.mkdir(parents=True)
        try:
            stored = store_image(uploads, partial, save_fmt, self.limits, self.gzip_level)
            size = folder_bytes(partial)
            if size > self.budget_bytes:
                raise PayloadTooLarge(
                    f"the session image takes {size / 2**20:.1f} MB, more than the server's whole session budget "
                    f"({self.budget_bytes / 2**20:.0f} MB, --session_budget_mb)"
                )
            now = self._clock()
            info = SessionInfo(
                session_id=session_id, name=stored.name, image=stored.image,
                meta=image_meta(stored.volume, stored.source, size, stored.format),
                create_ts=now, last_access_ts=now, expiry=self.effective_expiry(expiry),
            )
            write_json_atomically(partial / META_FILE, to_record(info))
            evicted = self._insert(info, partial)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        self._remove_folders(evicted, "evicted (session budget)")
        self._count(session_id, lambda stats: setattr(stats, "decodes", stats.decodes + 1))
        self.cache.put(("volume", session_id), stored.volume)
        log.info("session %s created: %s %s, %.1f MB, expiry %d s", short_id(session_id), stored.source,
                 info.meta.shape, size / 2**20, info.expiry)
        return self._with_stats(session_id, info)

    def get(self, session_id: str, touch: bool = False) -> SessionInfo:
        with self._guard:
            info = self._alive(session_id)
            if touch:
                info = self._touch(info)
        return self._with_stats(session_id, info)

    def touch(self, session_id: str) -> SessionInfo:
        return self.get(session_id, touch=True)

    def delete(self, session_id: str) -> SessionInfo:
        with self._guard:
            info = self._alive(session_id)
            if not self.backend.remove(session_id):  # another replica deleted it meanwhile
                self._forget(session_id)
                raise SessionNotFound(f"session {session_id!r} does not exist or has expired", session_id=session_id)
        result = self._with_stats(session_id, info)
        self._remove_folders([session_id], "deleted")
        return result

    def sweep(self) -> list[str]:
        """Remove every expired session (and its files); returns their ids.

        With a shared backend, also remove the folders of sessions the backend no longer knows (expired by
        the Redis TTL, or deleted by a replica that died before removing the files)."""
        now = self._clock()
        with self._guard:
            infos = self._infos()
            expired = [i.session_id for i in infos if i.expires_at() < now and self.backend.remove(i.session_id)]
            alive = {i.session_id for i in infos} - set(expired)
        self._remove_folders(expired, "expired")
        orphans = orphan_folders(self.root, alive, now, self.backend.load) if self.backend.shared else []
        self._remove_folders(orphans, "removed (expired or deleted through another replica)")
        self._forget_all_but(alive)
        return expired + orphans

    async def sweep_periodically(self, interval_s: float) -> None:
        """Background task (started by the app's lifespan): sweep every `interval_s` seconds until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await asyncio.to_thread(self.sweep)
            except Exception:  # a failing sweep must not kill the task; it retries next round
                log.exception("session sweep failed")

    def close(self) -> None:
        """Close the backend (the disk backend writes the access times it kept in memory)."""
        self.backend.close()

    @property
    def total_bytes(self) -> int:
        return sum(i.meta.size_bytes for i in self._infos())

    def __len__(self) -> int:
        return len(self._infos())

    # -- cached image access (used by the inference service) ---------------------------------------------

    def volume(self, session_id: str) -> Volume:
        """The session's decoded volume, from the cache or decoded once (concurrent callers wait for it)."""
        def decode() -> Volume:
            path = self._image_path(session_id)
            volume = read_image(path, path.name, limits=self.limits, allow_png=True)  # a PNG: 2D models
            self._count(session_id, lambda stats: setattr(stats, "decodes", stats.decodes + 1))
            log.info("session %s: decoded %s %s", short_id(session_id), path.name, volume.spatial_shape)
            return volume

        value, _ = self.cache.get_or_compute(("volume", session_id), decode)
        return value

    def preprocessed(
        self, session_id: str, model_name: str, owner: object, compute: Callable[[], dict[str, Any]]
    ) -> dict[str, Any]:
        """A model's image-only pre-processing of this session's image, computed once per (session, model).

        `owner` (the model's pipeline object) is part of the key, so a reloaded model never sees results
        of its predecessor. Callers must copy the returned dict before changing it."""
        key = ("pre", session_id, model_name, id(owner))

        def run() -> _Preprocessed:
            data = compute()
            self._count(session_id, lambda stats: stats.preprocess_runs.__setitem__(
                model_name, stats.preprocess_runs.get(model_name, 0) + 1))
            return _Preprocessed(weakref.ref(owner), data)

        entry, _ = self.cache.get_or_compute(key, run)
        if entry.owner() is not owner:  # id() reused by a new object: stale entry
            self.cache.discard(lambda k: k == key)
            entry, _ = self.cache.get_or_compute(key, run)
        return entry.data

    # -- internals -------------------------------------------------------------------------------------

    def _infos(self) -> list[SessionInfo]:
        parsed = (_parse(record) for record in self.backend.records().values())
        return [info for info in parsed if info is not None]

    def _ttl(self, info: SessionInfo) -> float:
        return info.expires_at() - self._clock()

    def _insert(self, info: SessionInfo, partial: Path) -> list[str]:
        """Make room (least recently accessed first), then publish the session; returns the evicted ids."""
        session_id = info.session_id
        with self._guard:
            evicted = self._evict_until_fits(info.meta.size_bytes)
            # The record goes first: in a shared workspace a folder without a record is an orphan to sweep.
            self.backend.add(session_id, to_record(info), self._ttl(info))
            try:
                os.rename(partial, self.root / session_id)
            except BaseException:
                self.backend.remove(session_id)
                raise
            self._stats[session_id] = SessionStats()
        return evicted

    def _evict_until_fits(self, extra_bytes: int) -> list[str]:
        """Drop least recently accessed sessions (caller holds the lock) until `extra_bytes` more fit."""
        infos = self._infos()
        evicted: list[str] = []
        used = sum(i.meta.size_bytes for i in infos)
        for victim in sorted(infos, key=lambda i: i.last_access_ts):
            if used + extra_bytes <= self.budget_bytes:
                break
            used -= victim.meta.size_bytes
            if self.backend.remove(victim.session_id):
                evicted.append(victim.session_id)
        return evicted

    def _alive(self, session_id: str) -> SessionInfo:
        """The live session's info (caller holds the lock); expired ones are dropped here already."""
        if not is_session_id(session_id):  # never let a client-chosen string reach a backend key or a path
            raise SessionNotFound(f"session {session_id!r} does not exist", session_id=session_id)
        info = _parse(self.backend.load(session_id))
        if info is None:
            self._forget(session_id)  # it may have been deleted through another replica
            raise SessionNotFound(f"session {session_id!r} does not exist or has expired", session_id=session_id)
        if info.expires_at() < self._clock():
            if self.backend.remove(session_id):
                threading.Thread(target=self._remove_folders, args=([session_id], "expired"), daemon=True).start()
            else:
                self._forget(session_id)
            raise SessionNotFound(f"session {session_id!r} has expired", session_id=session_id)
        return info

    def _touch(self, info: SessionInfo) -> SessionInfo:
        session_id = info.session_id
        touched = info.model_copy(update={"last_access_ts": self._clock()})
        durable = _persist_window(touched) != _persist_window(info)
        try:
            alive = self.backend.refresh(session_id, to_record(touched), self._ttl(touched), durable=durable)
        except OSError as exc:  # the in-memory state stays right; only a restart would see an older time
            log.warning("session %s: could not persist access time: %s", short_id(session_id), exc)
            return touched
        if not alive:
            self._forget(session_id)
            raise SessionNotFound(f"session {session_id!r} does not exist or has expired", session_id=session_id)
        return touched

    def dicom_headers(self, session_id: str) -> Path | None:
        """The session's DICOM series headers (for DICOM SEG results) when its image came as a DICOM series."""
        path = self._image_path(session_id).parent / DICOM_HEADERS
        return path if path.is_file() else None

    def _image_path(self, session_id: str) -> Path:
        with self._guard:
            info = self._alive(session_id)
            return self.root / session_id / info.image

    def _count(self, session_id: str, update: Callable[[SessionStats], None]) -> None:
        with self._guard:
            stats = self._stats.get(session_id)
            if stats is not None:
                update(stats)

    def _with_stats(self, session_id: str, info: SessionInfo) -> SessionInfo:
        with self._guard:
            stats = self._stats.setdefault(session_id, SessionStats()).model_copy(deep=True)
        stats.cached_bytes = self.cache.bytes_where(_for_session(session_id))
        return info.model_copy(update={"stats": stats})

    def _forget(self, session_id: str) -> None:
        """Drop this process's cache entries and counters of a session."""
        self.cache.discard(_for_session(session_id))
        with self._guard:
            self._stats.pop(session_id, None)

    def _forget_all_but(self, alive: set[str]) -> None:
        self.cache.discard(lambda key: isinstance(key, tuple) and len(key) > 1 and key[1] not in alive)
        with self._guard:
            for session_id in [s for s in self._stats if s not in alive]:
                del self._stats[session_id]

    def _remove_folders(self, session_ids: Sequence[str], why: str) -> None:
        for session_id in session_ids:
            self._forget(session_id)
            shutil.rmtree(self.root / session_id, ignore_errors=True)
            log.info("session %s %s", short_id(session_id), why)

    def _reload(self) -> None:
        """Pick up the sessions a previous run left on disk (`session_files.saved_sessions`)."""
        for info in saved_sessions(self.root, self._clock()):
            self.backend.add(info.session_id, to_record(info), self._ttl(info))
            self._stats[info.session_id] = SessionStats()
        with self._guard:
            over_budget = self._evict_until_fits(0)  # the budget may have been lowered since
        self._remove_folders(over_budget, "evicted (session budget)")
        count = len(self.backend.records())
        if count:
            log.info("reloaded %d session(s) from %s", count, self.root)


def _persist_window(info: SessionInfo) -> int:
    """Which window of PERSIST_FRACTION × expiry seconds since the session's creation its last access is in."""
    return math.floor((info.last_access_ts - info.create_ts) / (PERSIST_FRACTION * max(info.expiry, 1)))

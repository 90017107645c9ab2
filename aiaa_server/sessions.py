"""Sessions (protocol section 5): an uploaded image stored once and reused by many interactive calls.

Each session lives on disk as `<root>/<id>/` holding the image and `meta.json` (written atomically), so
sessions survive a restart. Its metadata is kept by a backend (`session_backends`): this process (disk), or
Redis so that replicas sharing the workspace serve each other's sessions. The store keeps the sessions under a byte budget (least recently accessed
evicted first) and expires idle ones. Decoded volumes and the models' image-only pre-processing results
are kept in a bounded in-memory LRU (`aiaa_server.cache`) so that clicks on a session neither re-read nor
re-preprocess it. The records are the models of `aiaa_server.session_models`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import threading
import time
import weakref
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import Any, Protocol

from aiaa_server.cache import ByteLRU, _nbytes, _Preprocessed  # noqa: F401 (ByteLRU, _nbytes re-exported)
from aiaa_server.errors import AIAAError, InvalidImage, InvalidParams, NotFound, PayloadTooLarge
from aiaa_server.imaging.dicom_volume import dicom_series_to_file
from aiaa_server.imaging.formats import ImageFormat, client_basename, detect_format
from aiaa_server.imaging.io import Volume, read_volume
from aiaa_server.imaging.limits import DEFAULT_LIMITS, DecodeLimits
from aiaa_server.session_backends import (
    META_FILE,
    DiskSessionBackend,
    SessionBackend,
    is_session_id,
    new_session_id,
    short_id,
    write_json_atomically,
)
from aiaa_server.session_models import (  # noqa: F401 (the models are re-exported)
    ImageMeta,
    SessionCreated,
    SessionInfo,
    SessionStats,
    image_meta,
    to_record,
)

log = logging.getLogger(__name__)

PARTIAL_SUFFIX = ".partial"
SAVE_AS_FORMATS = {fmt.value: fmt for fmt in (ImageFormat.NIFTI, ImageFormat.NIFTI_GZ, ImageFormat.NRRD)}


class SessionNotFound(NotFound):
    code = "session_not_found"


class NotSupported(AIAAError):
    status = 501
    code = "not_supported"


class SessionUpload(Protocol):
    """One uploaded file part (`api.forms` gives `ImageUpload`s)."""

    path: Path
    filename: str


# --------------------------------------------------------------------------------------------------------
# Cache keys


def _for_session(session_id: str) -> Callable[[Hashable], bool]:
    return lambda key: isinstance(key, tuple) and len(key) > 1 and key[1] == session_id


# --------------------------------------------------------------------------------------------------------
# The store


PARTIAL_GRACE_S = 3600.0  # a replica may still be writing a younger `.partial` folder in a shared workspace


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


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
        save_fmt = self._save_format(save_as)
        session_id = new_session_id()
        partial = self.root / f"{session_id}{PARTIAL_SUFFIX}"
        partial.mkdir(parents=True)
        try:
            name, image_name, volume, source, fmt = self._store_image(uploads, partial, save_fmt)
            size = _folder_bytes(partial)
            if size > self.budget_bytes:
                raise PayloadTooLarge(
                    f"the session image takes {size / 2**20:.1f} MB, more than the server's whole session budget "
                    f"({self.budget_bytes / 2**20:.0f} MB, --session_budget_mb)"
                )
            now = self._clock()
            info = SessionInfo(
                session_id=session_id, name=name, image=image_name,
                meta=image_meta(volume, source, size, fmt),
                create_ts=now, last_access_ts=now, expiry=self.effective_expiry(expiry),
            )
            write_json_atomically(partial / META_FILE, to_record(info))
            evicted = self._insert(info, partial)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        self._remove_folders(evicted, "evicted (session budget)")
        self._count(session_id, lambda stats: setattr(stats, "decodes", stats.decodes + 1))
        self.cache.put(("volume", session_id), volume)
        log.info("session %s created: %s %s, %.1f MB, expiry %d s", short_id(session_id), source, info.meta.shape,
                 size / 2**20, info.expiry)
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
        orphans = self._orphan_folders(alive, now) if self.backend.shared else []
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
            volume = read_volume(path, path.name, limits=self.limits)
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

    @staticmethod
    def _save_format(save_as: str | None) -> ImageFormat:
        if save_as is None or not save_as.strip():
            return ImageFormat.NIFTI_GZ
        wanted = save_as.strip().lower()
        wanted = wanted if wanted.startswith(".") else "." + wanted
        if wanted not in SAVE_AS_FORMATS:
            raise InvalidParams(f"unsupported save_as {save_as!r}; use one of {', '.join(SAVE_AS_FORMATS)}")
        return SAVE_AS_FORMATS[wanted]

    def _store_image(
        self, uploads: Sequence[SessionUpload], folder: Path, save_fmt: ImageFormat
    ) -> tuple[str, str, Volume, str, ImageFormat]:
        """Put the image into `folder`; returns (name, image file name, its decoded volume, source, format)."""
        formats = [detect_format(u.path, u.filename) for u in uploads]
        if len(uploads) == 1 and formats[0].is_volume_format:
            upload, fmt = uploads[0], formats[0]
            # Refuse undecodable files now, not at the first click.
            volume = read_volume(upload.path, upload.filename, limits=self.limits)
            image_name = "image" + fmt.value
            shutil.move(str(upload.path), folder / image_name)
            return client_basename(upload.filename) or image_name, image_name, volume, fmt.name.lower(), fmt
        if all(f in (ImageFormat.DICOM, ImageFormat.ZIP) for f in formats):
            image_name = "image" + save_fmt.value
            volume, slices = dicom_series_to_file([u.path for u in uploads], folder / "dicom-unpacked",
                                                  folder / image_name, save_fmt, self.gzip_level, self.limits)
            return "dicom_series", image_name, volume, f"dicom series ({slices} slices)", save_fmt
        if len(uploads) == 1:
            raise InvalidImage(f"sessions hold 3D volumes (NIfTI, NRRD or DICOM); got a {formats[0].value} file")
        raise InvalidImage(
            "several files were uploaded but they are not all DICOM: send one NIfTI/NRRD volume, or the DICOM "
            f"files of one series (got {', '.join(sorted({f.value for f in formats}))})"
        )

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
        info = info.model_copy(update={"last_access_ts": self._clock()})
        try:
            alive = self.backend.refresh(session_id, to_record(info), self._ttl(info))
        except OSError as exc:  # the in-memory state stays right; only a restart would see an older time
            log.warning("session %s: could not persist access time: %s", short_id(session_id), exc)
            return info
        if not alive:
            self._forget(session_id)
            raise SessionNotFound(f"session {session_id!r} does not exist or has expired", session_id=session_id)
        return info

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

    def _orphan_folders(self, alive: set[str], now: float) -> list[str]:
        """Folders (shared workspace) whose session the backend no longer holds; stale `.partial` ones go too."""
        orphans: list[str] = []
        for folder in self.root.iterdir():
            if not folder.is_dir():
                continue
            if folder.name.endswith(PARTIAL_SUFFIX):
                if _age(folder, now) > PARTIAL_GRACE_S:
                    shutil.rmtree(folder, ignore_errors=True)
                continue
            # Re-check: a replica may have created this session after `alive` was listed.
            if folder.name not in alive and self.backend.load(folder.name) is None:
                orphans.append(folder.name)
        return orphans

    def _reload(self) -> None:
        """Pick up the sessions a previous run left on disk; drop half-written and expired ones."""
        now = self._clock()
        for folder in sorted(self.root.iterdir()):
            if not folder.is_dir():
                continue
            if folder.name.endswith(PARTIAL_SUFFIX):
                shutil.rmtree(folder, ignore_errors=True)
                continue
            try:
                info = SessionInfo.model_validate_json((folder / META_FILE).read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                log.warning("dropping unreadable session folder %s: %s", short_id(folder.name), exc)
                shutil.rmtree(folder, ignore_errors=True)
                continue
            if (info.session_id != folder.name or not is_session_id(folder.name) or info.expires_at() < now
                    or not (folder / info.image).is_file()):
                shutil.rmtree(folder, ignore_errors=True)
                continue
            self.backend.add(info.session_id, to_record(info), self._ttl(info))
            self._stats[info.session_id] = SessionStats()
        with self._guard:
            over_budget = self._evict_until_fits(0)  # the budget may have been lowered since
        self._remove_folders(over_budget, "evicted (session budget)")
        count = len(self.backend.records())
        if count:
            log.info("reloaded %d session(s) from %s", count, self.root)


def _age(folder: Path, now: float) -> float:
    try:
        return now - folder.stat().st_mtime
    except OSError:
        return 0.0

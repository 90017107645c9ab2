"""A MONAI Label-compatible datastore on a local folder.

Layout, as MONAI Label users have it (an existing folder of images and `labels/final` works as is)::

    <root>/case_001.nii.gz                 images, directly in the root; the id is the name without extension
    <root>/labels/<tag>/case_001.nii.gz    labels, one folder per tag (`final`, `original`, custom tags)
    <root>/.aiaa/meta/case_001.json        this server's metadata: image info, per-tag label info, lock
    <root>/.aiaa/history/case_001/<tag>/   previous label versions (`history.py`)
    <root>/.aiaa/lock                      flock'ed while a write runs, so two processes do not interleave

The files on disk are the truth: every call lists the folder, so images and labels copied in by hand appear
(with info taken from the file), and metadata whose file has changed underneath is not trusted. All writes are
atomic (`atomic.py`); one re-entrant lock per datastore makes it thread-safe.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from aiaa_server.datastore.atomic import atomic_copy, atomic_write_json, clean_temp_files, read_json, same_file
from aiaa_server.datastore.dicom_headers import DicomHeaders
from aiaa_server.datastore.ids import (
    DEFAULT_EXTENSIONS,
    LabelTag,
    check_extension,
    check_image_id,
    check_tag,
    split_name,
)
from aiaa_server.datastore.labels import LabelStore
from aiaa_server.datastore.models import DatastoreLimits, ImageInfo
from aiaa_server.datastore.strategies import ActiveLearning
from aiaa_server.datastore.views import DatastoreViews
from aiaa_server.errors import BadRequest, Conflict, NotFound, PayloadTooLarge
from aiaa_server.mmar.fsync import fsync_dir

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: the thread lock alone
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

META_DIR = ".aiaa"
LABELS_DIR = "labels"
FINAL = LabelTag.FINAL.value


class LocalDatastore(LabelStore, ActiveLearning, DatastoreViews, DicomHeaders):
    """Images and labels in a local folder, with metadata, label versions and active-learning locks.

    Args:
        root: the datastore folder; created when missing.
        limits: size, count, version and lock bounds; None: `DatastoreLimits()`.
        name: the datastore's name in `json()`; None: the folder's name.
        description: the datastore's description in `json()`.
        extensions: file extensions recognised as images and labels.
        clock: seconds since the epoch (timestamps and lock expiry); tests inject a fake one.
        rng: the random source of the `random` strategy; pass `random.Random(seed)` for repeatable picks.
    """

    ids_are_series_uids = False  # True where every image id is its DICOM SeriesInstanceUID (DICOMweb)

    def __init__(
        self,
        root: Path,
        limits: DatastoreLimits | None = None,
        *,
        name: str | None = None,
        description: str = "",
        extensions: tuple[str, ...] = DEFAULT_EXTENSIONS,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.root = Path(root).resolve()
        self.limits = limits or DatastoreLimits()
        self.name = name or self.root.name
        self.description = description
        self.extensions = tuple(extensions)
        self.clock = clock
        self.rng = rng or random.Random()
        self._lock = threading.RLock()
        self._depth = 0
        for folder in (self.root / LABELS_DIR / FINAL, self.root / LABELS_DIR / LabelTag.ORIGINAL.value,
                       self._meta_root / "meta", self._meta_root / "history"):
            folder.mkdir(parents=True, exist_ok=True)
        self._lock_file = os.open(self._meta_root / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        with self._guard():
            removed = clean_temp_files(self._temp_folders())
        if removed:
            log.warning("datastore %s: removed %d temp files of interrupted writes", self.root, len(removed))

    # ---- plumbing -------------------------------------------------------------------------------------------

    @property
    def _meta_root(self) -> Path:
        return self.root / META_DIR

    def close(self) -> None:
        """Release the lock file's descriptor (the datastore is unusable afterwards)."""
        with contextlib.suppress(OSError):
            os.close(self._lock_file)

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        with self._lock:
            if self._depth == 0 and fcntl is not None:
                fcntl.flock(self._lock_file, fcntl.LOCK_EX)
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0 and fcntl is not None:
                    fcntl.flock(self._lock_file, fcntl.LOCK_UN)

    def _temp_folders(self) -> list[Path]:
        folders = [self.root, self._meta_root, self._meta_root / "meta"]
        folders += [p for p in (self.root / LABELS_DIR).iterdir() if p.is_dir()]
        for image_dir in (self._meta_root / "history").iterdir():
            if image_dir.is_dir():
                folders += [p for p in image_dir.iterdir() if p.is_dir()]
        return folders

    def _meta_path(self, image_id: str) -> Path:
        return self._meta_root / "meta" / f"{image_id}.json"

    def _history_dir(self, image_id: str, tag: str) -> Path:
        return self._meta_root / "history" / image_id / tag

    def _read_meta(self, image_id: str) -> dict[str, Any]:
        meta = read_json(self._meta_path(image_id)) or {}
        for key in ("image", "labels", "history", "strategy"):
            if not isinstance(meta.get(key), dict):
                meta[key] = {}
        return meta

    def _write_meta(self, image_id: str, meta: dict[str, Any]) -> None:
        atomic_write_json(self._meta_path(image_id), meta)

    def _check_client(self, client_id: str | None) -> str | None:
        if client_id is not None and (not isinstance(client_id, str)
                                      or len(client_id) > self.limits.max_client_id_length
                                      or not client_id.isprintable()):
            raise BadRequest(f"invalid client id: use at most {self.limits.max_client_id_length} printable characters")
        return client_id

    def _check_info(self, info: dict[str, Any] | None, what: str) -> dict[str, Any]:
        if info is None:
            return {}
        if not isinstance(info, dict):
            raise BadRequest(f"{what} must be a JSON object")
        try:
            size = len(json.dumps(info))
        except (TypeError, ValueError) as exc:
            raise BadRequest(f"{what} is not JSON: {exc}") from None
        if size > self.limits.max_info_bytes:
            raise PayloadTooLarge(f"{what} is {size} bytes as JSON, over the limit of {self.limits.max_info_bytes}")
        return info

    def _source_ext(self, source: Path, ext: str | None) -> tuple[str | None, str]:
        if ext is not None:
            return None, check_extension(ext, self.extensions)
        parts = split_name(source.name, self.extensions)
        if parts is None:
            raise BadRequest(f"unsupported file name {source.name!r}: use one of {', '.join(self.extensions)}")
        return parts

    # ---- scanning the folder ----------------------------------------------------------------------------------

    def _scan_folder(self, folder: Path) -> dict[str, str]:
        """id -> file name of the image (or label) files in `folder`; unsafe names and duplicates are skipped."""
        found: dict[str, str] = {}
        order = {ext.lower(): rank for rank, ext in enumerate(self.extensions)}
        try:
            names = sorted(os.listdir(folder))
        except OSError:
            return found
        for name in names:
            parts = None if name.startswith(".") else split_name(name, self.extensions)
            if parts is None or not (folder / name).is_file():
                continue
            image_id, ext = parts
            try:
                check_image_id(image_id)
            except BadRequest:
                log.warning("datastore: skipping %s (not a safe image id)", folder / name)
                continue
            other = found.get(image_id)
            if other is None or order[ext.lower()] < order[split_name(other, self.extensions)[1].lower()]:
                found[image_id] = name
        return found

    def _scan_images(self) -> dict[str, str]:
        return self._scan_folder(self.root)

    def _label_tags(self) -> list[str]:
        tags = []
        with contextlib.suppress(OSError):
            for entry in (self.root / LABELS_DIR).iterdir():
                if entry.is_dir() and not entry.name.startswith("."):
                    with contextlib.suppress(BadRequest):
                        tags.append(check_tag(entry.name))
        return sorted(tags)

    def _scan_labels(self) -> dict[str, dict[str, str]]:
        """tag -> (image id -> label file name), over every tag folder."""
        return {tag: self._scan_folder(self.root / LABELS_DIR / tag) for tag in self._label_tags()}

    def _labels_of(self, image_id: str) -> dict[str, Path]:
        """tag -> current label file of one image."""
        found = {}
        for tag in self._label_tags():
            for ext in self.extensions:
                path = self.root / LABELS_DIR / tag / f"{image_id}{ext}"
                if path.is_file():
                    found[tag] = path
                    break
        return found

    def _image_name(self, image_id: str) -> str:
        check_image_id(image_id)
        for ext in self.extensions:
            if (self.root / f"{image_id}{ext}").is_file():
                return f"{image_id}{ext}"
        name = self._scan_images().get(image_id)  # an extension spelled in another case
        if name is None:
            raise NotFound(f"image {image_id!r} not found", image=image_id)
        return name

    # ---- images -------------------------------------------------------------------------------------------------

    def list_images(self) -> list[str]:
        """The image ids in the folder, sorted."""
        with self._guard():
            return sorted(self._scan_images())

    def add_image(
        self,
        image_id: str | None,
        source: Path,
        *,
        ext: str | None = None,
        client_id: str | None = None,
        info: dict[str, Any] | None = None,
        replace: bool = False,
        dicom_headers: Path | None = None,
    ) -> ImageInfo:
        """Copy an image file into the datastore.

        Args:
            image_id: the new image's id; None: `source`'s file name without its extension.
            source: the image file (e.g. an upload spooled to disk); it is copied, not moved.
            ext: the extension to store it with (`.nii.gz`); None: `source`'s own.
            client_id: who added it, kept in its info.
            info: the client's metadata for the image (a JSON object).
            replace: True: an image with this id is replaced (its labels are kept); False: that is a Conflict.
            dicom_headers: the headers file of the DICOM series the image was decoded from (moved in; DICOM SEG
                results and labels are written against it); None: the image has none.

        Returns:
            the stored image's info.

        Raises:
            BadRequest: (400) an unsafe id, an unknown extension, bad client id or info.
            Conflict: (409) the id exists and `replace` is False, or the datastore holds `max_images` images.
            PayloadTooLarge: (413) the file is over `max_image_bytes`, or the info over `max_info_bytes`.
        """
        source = Path(source)
        own_id, ext = self._source_ext(source, ext)
        image_id = check_image_id(image_id if image_id is not None else own_id)
        client_id = self._check_client(client_id)
        info = self._check_info(info, "image info")
        with self._guard():
            images = self._scan_images()
            old = images.get(image_id)
            if old is not None and not replace:
                raise Conflict(f"image {image_id!r} already exists", image=image_id)
            if old is None and len(images) >= self.limits.max_images:
                raise Conflict(f"the datastore is full ({self.limits.max_images} images)", limit=self.limits.max_images)
            if old is None:
                self._forget(image_id)  # metadata and history left by an image removed by hand
            dest = self.root / f"{image_id}{ext}"
            size, checksum = atomic_copy(source, dest, self.limits.max_image_bytes, "image")
            if old is not None and old != dest.name:
                (self.root / old).unlink(missing_ok=True)
                fsync_dir(self.root)
            self._keep_headers(image_id, dicom_headers)
            meta = self._read_meta(image_id)
            meta["image"] = {"ext": ext, "ts": self.clock(), "client_id": client_id, "size": size,
                             "mtime_ns": dest.stat().st_mtime_ns, "inode": dest.stat().st_ino, "checksum": checksum, "info": info}
            self._write_meta(image_id, meta)
            log.info("datastore: added image %s (%d bytes)", image_id, size)
            return self._image_info(image_id, dest.name, meta)

    def local_image_path(self, image_id: str) -> Path | None:
        """The image file of `image_id` if it is on this machine now (nothing is fetched); None otherwise."""
        try:
            return self.get_image_path(image_id)
        except NotFound:
            return None

    def get_image_path(self, image_id: str) -> Path:
        """The image file of `image_id`.

        Raises:
            BadRequest: (400) an unsafe id.
            NotFound: (404) no such image.
        """
        with self._guard():
            return self.root / self._image_name(image_id)

    def get_image_info(self, image_id: str) -> ImageInfo:
        """The info of one image (file, client info, label tags, strategy history, lock).

        Raises:
            BadRequest: (400) an unsafe id.
            NotFound: (404) no such image.
        """
        with self._guard():
            return self._image_info(image_id, self._image_name(image_id), self._read_meta(image_id))

    def update_image_info(self, image_id: str, info: dict[str, Any]) -> ImageInfo:
        """Merge `info` into the image's client info (as MONAI Label's `update_image_info`).

        Raises:
            BadRequest: (400) an unsafe id or info that is not a JSON object.
            NotFound: (404) no such image.
            PayloadTooLarge: (413) the merged info is over `max_info_bytes`.
        """
        with self._guard():
            name = self._image_name(image_id)
            meta = self._read_meta(image_id)
            current = self._image_info(image_id, name, meta)
            merged = self._check_info({**current.info, **self._check_info(info, "image info")}, "image info")
            meta["image"] = {**self._image_record(current, meta), "info": merged}
            self._write_meta(image_id, meta)
            return self._image_info(image_id, name, meta)

    def remove_image(self, image_id: str) -> None:
        """Delete an image, its labels, its metadata and its label history.

        Raises:
            BadRequest: (400) an unsafe id.
            NotFound: (404) no such image.
        """
        with self._guard():
            name = self._image_name(image_id)
            for path in self._labels_of(image_id).values():
                path.unlink(missing_ok=True)
                fsync_dir(path.parent)
            (self.root / name).unlink(missing_ok=True)
            fsync_dir(self.root)
            self._forget(image_id)
            log.info("datastore: removed image %s", image_id)

    def _forget(self, image_id: str) -> None:
        self._meta_path(image_id).unlink(missing_ok=True)
        self._headers_file(image_id).unlink(missing_ok=True)
        shutil.rmtree(self._meta_root / "history" / image_id, ignore_errors=True)
        fsync_dir(self._meta_root / "meta")

    def _image_record(self, info: ImageInfo, meta: dict[str, Any]) -> dict[str, Any]:
        stat = Path(info.path).stat()
        kept = meta["image"] if same_file(meta["image"], info.ext, stat) else {}  # a stale checksum goes
        return {**kept, "ext": info.ext, "ts": info.ts, "size": info.size, "client_id": info.client_id,
                "mtime_ns": stat.st_mtime_ns, "inode": stat.st_ino, "info": info.info}

    def _image_info(self, image_id: str, name: str, meta: dict[str, Any]) -> ImageInfo:
        path = self.root / name
        stat = path.stat()
        record = meta["image"]
        ext = name[len(image_id):]
        trusted = same_file(record, ext, stat)
        lock = self._active_lock(meta)
        return ImageInfo(
            id=image_id, name=name, ext=ext, path=str(path), size=stat.st_size,
            ts=record.get("ts", stat.st_mtime) if trusted else stat.st_mtime,
            checksum=record.get("checksum") if trusted else None,
            client_id=record.get("client_id") if trusted else None,
            info=record.get("info") or {},
            labels=sorted(self._labels_of(image_id)), strategy=meta["strategy"], lock=lock,
        )

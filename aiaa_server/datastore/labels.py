"""Labels of the local datastore: save (keeping the previous file as a version), read, remove.

A mixin of `LocalDatastore` (`local.py`), which provides the folder scanning, metadata and lock it uses.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiaa_server.datastore.atomic import atomic_copy, same_file
from aiaa_server.datastore.history import archive, list_versions, prune
from aiaa_server.datastore.ids import LabelTag, check_tag
from aiaa_server.datastore.models import LabelInfo, LabelVersion
from aiaa_server.errors import NotFound
from aiaa_server.mmar.fsync import fsync_dir

if TYPE_CHECKING:
    from aiaa_server.datastore.local import LocalDatastore

log = logging.getLogger(__name__)

FINAL = LabelTag.FINAL.value


class LabelStore:
    """Label operations of `LocalDatastore`."""

    def save_label(
        self: LocalDatastore,
        image_id: str,
        source: Path,
        tag: str = FINAL,
        *,
        ext: str | None = None,
        client_id: str | None = None,
        model: str | None = None,
        label_info: dict[str, Any] | None = None,
    ) -> LabelInfo:
        """Store a label for (image, tag); the label it replaces is kept as a version, never overwritten.

        Saving a `final` label completes the image: its active-learning lock is released.

        Args:
            image_id: the image the label belongs to.
            source: the label file (e.g. an upload spooled to disk); it is copied, not moved.
            tag: the label's tag: `final` (an annotator's label), `original` (a model's) or a custom one.
            ext: the extension to store it with; None: `source`'s own.
            client_id: who saved it.
            model: the model that produced it, if any.
            label_info: the client's metadata for the label (MONAI Label's save params).

        Returns:
            the stored label's info, its kept versions included.

        Raises:
            BadRequest: (400) an unsafe id or tag, an unknown extension, bad client id or info.
            NotFound: (404) no such image.
            PayloadTooLarge: (413) the file is over `max_label_bytes`, or the info over `max_info_bytes`.
        """
        source = Path(source)
        tag = check_tag(tag)
        _own_id, ext = self._source_ext(source, ext)
        client_id = self._check_client(client_id)
        label_info = self._check_info(label_info, "label info")
        if model is not None:
            model = self._check_client(model)
        with self._guard():
            self._image_name(image_id)
            folder = self.root / "labels" / tag
            folder.mkdir(parents=True, exist_ok=True)
            meta = self._read_meta(image_id)
            current = self._labels_of(image_id).get(tag)
            kept = self._keep_version(image_id, tag, current, meta, move=False) if current else None
            dest = folder / f"{image_id}{ext}"
            try:
                size, checksum = atomic_copy(source, dest, self.limits.max_label_bytes, "label")
            except BaseException:
                if kept is not None:
                    with contextlib.suppress(OSError):
                        kept.unlink()
                        meta["history"].get(tag, {}).pop(kept.name, None)
                raise
            if current is not None and current != dest:
                current.unlink(missing_ok=True)
                fsync_dir(folder)
            now = self.clock()
            meta["labels"][tag] = {"ext": ext, "ts": now, "client_id": client_id, "model": model, "size": size,
                                   "mtime_ns": dest.stat().st_mtime_ns, "inode": dest.stat().st_ino, "checksum": checksum,
                                   "label_info": label_info}
            if tag == FINAL:
                meta["lock"] = None
            self._prune(image_id, tag, meta)
            self._write_meta(image_id, meta)
            log.info("datastore: saved label %s/%s (%d bytes)", image_id, tag, size)
            return self._label_info(image_id, tag, dest, meta)

    def get_label_path(self: LocalDatastore, image_id: str, tag: str = FINAL) -> Path:
        """The current label file of (image, tag).

        Raises:
            BadRequest: (400) an unsafe id or tag.
            NotFound: (404) no such image, or it has no label with this tag.
        """
        with self._guard():
            return self._current_label(image_id, check_tag(tag))

    def get_label_info(self: LocalDatastore, image_id: str, tag: str = FINAL) -> LabelInfo:
        """The info of the current label of (image, tag), with its kept versions (oldest first).

        Raises:
            BadRequest: (400) an unsafe id or tag.
            NotFound: (404) no such image, or it has no label with this tag.
        """
        tag = check_tag(tag)
        with self._guard():
            path = self._current_label(image_id, tag)
            return self._label_info(image_id, tag, path, self._read_meta(image_id))

    def get_label_version_path(self: LocalDatastore, image_id: str, tag: str, version: int) -> Path:
        """The file of one kept version of (image, tag).

        Raises:
            BadRequest: (400) an unsafe id or tag.
            NotFound: (404) no such image or version.
        """
        tag = check_tag(tag)
        with self._guard():
            self._image_name(image_id)
            for number, path in list_versions(self._history_dir(image_id, tag)):
                if number == version:
                    return path
            raise NotFound(f"label {image_id!r}/{tag!r} has no version {version}", image=image_id, tag=tag)

    def remove_label(self: LocalDatastore, image_id: str, tag: str = FINAL) -> None:
        """Remove the current label of (image, tag); the file is kept as its newest version.

        Raises:
            BadRequest: (400) an unsafe id or tag.
            NotFound: (404) no such image, or it has no label with this tag.
        """
        tag = check_tag(tag)
        with self._guard():
            path = self._current_label(image_id, tag)
            meta = self._read_meta(image_id)
            if self.limits.max_versions > 0:
                self._keep_version(image_id, tag, path, meta, move=True)
            else:
                path.unlink()
                fsync_dir(path.parent)
            meta["labels"].pop(tag, None)
            self._prune(image_id, tag, meta)
            self._write_meta(image_id, meta)
            log.info("datastore: removed label %s/%s", image_id, tag)

    # ---- helpers ------------------------------------------------------------------------------------------------

    def _current_label(self: LocalDatastore, image_id: str, tag: str) -> Path:
        self._image_name(image_id)
        path = self._labels_of(image_id).get(tag)
        if path is None:
            raise NotFound(f"image {image_id!r} has no {tag!r} label", image=image_id, tag=tag)
        return path

    def _label_record(self: LocalDatastore, image_id: str, tag: str, path: Path, meta: dict[str, Any]) -> dict:
        """The stored metadata of the label file `path`, or what its file says when the metadata does not match
        it (a label copied in by hand, or a crash between writing the label and its metadata)."""
        stat = path.stat()
        record = meta["labels"].get(tag)
        ext = path.name[len(image_id):]
        if isinstance(record, dict) and same_file(record, ext, stat):
            return record
        return {"ext": ext, "ts": stat.st_mtime, "size": stat.st_size}

    def _keep_version(self: LocalDatastore, image_id: str, tag: str, path: Path, meta: dict[str, Any], *,
                      move: bool) -> Path | None:
        if self.limits.max_versions <= 0:
            return None
        record = self._label_record(image_id, tag, path, meta)
        kept = archive(path, self._history_dir(image_id, tag), record["ext"], move=move)
        meta["history"].setdefault(tag, {})[kept.name] = {
            "ts": record.get("ts"), "replaced": self.clock(), "client_id": record.get("client_id"),
            "model": record.get("model"), "checksum": record.get("checksum"),
        }
        return kept

    def _prune(self: LocalDatastore, image_id: str, tag: str, meta: dict[str, Any]) -> None:
        folder = self._history_dir(image_id, tag)
        prune(folder, self.limits.max_versions)
        names = {path.name for _n, path in list_versions(folder)}
        kept = meta["history"].get(tag, {})
        meta["history"][tag] = {name: value for name, value in kept.items() if name in names}

    def _label_info(self: LocalDatastore, image_id: str, tag: str, path: Path, meta: dict[str, Any]) -> LabelInfo:
        record = self._label_record(image_id, tag, path, meta)
        stored = meta["history"].get(tag, {})
        versions = []
        for number, version in list_versions(self._history_dir(image_id, tag)):
            about = stored.get(version.name) or {}
            stat = version.stat()
            versions.append(LabelVersion(
                version=number, name=version.name, path=str(version), size=stat.st_size,
                ts=about.get("ts") or stat.st_mtime, replaced=about.get("replaced"),
                client_id=about.get("client_id"), model=about.get("model"), checksum=about.get("checksum"),
            ))
        return LabelInfo(
            image=image_id, tag=tag, name=path.name, ext=record["ext"], path=str(path), size=record["size"],
            ts=record["ts"], checksum=record.get("checksum"), client_id=record.get("client_id"),
            model=record.get("model"), label_info=record.get("label_info") or {}, versions=versions,
        )

"""Whole-datastore views in MONAI Label's shapes: stats, the training list and the full JSON.

A mixin of `LocalDatastore` (`local.py`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiaa_server.datastore.ids import LabelTag
from aiaa_server.datastore.models import (
    DataEntry,
    DatastoreJson,
    DatastoreStats,
    ObjectEntry,
    TrainItem,
    TrainMeta,
)

if TYPE_CHECKING:
    from aiaa_server.datastore.local import LocalDatastore

FINAL = LabelTag.FINAL.value


class DatastoreViews:
    """Read-only views of `LocalDatastore`."""

    def stats(self: LocalDatastore) -> DatastoreStats:
        """MONAI Label's `GET /datastore/` (output=stats): total, completed (with a `final` label), labels per tag;
        plus the sorted ids ready to train on (`train`) and still to annotate (`ready`)."""
        with self._guard():
            images = self._scan_images()
            labels = self._scan_labels()
        tags = {tag: sum(1 for image_id in found if image_id in images) for tag, found in labels.items()}
        final = labels.get(FINAL, {})
        train = sorted(image_id for image_id in images if image_id in final)
        ready = sorted(image_id for image_id in images if image_id not in final)
        return DatastoreStats(total=len(images), completed=len(train), label_tags={k: v for k, v in tags.items() if v},
                              train=train, ready=ready)

    def datalist(self: LocalDatastore) -> list[TrainItem]:
        """MONAI Label's `GET /datastore/?output=train`: every image with a `final` label, sorted by id, with both
        absolute paths and both infos."""
        with self._guard():
            images = self._scan_images()
            final = self._scan_folder(self.root / "labels" / FINAL)
            items = []
            for image_id in sorted(set(images) & set(final)):
                meta = self._read_meta(image_id)
                image = self._image_info(image_id, images[image_id], meta)
                label = self._label_info(image_id, FINAL, self.root / "labels" / FINAL / final[image_id], meta)
                items.append(TrainItem(image=image.path, label=label.path,
                                       meta=TrainMeta(image=image.monai_info(), label=label.monai_info())))
            return items

    def json(self: LocalDatastore) -> DatastoreJson:
        """MONAI Label's `GET /datastore/?output=all`: name, description, folders and every image's entry
        (`{"image": {"ext", "info"}, "labels": {tag: {"ext", "info"}}}`), keyed by id."""
        with self._guard():
            images = self._scan_images()
            labels = self._scan_labels()
            objects = {}
            for image_id in sorted(images):
                meta = self._read_meta(image_id)
                image = self._image_info(image_id, images[image_id], meta)
                info = image.monai_info()
                info.pop("path", None)
                entry = ObjectEntry(image=DataEntry(ext=image.ext, info=info))
                for tag, found in labels.items():
                    if image_id in found:
                        path = self.root / "labels" / tag / found[image_id]
                        record = self._label_info(image_id, tag, path, meta)
                        entry.labels[tag] = DataEntry(ext=record.ext, info=record.monai_info())
                objects[image_id] = entry
        return DatastoreJson(name=self.name, description=self.description, objects=objects)

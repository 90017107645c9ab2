"""The datastore's limits and the typed shapes of what it answers (MONAI Label's datastore JSON included)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, Field


@dataclass(frozen=True)
class DatastoreLimits:
    """Bounds on what a datastore accepts.

    Args:
        max_image_bytes: largest image file accepted (PayloadTooLarge above).
        max_label_bytes: largest label file accepted (PayloadTooLarge above).
        max_images: most images the folder may hold; adding one more is a Conflict (409): the request is valid,
            the datastore's state refuses it (remove images first), like a full disk.
        max_versions: previous label files kept per (image, tag) under `.aiaa/history`; the oldest go first.
        max_info_bytes: largest client-supplied metadata (image info, label info) as JSON (PayloadTooLarge).
        lock_seconds: how long an image handed out by a strategy stays locked to its client by default.
        max_lock_seconds: the longest lock a client may ask for (longer asks are cut to this).
        max_locks_per_client: images one client may hold locked at once; a further hand-out frees its oldest.
        max_client_id_length: longest client id accepted (BadRequest above).
    """

    max_image_bytes: int = 4 << 30
    max_label_bytes: int = 1 << 30
    max_images: int = 100_000
    max_versions: int = 20
    max_info_bytes: int = 64 << 10
    lock_seconds: float = 600.0
    max_lock_seconds: float = 24 * 3600.0
    max_locks_per_client: int = 4
    max_client_id_length: int = 256

    def __post_init__(self) -> None:
        for name in ("max_image_bytes", "max_label_bytes", "max_images", "max_info_bytes", "max_locks_per_client",
                     "max_client_id_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.max_versions < 0:
            raise ValueError("max_versions must be at least 0")
        if not 0 < self.lock_seconds <= self.max_lock_seconds:
            raise ValueError("lock_seconds must be positive and at most max_lock_seconds")


class LockInfo(BaseModel):
    """An image handed to one annotator by an active-learning strategy, until `expires` (clock seconds)."""

    client_id: str
    strategy: str
    ts: float
    expires: float


class LabelVersion(BaseModel):
    """A previous label file kept in `.aiaa/history/<id>/<tag>/`."""

    version: int
    name: str
    path: str
    size: int
    ts: float = Field(description="when this file became the current label (or the file's mtime when unknown)")
    replaced: float | None = Field(None, description="when a newer label (or a removal) replaced it")
    client_id: str | None = None
    model: str | None = None
    checksum: str | None = None


class LabelInfo(BaseModel):
    """The current label of one (image, tag) and its kept versions, oldest first."""

    image: str
    tag: str
    name: str
    ext: str
    path: str
    size: int
    ts: float
    checksum: str | None = None
    client_id: str | None = None
    model: str | None = None
    label_info: dict[str, Any] = Field(default_factory=dict)
    versions: list[LabelVersion] = Field(default_factory=list)

    def monai_info(self) -> dict[str, Any]:
        """The flat `info` dict MONAI Label keeps for a label: the client's params plus ts, checksum, name."""
        extra = {"client_id": self.client_id, "model": self.model}
        return {**self.label_info, **{k: v for k, v in extra.items() if v is not None},
                "ts": int(self.ts), "checksum": self.checksum, "name": self.name}


class ImageInfo(BaseModel):
    """One image: its file, the client's info, its label tags, strategy history and current lock."""

    id: str
    name: str
    ext: str
    path: str
    size: int
    ts: float
    checksum: str | None = Field(None, description='"SHA256:<hex>" of the file, when written by this datastore')
    client_id: str | None = None
    info: dict[str, Any] = Field(default_factory=dict)
    labels: list[str] = Field(default_factory=list, description="tags with a current label, sorted")
    strategy: dict[str, dict[str, Any]] = Field(default_factory=dict)
    lock: LockInfo | None = None

    def monai_info(self) -> dict[str, Any]:
        """The flat `info` dict MONAI Label keeps for an image (its `get_image_info`, `path` included)."""
        out = {**self.info, "ts": int(self.ts), "name": self.name, "path": self.path}
        if self.checksum:
            out["checksum"] = self.checksum
        if self.strategy:
            out["strategy"] = self.strategy
        return out


class DatastoreStats(BaseModel):
    """`GET /datastore/` (output=stats) in MONAI Label: counts of images, completed ones, labels per tag."""

    total: int
    completed: int = Field(description="images with a `final` label")
    label_tags: dict[str, int] = Field(default_factory=dict)
    train: list[str] = Field(default_factory=list, description="ids with a `final` label, sorted")
    ready: list[str] = Field(default_factory=list, description="ids without a `final` label, sorted")


class TrainMeta(BaseModel):
    image: dict[str, Any]
    label: dict[str, Any]


class TrainItem(BaseModel):
    """One entry of `GET /datastore/?output=train`: absolute image and `final` label paths and their info."""

    image: str
    label: str
    meta: TrainMeta


class DataEntry(BaseModel):
    ext: str
    info: dict[str, Any] = Field(default_factory=dict)


class ObjectEntry(BaseModel):
    image: DataEntry
    labels: dict[str, DataEntry] = Field(default_factory=dict)


class DatastoreJson(BaseModel):
    """`GET /datastore/?output=all` in MONAI Label: the whole datastore, objects keyed by image id."""

    name: str
    description: str
    images_dir: str = "."
    labels_dir: str = "labels"
    objects: dict[str, ObjectEntry] = Field(default_factory=dict)

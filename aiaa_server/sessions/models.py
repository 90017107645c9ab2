"""The session records (protocol section 5): what a session's `meta.json` and the `/session` answers hold.

Pydantic models shared by the store (`aiaa_server.sessions`), its backends and the `/session` routes, and
how a decoded volume becomes a session's `ImageMeta`.
"""

from __future__ import annotations

from pydantic import BaseModel

from aiaa_server.imaging.formats import ImageFormat
from aiaa_server.imaging.io import Volume

__all__ = ["ImageMeta", "SessionCreated", "SessionInfo", "SessionStats", "image_meta", "to_record"]


class ImageMeta(BaseModel):
    shape: list[int]
    spacing: list[float]
    affine: list[list[float]]
    format: str
    dtype: str
    source: str
    size_bytes: int


class SessionStats(BaseModel):
    """Runtime counters (not persisted): how often this server process decoded / pre-processed the image."""

    decodes: int = 0
    preprocess_runs: dict[str, int] = {}
    cached_bytes: int = 0


class SessionInfo(BaseModel):
    session_id: str
    name: str
    image: str
    meta: ImageMeta
    create_ts: float
    last_access_ts: float
    expiry: int
    stats: SessionStats | None = None

    def expires_at(self) -> float:
        return self.last_access_ts + self.expiry


class SessionCreated(BaseModel):
    session_id: str
    session_info: SessionInfo


def image_meta(volume: Volume, source: str, size_bytes: int, fmt: ImageFormat) -> ImageMeta:
    """A stored image's metadata.

    Args:
        volume: the stored file, decoded (array [i, j, k], its voxel → RAS affine).
        source: how it was uploaded (`"nifti_gz"`, `"dicom series (N slices)"`, ...).
        size_bytes: the bytes the session's folder takes on disk.
        fmt: the stored file's format.
    """
    return ImageMeta(
        shape=list(volume.spatial_shape),
        spacing=[round(s, 6) for s in volume.spacing],
        affine=[[float(v) for v in row] for row in volume.affine],
        format=fmt.value,
        dtype=str(volume.array.dtype),
        source=source,
        size_bytes=size_bytes,
    )


def to_record(info: SessionInfo) -> str:
    """The JSON a backend (and `meta.json`) stores for a session: its info without the runtime counters."""
    return info.model_dump_json(exclude={"stats"})

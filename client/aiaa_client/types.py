"""Shapes the client returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

from aiaa_client.images import ArrayImage, array_and_affine

if TYPE_CHECKING:
    import numpy as np

Point = list[int]


class ModelDict(TypedDict, total=False):
    """A model object as `GET /v1/models` sends it (protocol section 6)."""

    name: str
    type: str
    labels: list[str]
    description: str
    version: str
    deepgrow: str
    padding: float
    roi: list[int]
    sigma: float


@dataclass(frozen=True)
class ModelInfo:
    name: str
    type: str
    labels: list[str]
    description: str
    version: str
    raw: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelInfo:
        return cls(
            name=str(data.get("name", "")),
            type=str(data.get("type", "")),
            labels=[str(label) for label in data.get("labels") or []],
            description=str(data.get("description", "")),
            version=str(data.get("version", "")),
            raw=dict(data),
        )

    @property
    def deepgrow_dims(self) -> int | None:
        """3 or 2 for deepgrow models (protocol: absent means 2D), None for other types."""
        if self.type != "deepgrow":
            return None
        return 3 if "3d" in str(self.raw.get("deepgrow", "")).lower() else 2

    @property
    def padding(self) -> float:
        return float(self.raw.get("padding", 20.0))

    @property
    def roi(self) -> tuple[int, int, int]:
        roi = self.raw.get("roi", 128)
        values = [int(roi)] * 3 if isinstance(roi, (int, float)) else [int(v) for v in roi]
        return (values * 3)[:3] if len(values) == 1 else tuple(values[:3])  # type: ignore[return-value]


@dataclass
class InferenceResult:
    """What an image-producing call returned: the `params` JSON and (usually) one result file."""

    params: dict[str, Any]
    image_bytes: bytes | None = None
    filename: str | None = None
    path: Path | None = None  # where the result was written, when an output path was given
    _decoded: ArrayImage | None = field(default=None, repr=False, compare=False)

    @property
    def has_image(self) -> bool:
        return self.image_bytes is not None

    def image(self) -> ArrayImage:
        """(array, affine) of a NIfTI result; decoded once (needs numpy and nibabel)."""
        if self._decoded is None:
            if self.image_bytes is None:
                raise ValueError("this result has no image (JSON-only answer)")
            self._decoded = array_and_affine(self.image_bytes)
        return self._decoded

    @property
    def array(self) -> np.ndarray:
        return self.image()[0]

    @property
    def affine(self) -> np.ndarray:
        return self.image()[1]

    @property
    def points(self) -> list[Point]:
        """Extreme points the server reported (`points`, or `extreme_points`), [] when none."""
        return list(self.params.get("points") or self.params.get("extreme_points") or [])


@dataclass(frozen=True)
class Session:
    session_id: str
    info: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class FixPolygonResult:
    poly: Any
    result: InferenceResult

"""Click parameters of the interactive endpoints (DeepGrow, DExtr3D): lenient parsing, strict checking.

Clients send points as `[x, y, z]` 0-based voxel indices of the uploaded image; `current_point` arrives as
`[x, y, z]`, `[[x, y, z]]` or not at all, and `foreground`/`background` may be missing. A request carries at
most `max_clicks` points in all (`--max_clicks`); coordinates must be finite numbers.

A request's clicks are parsed once, into `DeepgrowClicks` or `ExtremePoints`; the pipeline data carries that
object under CLICKS_KEY (beside the normalised lists under the protocol's keys, for other transforms), and the
click transforms read it instead of the lists.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiaa_server.errors import InvalidParams
from aiaa_server.mmar.config import AIAAConfig, ModelType

MIN_DEXTR3D_POINTS = 6
MAX_CLICKS = 10000  # the default of --max_clicks
MAX_COORDINATE = 2**31  # far beyond any image; keeps int() and the transforms' arithmetic exact and cheap
CLICKS_KEY = "aiaa_clicks"
DEEPGROW_KEYS = ("foreground", "background", "current_point")
EXTREME_POINTS_KEY = "points"

Point = list[int]
# Parsed request points are `Point`s; the transforms also take what training scripts pass (arrays, tuples).
Points = Sequence[Sequence[float]]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _as_coordinate(value: Any, point: Any, key: str) -> int:
    if not _is_number(value):
        raise InvalidParams(f"{key}: point coordinates must be numbers, got {point!r}", key=key)
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidParams(f"{key}: point coordinates must be finite numbers, got {point!r}", key=key)
    if abs(value) > MAX_COORDINATE:
        raise InvalidParams(f"{key}: point coordinate {value!r} is out of range (|c| <= {MAX_COORDINATE})", key=key)
    return round(value)


def _as_point(value: Any, key: str) -> Point:
    if not isinstance(value, (list, tuple)) or len(value) not in (2, 3):
        raise InvalidParams(f"{key}: each point must be [x, y, z] voxel indices, got {_shown(value)}", key=key)
    return [_as_coordinate(coordinate, value, key) for coordinate in value]


def _shown(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def parse_points(value: Any, key: str, max_points: int = MAX_CLICKS) -> list[Point]:
    """A list of at most `max_points` points; a single flat `[x, y, z]` is accepted as one point; missing/null
    → []. The count is checked before any point is converted.

    Args:
        value: the param as the client sent it (JSON-decoded).
        key: its name, for the error messages.
        max_points: the most points accepted.

    Returns:
        the points, each 2 or 3 integer coordinates (rounded).
    """
    if value is None or value == "":
        return []
    if not isinstance(value, (list, tuple)):
        raise InvalidParams(f"{key} must be a list of [x, y, z] points, got {type(value).__name__}", key=key)
    if value and _is_number(value[0]):
        return [_as_point(value, key)]
    if len(value) > max_points:
        raise InvalidParams(
            f"{key} has {len(value)} points; at most {max_points} are accepted in one request (--max_clicks)",
            key=key, count=len(value), limit=max_points,
        )
    return [_as_point(p, key) for p in value]


def _parse_all(params: Mapping[str, Any], keys: Sequence[str], max_clicks: int) -> list[list[Point]]:
    """Each key's points; together they may not exceed `max_clicks` either."""
    parsed = [parse_points(params.get(key), key, max_points=max_clicks) for key in keys]
    total = sum(len(points) for points in parsed)
    if total > max_clicks:
        raise InvalidParams(
            f"{', '.join(keys)} have {total} points together; at most {max_clicks} are accepted in one request "
            "(--max_clicks)", count=total, limit=max_clicks,
        )
    return parsed


@dataclass(frozen=True)
class DeepgrowClicks:
    """A DeepGrow call's clicks, [x, y, z] voxel indices of the input; there is always at least one."""

    foreground: Points
    background: Points
    current_point: Points

    def __post_init__(self) -> None:
        if not (len(self.foreground) or len(self.background) or len(self.current_point)):
            raise InvalidParams("DeepGrow needs at least one click in foreground, background or current_point")

    @classmethod
    def parse(cls, params: Mapping[str, Any], max_clicks: int = MAX_CLICKS) -> DeepgrowClicks:
        """The request's clicks; `current_point` keeps only the newest point."""
        foreground, background, current = _parse_all(params, DEEPGROW_KEYS, max_clicks)
        return cls(foreground, background, current[-1:])

    def as_params(self) -> dict[str, Any]:
        """The pipeline data of these clicks: the lists under the protocol's keys, this object under CLICKS_KEY."""
        lists = (self.foreground, self.background, self.current_point)
        return {**dict(zip(DEEPGROW_KEYS, lists)), CLICKS_KEY: self}


@dataclass(frozen=True)
class ExtremePoints:
    """A DExtr3D call's boundary points, [x, y, z] voxel indices of the input; at least MIN_DEXTR3D_POINTS."""

    points: Points

    def __post_init__(self) -> None:
        if len(self.points) < MIN_DEXTR3D_POINTS:
            raise InvalidParams(
                f"DExtr3D needs at least {MIN_DEXTR3D_POINTS} boundary points in params.points, got {len(self.points)}"
            )

    @classmethod
    def parse(cls, params: Mapping[str, Any], max_clicks: int = MAX_CLICKS) -> ExtremePoints:
        return cls(parse_points(params.get(EXTREME_POINTS_KEY), EXTREME_POINTS_KEY, max_points=max_clicks))

    def as_params(self) -> dict[str, Any]:
        return {EXTREME_POINTS_KEY: self.points, CLICKS_KEY: self}


Clicks = DeepgrowClicks | ExtremePoints


def parse_clicks(model_type: ModelType, params: Mapping[str, Any], max_clicks: int = MAX_CLICKS) -> Clicks | None:
    """The clicks a model of `model_type` needs (None for the other types); refuses what it cannot use.

    Args:
        model_type: annotation models take `points`; deepgrow and pipeline models the DeepGrow clicks.
        params: the request's params (JSON-decoded).
        max_clicks: the most points in one request (`--max_clicks`).
    """
    if model_type is ModelType.ANNOTATION:
        return ExtremePoints.parse(params, max_clicks)
    if model_type in (ModelType.DEEPGROW, ModelType.PIPELINE):
        return DeepgrowClicks.parse(params, max_clicks)
    return None


def with_clicks(params: Mapping[str, Any], clicks: Clicks | None) -> dict[str, Any]:
    """`params` with the clicks' pipeline data (normalised lists and CLICKS_KEY) in place of the raw lists."""
    return {**params, **clicks.as_params()} if clicks is not None else dict(params)


def prepare_params(config: AIAAConfig, params: dict[str, Any], max_clicks: int = MAX_CLICKS) -> dict[str, Any]:
    """The pipeline data of `params` for the model of `config` (see `parse_clicks` and `with_clicks`)."""
    return with_clicks(params, parse_clicks(config.type, params, max_clicks))

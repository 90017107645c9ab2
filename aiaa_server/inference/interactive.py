"""Click parameters of the interactive endpoints (DeepGrow, DExtr3D): lenient parsing, strict checking.

Clients send points as `[x, y, z]` 0-based voxel indices of the uploaded image; `current_point` arrives as
`[x, y, z]`, `[[x, y, z]]` or not at all, and `foreground`/`background` may be missing. A request carries at
most `max_clicks` points in all (`--max_clicks`); coordinates must be finite numbers.
"""

from __future__ import annotations

import math
from typing import Any

from aiaa_server.errors import InvalidParams
from aiaa_server.mmar.config import AIAAConfig, ModelType

MIN_DEXTR3D_POINTS = 6
MAX_CLICKS = 10000  # the default of --max_clicks
MAX_COORDINATE = 2**31  # far beyond any image; keeps int() and the transforms' arithmetic exact and cheap

Point = list[int]


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
    → []. The count is checked before any point is converted."""
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


def _parse_clicks(params: dict[str, Any], keys: tuple[str, ...], max_clicks: int) -> dict[str, list[Point]]:
    """Each key's points; together they may not exceed `max_clicks` either."""
    parsed = {key: parse_points(params.get(key), key, max_points=max_clicks) for key in keys}
    total = sum(len(points) for points in parsed.values())
    if total > max_clicks:
        raise InvalidParams(
            f"{', '.join(keys)} have {total} points together; at most {max_clicks} are accepted in one request "
            "(--max_clicks)", count=total, limit=max_clicks,
        )
    return parsed


def prepare_params(config: AIAAConfig, params: dict[str, Any], max_clicks: int = MAX_CLICKS) -> dict[str, Any]:
    """Normalise the click params for the model's type; refuse what the model cannot use."""
    prepared = dict(params)
    if config.type is ModelType.ANNOTATION:
        points = parse_points(params.get("points"), "points", max_points=max_clicks)
        if len(points) < MIN_DEXTR3D_POINTS:
            raise InvalidParams(
                f"DExtr3D needs at least {MIN_DEXTR3D_POINTS} boundary points in params.points, got {len(points)}"
            )
        prepared["points"] = points
    elif config.type in (ModelType.DEEPGROW, ModelType.PIPELINE):
        prepared.update(_parse_clicks(params, ("foreground", "background", "current_point"), max_clicks))
        prepared["current_point"] = prepared["current_point"][-1:]
        if not prepared["foreground"] and not prepared["background"] and not prepared["current_point"]:
            raise InvalidParams("DeepGrow needs at least one click in foreground, background or current_point")
    return prepared

"""Click parameters of the interactive endpoints (DeepGrow, DExtr3D): lenient parsing, strict checking.

Clients send points as `[x, y, z]` 0-based voxel indices of the uploaded image; `current_point` arrives as
`[x, y, z]`, `[[x, y, z]]` or not at all, and `foreground`/`background` may be missing.
"""

from __future__ import annotations

from typing import Any

from aiaa_server.errors import InvalidParams
from aiaa_server.mmar.config import AIAAConfig, ModelType

MIN_DEXTR3D_POINTS = 6

Point = list[int]


def _as_point(value: Any, key: str) -> Point:
    if not isinstance(value, (list, tuple)) or len(value) not in (2, 3):
        raise InvalidParams(f"{key}: each point must be [x, y, z] voxel indices, got {value!r}")
    point: Point = []
    for coordinate in value:
        if isinstance(coordinate, bool) or not isinstance(coordinate, (int, float)):
            raise InvalidParams(f"{key}: point coordinates must be numbers, got {value!r}")
        point.append(int(round(coordinate)))
    return point


def parse_points(value: Any, key: str) -> list[Point]:
    """A list of points; a single flat `[x, y, z]` is accepted as one point; missing/null → []."""
    if value is None or value == "":
        return []
    if not isinstance(value, (list, tuple)):
        raise InvalidParams(f"{key} must be a list of [x, y, z] points, got {type(value).__name__}")
    if value and all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in value):
        return [_as_point(value, key)]
    return [_as_point(p, key) for p in value]


def prepare_params(config: AIAAConfig, params: dict[str, Any]) -> dict[str, Any]:
    """Normalise the click params for the model's type; refuse what the model cannot use."""
    prepared = dict(params)
    if config.type is ModelType.ANNOTATION:
        points = parse_points(params.get("points"), "points")
        if len(points) < MIN_DEXTR3D_POINTS:
            raise InvalidParams(
                f"DExtr3D needs at least {MIN_DEXTR3D_POINTS} boundary points in params.points, got {len(points)}"
            )
        prepared["points"] = points
    elif config.type in (ModelType.DEEPGROW, ModelType.PIPELINE):
        prepared["foreground"] = parse_points(params.get("foreground"), "foreground")
        prepared["background"] = parse_points(params.get("background"), "background")
        prepared["current_point"] = parse_points(params.get("current_point"), "current_point")[-1:]
        if not prepared["foreground"] and not prepared["background"] and not prepared["current_point"]:
            raise InvalidParams("DeepGrow needs at least one click in foreground, background or current_point")
    return prepared

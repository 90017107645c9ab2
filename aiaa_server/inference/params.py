"""Request `params`: lenient parsing (what real clients send) and typed options that change the result.

The inference service turns a request's params into one `RequestParams` before anything runs: the result
options and the clicks are parsed and checked there, once, and every later step reads that object.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from aiaa_server.errors import AIAAError, InvalidParams, format_validation_errors
from aiaa_server.imaging.formats import ImageFormat, parse_extension
from aiaa_server.imaging.io import RESULT_DTYPES, check_result_dtype
from aiaa_server.inference.interactive import MAX_CLICKS, Clicks, parse_clicks, with_clicks
from aiaa_server.mmar.config import ModelType

MAX_JSON_DEPTH = 64  # params nest 5 deep at most (3D polygons); the admin config reader shares this bound
MAX_NUMBER_CHARS = 100  # Python refuses int() of > 4300 digits with a ValueError; no client needs 100

# The checks run on the text with string literals blanked out (strings may hold anything), at C speed.
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?', re.DOTALL)  # an unterminated string runs to the end: linear time
_NOT_BRACKET_BYTES = bytes(c for c in range(256) if c not in b"[]{}")
_LONG_NUMBER = re.compile(rf"[-+.0-9eE]{{{MAX_NUMBER_CHARS + 1},}}")
_BIG_EXPONENT = re.compile(r"[eE][-+]?[0-9]{3}")  # the only way a short literal leaves the float range


class _OutOfBounds(Exception):
    """Well-formed JSON that `loads_bounded` refuses (too deep, a huge number, NaN/Infinity)."""


def loads_bounded(text: str | bytes, what: str = "params", error: type[AIAAError] = InvalidParams) -> Any:
    """`json.loads` for untrusted text: refuses (with `error`, naming `what`) invalid JSON, nesting deeper than
    MAX_JSON_DEPTH, number literals longer than MAX_NUMBER_CHARS or outside the float range, and the
    NaN/Infinity literals Python accepts but JSON does not. Depth and number lengths are checked on the text
    before parsing; never raises RecursionError or ValueError.

    The admin config reader uses it with `what="config_aiaa.json"` and its own error class."""
    try:
        return _loads_checked(text if isinstance(text, str) else text.decode("utf-8", errors="replace"))
    except json.JSONDecodeError as exc:
        raise error(f"{what} is not valid JSON: {exc.msg} at position {exc.pos}") from exc
    except _OutOfBounds as exc:
        raise error(f"{what}: {exc}") from exc


def _loads_checked(text: str) -> Any:
    """Raises json.JSONDecodeError for syntax errors and _OutOfBounds for the limits of `loads_bounded`."""
    outside_strings = _STRING.sub('""', text)
    if _nesting_depth(outside_strings) > MAX_JSON_DEPTH:
        raise _OutOfBounds(f"JSON nested more than {MAX_JSON_DEPTH} levels deep")
    long_number = _LONG_NUMBER.search(outside_strings)
    if long_number:
        raise _OutOfBounds(f"a number is {len(long_number.group())} characters long (at most {MAX_NUMBER_CHARS})")
    parse_float = _finite_float if _BIG_EXPONENT.search(outside_strings) else None
    try:
        return json.loads(text, parse_float=parse_float, parse_constant=_no_constant)
    except RecursionError as exc:  # not reached after the depth check; kept so no input can cause a 500
        raise _OutOfBounds(f"JSON nested more than {MAX_JSON_DEPTH} levels deep") from exc


def _nesting_depth(text: str) -> int:
    """The deepest [ / { nesting of JSON text whose strings are blanked out."""
    brackets = text.encode("utf-8", errors="replace").translate(None, _NOT_BRACKET_BYTES)
    if not brackets:
        return 0
    codes = np.frombuffer(brackets, dtype=np.uint8)
    opening = (codes == ord("[")) | (codes == ord("{"))
    return int(np.cumsum(np.where(opening, 1, -1).astype(np.int32)).max())


def _finite_float(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):
        raise _OutOfBounds(f"the number {literal} is out of range")
    return value


def _no_constant(name: str) -> float:
    raise _OutOfBounds(f"{name} is not a JSON number; send finite numbers only")


def parse_params(raw: str | bytes | None) -> dict[str, Any]:
    """`params` as clients send it: absent, `""`, `"null"`, `"{}"`, or an object whose list values may be
    JSON-encoded strings (pre-2021 clients). Always returns a dict; anything else is a 400."""
    if raw is None:
        return {}
    text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
    text = text.strip()
    if not text or text == "null":
        return {}
    return normalise_params(loads_bounded(text))


def normalise_params(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidParams(f"params must be a JSON object, got {type(value).__name__}")
    return {str(k): _decode_embedded_json(str(k), v) for k, v in value.items()}


def _decode_embedded_json(key: str, value: Any) -> Any:
    """A JSON-encoded list/object string is decoded (same bounds as params); other strings stay strings."""
    if isinstance(value, str) and value.strip().startswith(("[", "{")):
        try:
            return _loads_checked(value)
        except json.JSONDecodeError:
            return value
        except _OutOfBounds as exc:
            raise InvalidParams(f"params.{key}: {exc}", key=key) from exc
    return value


def _as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "1", "yes", "false", "0", "no"):
        return value.strip().lower() in ("true", "1", "yes")
    raise ValueError(f"expected true or false, got {value!r}")


class ResultOptions(BaseModel):
    """The result options every image-producing call takes in its params: `result_extension` / `result_dtype` /
    `result_compress` (Clara 4.x Writer, used by OHIF)."""

    model_config = ConfigDict(extra="ignore", json_schema_extra={"examples": [
        {"result_extension": ".nrrd", "result_dtype": "uint16", "result_compress": True},
    ]})

    result_extension: str | None = Field(
        None, description="format of the result image: .nii.gz, .nii or .nrrd (dot optional, any case), or .dcm: "
        "a DICOM SEG referencing the source series (images that came as DICOM series); default: the uploaded "
        "image's format", examples=[".nrrd"],
    )
    result_dtype: str | None = Field(
        None, description=f"voxel type of the result image, one of {', '.join(RESULT_DTYPES)}; default uint8",
        examples=["uint16"],
    )
    result_compress: bool | None = Field(
        None, description="gzip the result: NRRD gzip encoding (default on), .nii → .nii.gz; "
        "also true/false, 1/0, yes/no as strings", examples=[True],
    )

    @field_validator("result_extension", "result_dtype", mode="before")
    @classmethod
    def _string_or_none(cls, value: Any) -> str | None:
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {type(value).__name__}")  # noqa: TRY004 - pydantic wants ValueError
        return value

    @field_validator("result_compress", mode="before")
    @classmethod
    def _bool_or_none(cls, value: Any) -> bool | None:
        return None if value is None or value == "" else _as_bool(value)

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> ResultOptions:
        try:
            options = cls.model_validate(params)
        except ValidationError as exc:
            raise InvalidParams(format_validation_errors(exc, depth=1)) from exc
        if options.result_extension is not None:
            parse_extension(options.result_extension)
        check_result_dtype(options.result_dtype)
        return options

    @property
    def dtype(self) -> np.dtype:
        return check_result_dtype(self.result_dtype)

    def output_format(self, input_format: ImageFormat) -> ImageFormat:
        """Result format: as asked, else the input's own (NIfTI for inputs we cannot write, e.g. DICOM)."""
        if self.result_extension is not None:
            fmt = parse_extension(self.result_extension)
        else:
            fmt = input_format if input_format.is_volume_format else ImageFormat.NIFTI_GZ
        if fmt is ImageFormat.NIFTI and self.result_compress:
            return ImageFormat.NIFTI_GZ
        if fmt is ImageFormat.NIFTI_GZ and self.result_compress is False:
            return ImageFormat.NIFTI
        return fmt

    def compress(self, fmt: ImageFormat) -> bool:
        if fmt is ImageFormat.NRRD:
            return self.result_compress is not False
        return fmt is ImageFormat.NIFTI_GZ


@dataclass(frozen=True)
class RequestParams:
    """A request's params for one model, parsed once: the result options, the clicks the model needs (None
    for non-interactive models), and the params as sent (JSON-decoded), which the pipeline also sees."""

    values: dict[str, Any]
    result: ResultOptions
    clicks: Clicks | None = None

    @classmethod
    def parse(cls, values: dict[str, Any], model_type: ModelType, max_clicks: int = MAX_CLICKS) -> RequestParams:
        """Check the params for a model of `model_type`.

        Args:
            values: the request's params (as `parse_params` returns them).
            model_type: which clicks to parse (see `interactive.parse_clicks`).
            max_clicks: the most points in one request (`--max_clicks`).

        Raises:
            InvalidParams: bad result options or clicks (400).
            InvalidImage: a `result_extension` the server cannot write (400).
        """
        result = ResultOptions.from_params(values)
        return cls(values, result, parse_clicks(model_type, values, max_clicks))

    def pipeline_data(self) -> dict[str, Any]:
        """A fresh dict for the model's transforms: the params, with the clicks normalised."""
        return with_clicks(self.values, self.clicks)

"""Request `params`: lenient parsing (what real clients send) and typed options that change the result."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from aiaa_server.errors import InvalidParams
from aiaa_server.imaging.formats import ImageFormat, parse_extension
from aiaa_server.imaging.io import check_result_dtype


def parse_params(raw: str | bytes | None) -> dict[str, Any]:
    """`params` as clients send it: absent, `""`, `"null"`, `"{}"`, or an object whose list values may be
    JSON-encoded strings (pre-2021 clients). Always returns a dict; anything else is a 400."""
    if raw is None:
        return {}
    text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
    text = text.strip()
    if not text or text == "null":
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidParams(f"params is not valid JSON: {exc.msg} at position {exc.pos}") from exc
    return normalise_params(value)


def normalise_params(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidParams(f"params must be a JSON object, got {type(value).__name__}")
    return {str(k): _decode_embedded_json(v) for k, v in value.items()}


def _decode_embedded_json(value: Any) -> Any:
    if isinstance(value, str) and value.strip().startswith(("[", "{")):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
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
    """`result_extension` / `result_dtype` / `result_compress` (Clara 4.x Writer, used by OHIF)."""

    model_config = ConfigDict(extra="ignore")

    result_extension: str | None = None
    result_dtype: str | None = None
    result_compress: bool | None = None

    @field_validator("result_extension", "result_dtype", mode="before")
    @classmethod
    def _string_or_none(cls, value: Any) -> str | None:
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {type(value).__name__}")
        return value

    @field_validator("result_compress", mode="before")
    @classmethod
    def _bool_or_none(cls, value: Any) -> bool | None:
        return None if value is None or value == "" else _as_bool(value)

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> "ResultOptions":
        try:
            options = cls.model_validate(params)
        except ValidationError as exc:
            raise InvalidParams("; ".join(f"{e['loc'][0]}: {e['msg']}" for e in exc.errors())) from exc
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

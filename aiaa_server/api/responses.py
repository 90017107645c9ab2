"""Responses AIAA clients can parse: fixed-length multipart (params JSON + one image part), or the bare
image (`output=image`), or JSON (`output=json` and image-less results). Never chunked, never gzipped."""

from __future__ import annotations

import json
import re
import secrets
from typing import Any
from urllib.parse import quote

from fastapi import Response
from fastapi.responses import JSONResponse

from aiaa_server.errors import InvalidParams
from aiaa_server.services.inference import InferenceResult

OUTPUT_MODES = ("all", "image", "json", "fhir")  # fhir: classification models
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")


def content_disposition(kind: str, filename: str, name: str | None = None) -> str:
    """A Content-Disposition value safe for any file name (RFC 6266 / 5987): control characters (CR, LF) are
    dropped, quotes and backslashes escaped, and a non-ASCII name is also sent as `filename*=UTF-8''…`."""
    clean = _CONTROL_CHARS.sub("", filename)
    ascii_name = "".join(c if c.isascii() else "_" for c in clean)
    params = [kind]
    if name is not None:
        params.append(f'name="{_quoted(name)}"')
    params.append(f'filename="{_quoted(ascii_name)}"')
    if ascii_name != clean:
        params.append("filename*=UTF-8''" + quote(clean, safe=""))
    return "; ".join(params)


def _quoted(value: str) -> str:
    return _CONTROL_CHARS.sub("", value).replace("\\", "\\\\").replace('"', '\\"')


def multipart_body(params: dict[str, Any], image: bytes, filename: str, boundary: str) -> bytes:
    params_json = json.dumps(params, separators=(",", ":")).encode("utf-8")
    return b"".join(
        [
            f"--{boundary}\r\n".encode(),
            b'Content-Disposition: form-data; name="params"\r\n',
            b"Content-Type: application/json\r\n\r\n",
            params_json,
            f"\r\n--{boundary}\r\n".encode(),
            f"Content-Disposition: {content_disposition('form-data', filename, name='image')}\r\n".encode(),
            b"Content-Type: application/octet-stream\r\n\r\n",
            image,
            f"\r\n--{boundary}--\r\n".encode(),
        ]
    )


def multipart_response(params: dict[str, Any], image: bytes, filename: str) -> Response:
    boundary = secrets.token_hex(16)
    return Response(
        content=multipart_body(params, image, filename, boundary),
        media_type=f"multipart/form-data; boundary={boundary}",
    )


def check_output_mode(output: str | None) -> str:
    mode = (output or "all").strip().lower()
    if mode not in OUTPUT_MODES:
        raise InvalidParams(f"unknown output {output!r}; use one of {', '.join(OUTPUT_MODES)}")
    return mode


def inference_response(result: InferenceResult, output: str) -> Response:
    if result.image is None or output == "json":
        return JSONResponse(result.params)
    if output in ("image", "fhir"):
        return Response(
            content=result.image,
            media_type=result.media_type,
            headers={"Content-Disposition": content_disposition("attachment", result.filename or "result.nii.gz")},
        )
    return multipart_response(result.params, result.image, result.filename or "result.nii.gz")

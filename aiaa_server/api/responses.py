"""Responses AIAA clients can parse: fixed-length multipart (params JSON + one image part), or the bare
image (`output=image`), or JSON (`output=json` and image-less results). Never chunked, never gzipped."""

from __future__ import annotations

import json
import secrets
from typing import Any

from fastapi import Response
from fastapi.responses import JSONResponse

from aiaa_server.errors import InvalidParams
from aiaa_server.inference.service import InferenceResult

OUTPUT_MODES = ("all", "image", "json")


def multipart_body(params: dict[str, Any], image: bytes, filename: str, boundary: str) -> bytes:
    params_json = json.dumps(params, separators=(",", ":")).encode("utf-8")
    return b"".join(
        [
            f"--{boundary}\r\n".encode(),
            b'Content-Disposition: form-data; name="params"\r\n',
            b"Content-Type: application/json\r\n\r\n",
            params_json,
            f"\r\n--{boundary}\r\n".encode(),
            f'Content-Disposition: form-data; name="image"; filename="{filename}"\r\n'.encode(),
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
    if output == "image":
        return Response(
            content=result.image,
            media_type=result.media_type,
            headers={"Content-Disposition": f'attachment; filename="{result.filename}"'},
        )
    return multipart_response(result.params, result.image, result.filename or "result.nii.gz")

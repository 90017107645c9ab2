"""Parsing multipart responses the way the AIAA Python client does: with the standard library."""

from __future__ import annotations

import email.parser
import email.policy
import json
from dataclasses import dataclass
from typing import Any


@dataclass
class MultipartResult:
    params: Any
    image: bytes
    filename: str
    params_headers: dict[str, str]


def parse_multipart(content_type: str, body: bytes) -> MultipartResult:
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body
    )
    assert message.is_multipart(), "response is not multipart"
    params, image, filename, params_headers = None, None, None, {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        part_filename = part.get_filename()
        if name == "params":
            assert part_filename is None, "the params part must not carry a filename"
            params = json.loads(part.get_payload(decode=True).decode("utf-8"))
            params_headers = {k: v for k, v in part.items()}
        elif part_filename:
            assert image is None, "exactly one file part expected"
            image, filename = part.get_payload(decode=True), part_filename
    assert params is not None, "no params part"
    assert image is not None and filename, "no image part with a filename"
    return MultipartResult(params=params, image=image, filename=filename, params_headers=params_headers)

"""multipart/form-data on the wire, the way AIAA clients do it (protocol sections 3–4).

Requests: text fields first (`params`), then file parts; the body is streamed from disk in chunks and its
exact length is known up front, so it is always sent with Content-Length (never chunked).
Responses: parsed with the standard library's email parser, which works against any AIAA server.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import Message
from email.parser import BytesParser
from email.policy import HTTP
from pathlib import Path

CHUNK = 1 << 20


@dataclass(frozen=True)
class FilePart:
    """A file part: `path` is streamed from disk, or `data` is sent from memory."""

    name: str
    filename: str
    path: Path | None = None
    data: bytes | None = None
    content_type: str = "application/octet-stream"

    def size(self) -> int:
        if self.data is not None:
            return len(self.data)
        assert self.path is not None
        return os.path.getsize(self.path)

    def chunks(self) -> Iterator[bytes]:
        if self.data is not None:
            yield self.data
            return
        assert self.path is not None
        with open(self.path, "rb") as handle:
            while chunk := handle.read(CHUNK):
                yield chunk


@dataclass
class MultipartBody:
    """A request body whose length is known before the first byte is sent."""

    fields: list[tuple[str, str]] = field(default_factory=list)
    files: list[FilePart] = field(default_factory=list)
    boundary: str = field(default_factory=lambda: "----aiaa-client-" + secrets.token_hex(12))

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    def _field_bytes(self, name: str, value: str) -> bytes:
        return (
            f"--{self.boundary}\r\n"
            f'Content-Disposition: form-data; name="{_quote(name)}"\r\n\r\n'
        ).encode() + value.encode("utf-8") + b"\r\n"

    def _file_head(self, part: FilePart) -> bytes:
        return (
            f"--{self.boundary}\r\n"
            f'Content-Disposition: form-data; name="{_quote(part.name)}"; filename="{_quote(part.filename)}"\r\n'
            f"Content-Type: {part.content_type}\r\n\r\n"
        ).encode()

    def _tail(self) -> bytes:
        return f"--{self.boundary}--\r\n".encode()

    def __len__(self) -> int:
        total = sum(len(self._field_bytes(n, v)) for n, v in self.fields)
        total += sum(len(self._file_head(p)) + p.size() + 2 for p in self.files)
        return total + len(self._tail())

    def chunks(self) -> Iterator[bytes]:
        for name, value in self.fields:
            yield self._field_bytes(name, value)
        for part in self.files:
            yield self._file_head(part)
            yield from part.chunks()
            yield b"\r\n"
        yield self._tail()

    def to_bytes(self) -> bytes:
        return b"".join(self.chunks())


def _quote(value: str) -> str:
    # Quotes and line breaks would end the header value early; nothing else needs escaping in practice.
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\r", " ").replace("\n", " ")


@dataclass
class ResponsePart:
    name: str | None
    filename: str | None
    content_type: str
    data: bytes


def parse_multipart(content_type: str, body: bytes) -> list[ResponsePart]:
    """Split a multipart response body into its parts (raises ValueError if it is not multipart)."""
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1")
    message = BytesParser(policy=HTTP).parsebytes(head + body)
    if not message.is_multipart():
        raise ValueError(f"not a multipart body (content type {content_type!r})")
    parts: list[ResponsePart] = []
    for sub in message.get_payload():
        assert isinstance(sub, Message)
        payload = sub.get_payload(decode=True)
        parts.append(
            ResponsePart(
                name=sub.get_param("name", header="content-disposition"),  # type: ignore[arg-type]
                filename=sub.get_filename(),
                content_type=sub.get_content_type(),
                data=payload if isinstance(payload, bytes) else b"",
            )
        )
    return parts


@dataclass
class ImageAndParams:
    params: dict[str, object]
    image: bytes | None
    filename: str | None


def split_result(parts: list[ResponsePart]) -> ImageAndParams:
    """`params` JSON part plus the first file part (the protocol's result shape, section 4.1)."""
    params: dict[str, object] = {}
    image: bytes | None = None
    filename: str | None = None
    for part in parts:
        if part.filename and image is None:
            image, filename = part.data, part.filename
        elif part.name in ("params", "points") and not part.filename:
            decoded = json.loads(part.data.decode("utf-8") or "{}")
            if isinstance(decoded, dict):
                params = decoded
            elif part.name == "points":  # 2019 servers sent the extreme points as their own field
                params = {"points": decoded}
    return ImageAndParams(params=params, image=image, filename=filename)

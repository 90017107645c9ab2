"""Reading request bodies the way AIAA clients send them.

The image may come under any file part name (`datapoint`, `image`, `file`, `image0`…), `params` may be a
text field, a file part, or missing, and some clients send a JSON or urlencoded body instead of multipart.

Every body is streamed with a byte limit: a multipart body may be `max_bytes` long (`--max_request_mb`), a
JSON or urlencoded one MAX_FIELD_BYTES; a larger Content-Length is refused (413) before anything is read.
"""

from __future__ import annotations

import asyncio
import codecs
import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO
from urllib.parse import parse_qsl

from starlette.requests import ClientDisconnect, Request

from aiaa_server.errors import BadRequest, PayloadTooLarge
from aiaa_server.inference.params import normalise_params, parse_params
from aiaa_server.inference.service import ImageUpload

try:  # python-multipart >= 0.0.13 names its package python_multipart
    from python_multipart.exceptions import FormParserError
    from python_multipart.multipart import MultipartParser, parse_options_header
except ModuleNotFoundError:  # pragma: no cover - older python-multipart
    from multipart.exceptions import FormParserError
    from multipart.multipart import MultipartParser, parse_options_header

MAX_FORM_FILES = 10000  # a DICOM series arrives as one part per slice
MAX_FORM_FIELDS = 1000
MAX_FIELD_BYTES = 16 * 2**20  # a text field (params, polygons), and a whole JSON/urlencoded body
MAX_TEXT_BYTES = 2 * MAX_FIELD_BYTES  # all text fields of one multipart body together (they stay in memory)
MAX_BOUNDARY_CHARS = 200  # RFC 2046 allows 70; python-multipart fails on > 256 with an unexpected error
DEFAULT_MAX_REQUEST_BYTES = 4096 * 2**20  # the default of --max_request_mb
FLUSH_BYTES = 4 * 2**20  # file data is written in a worker thread in blocks this large


@dataclass
class ParsedBody:
    params: dict[str, object] = field(default_factory=dict)
    files: list[ImageUpload] = field(default_factory=list)
    fields: dict[str, str] = field(default_factory=dict)

    @property
    def first_file(self) -> ImageUpload | None:
        return self.files[0] if self.files else None


@asynccontextmanager
async def read_body(
    request: Request, tmp_root: Path, *, max_bytes: int = DEFAULT_MAX_REQUEST_BYTES
) -> AsyncIterator[ParsedBody]:
    """Parse the body (a multipart one at most `max_bytes` long); uploaded files live in a private temp folder
    removed when the block exits."""
    tmp_root.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="req-", dir=tmp_root))
    try:
        yield await _parse(request, folder, max_bytes)
    finally:
        await asyncio.to_thread(shutil.rmtree, folder, True)


async def _parse(request: Request, folder: Path, max_bytes: int) -> ParsedBody:
    content_type = request.headers.get("content-type", "")
    lowered = content_type.lower()
    body = ParsedBody()
    if lowered.startswith("multipart/form-data"):
        form = _StreamingForm(folder, content_type)
        try:
            await form.parse(_chunks(request, max_bytes, "the request body", "--max_request_mb"))
        finally:
            await asyncio.to_thread(form.close)
        body.files, body.fields = form.files, form.fields
        body.params = parse_params(form.raw_params)
    elif lowered.startswith("application/x-www-form-urlencoded"):
        fields = _urlencoded_fields(await _read_text_body(request, max_bytes, "a urlencoded body"))
        raw_params = fields.pop("params", None)
        body.fields = fields
        body.params = parse_params(raw_params)
    elif lowered.startswith("application/json"):
        raw = await _read_text_body(request, max_bytes, "a JSON body")
        body.params = parse_params(raw) if raw.strip() else {}
    else:
        async for chunk in _chunks(request, min(max_bytes, MAX_FIELD_BYTES), "the request body"):
            if chunk.strip():
                raise BadRequest(
                    f"unsupported content type {content_type or '(none)'!r}: send multipart/form-data with a "
                    "`params` field and the image as a file part"
                )
    body.params = normalise_params(body.params)
    return body


async def _chunks(request: Request, limit: int, what: str, option: str = "") -> AsyncIterator[bytes]:
    """The body as it arrives, refused with 413 once it (or its Content-Length) passes `limit` bytes; a client
    that disconnects mid-body gets a 400 (nobody reads it, but it is not a server error)."""
    hint = f" (server option {option})" if option else ""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"{what} is {int(declared)} bytes, larger than the limit of {_size(limit)}{hint}",
                              limit=limit)
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                raise PayloadTooLarge(f"{what} is larger than the limit of {_size(limit)}{hint}", limit=limit)
            yield chunk
    except ClientDisconnect as exc:
        raise BadRequest("the client disconnected before the request body was complete") from exc


async def _read_text_body(request: Request, max_bytes: int, what: str) -> bytes:
    return b"".join([chunk async for chunk in _chunks(request, min(max_bytes, MAX_FIELD_BYTES), what)])


def _urlencoded_fields(raw: bytes) -> dict[str, str]:
    try:
        pairs = parse_qsl(raw.decode("utf-8", errors="replace"), keep_blank_values=True,
                          max_num_fields=MAX_FORM_FIELDS, errors="replace")
    except ValueError as exc:  # more than MAX_FORM_FIELDS fields
        raise BadRequest(f"could not parse the form body: {exc}") from exc
    return dict(pairs)


def _size(limit: int) -> str:
    return f"{limit / 2**20:g} MiB" if limit >= 2**20 else f"{limit} bytes"


@dataclass
class _Part:
    name: str = ""
    filename: str | None = None
    disposition: bytes = b""
    data: bytearray = field(default_factory=bytearray)  # text fields; pending file bytes for file parts
    path: Path | None = None
    handle: BinaryIO | None = None


class _StreamingForm:
    """multipart/form-data streamed from `request.stream()` straight into files in `folder` (one write).

    python-multipart's callbacks run synchronously inside `parser.write`; they only collect bytes. Disk
    writes happen between network chunks, in a worker thread, so the event loop never waits on the disk.
    """

    def __init__(self, folder: Path, content_type: str) -> None:
        self.folder = folder
        _, options = parse_options_header(content_type)
        boundary = options.get(b"boundary")
        if not boundary:
            raise BadRequest("could not parse the multipart body: no boundary in the Content-Type header")
        if len(boundary) > MAX_BOUNDARY_CHARS:
            raise BadRequest(f"the multipart boundary is {len(boundary)} characters long; RFC 2046 allows 70 "
                             f"(this server accepts up to {MAX_BOUNDARY_CHARS})")
        self.boundary = boundary
        self.charset = _charset(options.get(b"charset"))
        self.files: list[ImageUpload] = []
        self.fields: dict[str, str] = {}
        self.raw_params: str | bytes | None = None
        self._field_count = 0
        self._text_bytes = 0
        self._part: _Part | None = None
        self._header_name = b""
        self._header_value = b""
        self._pending: list[tuple[_Part, bytearray, bool]] = []  # (part, bytes to write, close after)
        self._open: list[BinaryIO] = []

    async def parse(self, chunks: AsyncIterator[bytes]) -> None:
        parser = MultipartParser(self.boundary, {
            "on_part_begin": self._on_part_begin,
            "on_part_data": self._on_part_data,
            "on_part_end": self._on_part_end,
            "on_header_field": self._on_header_field,
            "on_header_value": self._on_header_value,
            "on_header_end": self._on_header_end,
            "on_headers_finished": self._on_headers_finished,
        })
        try:
            async for chunk in chunks:
                parser.write(chunk)
                if self._pending:
                    await asyncio.to_thread(self._flush)
            parser.finalize()
        except FormParserError as exc:
            raise BadRequest(f"could not parse the multipart body: {exc}") from exc
        if self._part is not None:
            raise BadRequest("could not parse the multipart body: it ends inside a part (truncated upload?)")

    def close(self) -> None:
        for handle in self._open:
            handle.close()
        self._open.clear()

    # -- python-multipart callbacks (synchronous, no IO) ----------------------------------------------

    def _on_part_begin(self) -> None:
        self._part = _Part()

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _on_header_end(self) -> None:
        assert self._part is not None
        if self._header_name.lower() == b"content-disposition":
            self._part.disposition = self._header_value
        self._header_name = self._header_value = b""

    def _on_headers_finished(self) -> None:
        part = self._part
        assert part is not None
        _, options = parse_options_header(part.disposition)
        if b"name" not in options:
            raise BadRequest('could not parse the multipart body: a part has no Content-Disposition "name"')
        part.name = self._decode(options[b"name"])
        if b"filename" in options:
            part.filename = self._decode(options[b"filename"])
        if part.filename is not None and not (part.name == "params" and not _looks_like_image(part.filename)):
            if len(self.files) >= MAX_FORM_FILES:
                raise BadRequest(f"too many files in the multipart body (at most {MAX_FORM_FILES})")
            part.path = self.folder / f"part{len(self.files):05d}"
            self.files.append(ImageUpload(path=part.path, filename=part.filename or part.name))
        else:
            self._field_count += 1
            if self._field_count > MAX_FORM_FIELDS:
                raise BadRequest(f"too many fields in the multipart body (at most {MAX_FORM_FIELDS})")

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        part = self._part
        assert part is not None
        part.data += memoryview(data)[start:end]
        if part.path is None:
            self._text_bytes += end - start
            if len(part.data) > MAX_FIELD_BYTES:
                raise PayloadTooLarge(f"multipart field {part.name!r} is larger than {_size(MAX_FIELD_BYTES)}")
            if self._text_bytes > MAX_TEXT_BYTES:
                raise PayloadTooLarge(f"the multipart text fields are larger than {_size(MAX_TEXT_BYTES)} together")
        elif len(part.data) >= FLUSH_BYTES:
            self._pending.append((part, part.data, False))
            part.data = bytearray()

    def _on_part_end(self) -> None:
        part = self._part
        assert part is not None
        self._part = None
        if part.path is not None:
            self._pending.append((part, part.data, True))
        elif part.name == "params":
            self.raw_params = bytes(part.data) if part.filename is not None else self._decode(part.data)
        else:
            self.fields[part.name] = self._decode(part.data)

    # -- IO (worker thread) -------------------------------------------------------------------------

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        for part, data, last in pending:
            assert part.path is not None
            if part.handle is None:
                part.handle = open(part.path, "wb")  # noqa: SIM115 - stays open across network chunks
                self._open.append(part.handle)
            part.handle.write(data)
            if last:
                part.handle.close()
                self._open.remove(part.handle)

    def _decode(self, raw: bytes | bytearray) -> str:
        try:
            return raw.decode(self.charset)
        except (UnicodeDecodeError, LookupError):
            return raw.decode("latin-1")


def _charset(value: bytes | None) -> str:
    if not value:
        return "utf-8"
    try:
        return codecs.lookup(value.decode("latin-1")).name
    except LookupError:
        return "latin-1"


def _looks_like_image(filename: str | None) -> bool:
    return bool(filename) and not filename.lower().endswith((".json", ".txt"))

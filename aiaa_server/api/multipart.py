"""The one streaming multipart/form-data parser of every upload route, in the manner of starlette's formparsers.

Each route states what it accepts in a `MultipartLimits` (body size and its 413 wording, file and field counts,
text sizes, which part names) and calls `read_multipart`. File parts go straight from the network to files in
the folder the route names, in blocks written by a worker thread; text parts stay in memory, bounded.

On any failure, the parser closes and removes every file it created; on success they belong to the caller.
"""

from __future__ import annotations

import asyncio
import codecs
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from starlette.requests import ClientDisconnect, Request

from aiaa_server.errors import AIAAError, BadRequest, PayloadTooLarge

try:  # python-multipart >= 0.0.13 names its package python_multipart
    from python_multipart.exceptions import FormParserError
    from python_multipart.multipart import MultipartParser as _Tokenizer
    from python_multipart.multipart import parse_options_header
except ModuleNotFoundError:  # pragma: no cover - older python-multipart
    from multipart.exceptions import FormParserError
    from multipart.multipart import MultipartParser as _Tokenizer
    from multipart.multipart import parse_options_header

MAX_FILES = 10000  # a DICOM series arrives as one part per slice
MAX_FIELDS = 1000
MAX_FIELD_BYTES = 16 * 2**20  # one text field (params, polygons)
MAX_TEXT_BYTES = 2 * MAX_FIELD_BYTES  # all text fields of one body together (they stay in memory)
MAX_BOUNDARY_CHARS = 200  # RFC 2046 allows 70; python-multipart fails on > 256 with an unexpected error
FLUSH_BYTES = 2**20  # file data is written in a worker thread in blocks this large

TooLarge = Callable[[int, int | None], AIAAError]
"""Builds the 413 for a body over `limit` bytes: `(limit, declared Content-Length or None when streamed)`."""


def body_too_large(what: str, option: str = "") -> TooLarge:
    """The usual 413: `{what} is N bytes, larger than the limit of L MiB (server option {option})`."""
    hint = f" (server option {option})" if option else ""

    def refuse(limit: int, declared: int | None) -> AIAAError:
        size = f" is {declared} bytes," if declared is not None else " is"
        return PayloadTooLarge(f"{what}{size} larger than the limit of {format_size(limit)}{hint}", limit=limit)

    return refuse


@dataclass(frozen=True)
class MultipartLimits:
    """What one route accepts in a multipart body.

    Args:
        max_body_bytes: the whole body; `too_large` words the 413 for a larger one.
        max_files: file parts (400 beyond).
        max_fields: text parts (400 beyond).
        max_field_bytes: one text part (413 beyond).
        max_text_bytes: all text parts together (413 beyond).
        file_fields: when given, the only part names accepted (others raise `UnexpectedField`), each at most
            once, and every one is a file `<name>.part`, whatever its filename. When None, any name is accepted:
            parts with a filename are files `partNNNNN`, the others text.
        text_fields: names kept as text even when sent with a filename, unless that names a non-text file
            (anything but empty, `.json` or `.txt`): clients send `params` both ways.
    """

    max_body_bytes: int
    too_large: TooLarge = field(default=body_too_large("the request body"))
    max_files: int = MAX_FILES
    max_fields: int = MAX_FIELDS
    max_field_bytes: int = MAX_FIELD_BYTES
    max_text_bytes: int = MAX_TEXT_BYTES
    file_fields: tuple[str, ...] | None = None
    text_fields: tuple[str, ...] = ()


class UnexpectedField(BadRequest):
    """A part name outside `MultipartLimits.file_fields`; routes may answer it in their own words."""

    def __init__(self, name: str, expected: tuple[str, ...]) -> None:
        super().__init__(f"unexpected form field {name!r}: expected {' or '.join(map(repr, expected))}", field=name)
        self.field = name


@dataclass
class FilePart:
    name: str
    filename: str | None
    path: Path


@dataclass
class TextPart:
    name: str
    filename: str | None
    raw: bytes
    charset: str = "utf-8"

    @property
    def text(self) -> str:
        """The value decoded with the body's charset (latin-1 when it does not decode)."""
        return decode_text(self.raw, self.charset)


@dataclass
class MultipartForm:
    files: list[FilePart] = field(default_factory=list)
    texts: list[TextPart] = field(default_factory=list)


async def read_multipart(request: Request, folder: Path, limits: MultipartLimits) -> MultipartForm:
    """Stream `request`'s multipart body into `folder` (files) and memory (text), within `limits`."""
    parser = MultipartFormParser(request.headers.get("content-type", ""), folder, limits)
    return await parser.parse(limited_body(request, limits.max_body_bytes, limits.too_large))


def refuse_declared_overflow(request: Request, max_bytes: int, too_large: TooLarge) -> None:
    """413 when the Content-Length alone is over `max_bytes` (before anything is read)."""
    value = request.headers.get("content-length")
    if value is None:
        return
    try:
        declared = int(value)
    except ValueError:
        raise BadRequest(f"invalid Content-Length {value!r}") from None
    if declared > max_bytes:
        raise too_large(max_bytes, declared)


async def limited_body(request: Request, max_bytes: int, too_large: TooLarge) -> AsyncIterator[bytes]:
    """The body as it arrives, refused once it (or its Content-Length) passes `max_bytes`; a client that
    disconnects mid-body gets a 400 (nobody reads it, but it is not a server error)."""
    refuse_declared_overflow(request, max_bytes, too_large)
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > max_bytes:
                raise too_large(max_bytes, None)
            yield chunk
    except ClientDisconnect as exc:
        raise BadRequest("the client disconnected before the request body was complete") from exc


def format_size(limit: int) -> str:
    return f"{limit / 2**20:g} MiB" if limit >= 2**20 else f"{limit} bytes"


def decode_text(raw: bytes | bytearray, charset: str) -> str:
    try:
        return raw.decode(charset)
    except (UnicodeDecodeError, LookupError):
        return raw.decode("latin-1")


@dataclass
class _OpenPart:
    name: str | None = None
    filename: str | None = None
    disposition: bytes = b""
    data: bytearray = field(default_factory=bytearray)  # text parts; pending bytes for file parts
    path: Path | None = None
    handle: BinaryIO | None = None


class MultipartFormParser:
    """multipart/form-data from a stream of chunks into a `MultipartForm`, within `limits`.

    python-multipart's callbacks run synchronously inside `write`; they only collect bytes. Disk writes
    happen between network chunks, in a worker thread, so the event loop never waits on the disk.
    """

    def __init__(self, content_type: str, folder: Path, limits: MultipartLimits) -> None:
        _, options = parse_options_header(content_type)
        boundary = options.get(b"boundary")
        if not boundary:
            raise BadRequest("could not parse the multipart body: no boundary in the Content-Type header")
        if len(boundary) > MAX_BOUNDARY_CHARS:
            raise BadRequest(f"the multipart boundary is {len(boundary)} characters long; RFC 2046 allows 70 "
                             f"(this server accepts up to {MAX_BOUNDARY_CHARS})")
        self.boundary = boundary
        self.charset = _charset(options.get(b"charset"))
        self.folder = folder
        self.limits = limits
        self.form = MultipartForm()
        self._text_bytes = 0
        self._complete = False
        self._part: _OpenPart | None = None
        self._header_name = b""
        self._header_value = b""
        self._pending: list[tuple[_OpenPart, bytearray, bool]] = []  # (part, bytes to write, close after)
        self._open: list[BinaryIO] = []
        self._flushing: asyncio.Future[None] | None = None

    async def parse(self, chunks: AsyncIterator[bytes]) -> MultipartForm:
        """Consume `chunks`; on any error (or cancellation) the files written so far are removed."""
        try:
            await self._consume(chunks)
        except BaseException:
            if self._flushing is not None:  # cancelled mid-write: let the thread finish before deleting
                await asyncio.wait([self._flushing])
            self.discard()
            raise
        return self.form

    def discard(self) -> None:
        """Close and delete every file this parser created."""
        for handle in self._open:
            handle.close()
        self._open.clear()
        for part in self.form.files:
            part.path.unlink(missing_ok=True)

    async def _consume(self, chunks: AsyncIterator[bytes]) -> None:
        tokenizer = _Tokenizer(self.boundary, {
            "on_part_begin": self._on_part_begin,
            "on_part_data": self._on_part_data,
            "on_part_end": self._on_part_end,
            "on_header_field": self._on_header_field,
            "on_header_value": self._on_header_value,
            "on_header_end": self._on_header_end,
            "on_headers_finished": self._on_headers_finished,
            "on_end": self._on_end,
        })
        received = False
        try:
            async for chunk in chunks:
                received = received or bool(chunk)
                tokenizer.write(chunk)
                if self._pending:
                    self._flushing = asyncio.ensure_future(asyncio.to_thread(self._flush))
                    await asyncio.shield(self._flushing)
                    self._flushing = None
            tokenizer.finalize()
        except FormParserError as exc:
            raise BadRequest(f"could not parse the multipart body: {exc}") from exc
        if received and not self._complete:
            raise BadRequest("could not parse the multipart body: it ended before its closing boundary "
                             "(truncated upload?)")

    # -- python-multipart callbacks (synchronous, no IO) ----------------------------------------------

    def _on_part_begin(self) -> None:
        self._part = _OpenPart()

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
        if b"name" in options:
            part.name = decode_text(options[b"name"], self.charset)
        if b"filename" in options:
            part.filename = decode_text(options[b"filename"], self.charset)
        if self.limits.file_fields is not None:
            self._accept_named_file(part, self.limits.file_fields)
        elif part.name is None:
            raise BadRequest('could not parse the multipart body: a part has no Content-Disposition "name"')
        elif self._is_file(part):
            self._accept_file(part, f"part{len(self.form.files):05d}")
        else:
            self._accept_text(part)

    def _is_file(self, part: _OpenPart) -> bool:
        if part.filename is None:
            return False
        return part.name not in self.limits.text_fields or _names_a_file(part.filename)

    def _accept_named_file(self, part: _OpenPart, names: tuple[str, ...]) -> None:
        if part.name not in names:
            raise UnexpectedField(part.name or "", names)
        if any(file.name == part.name for file in self.form.files):
            raise BadRequest(f"form field {part.name!r} sent twice", field=part.name)
        self._accept_file(part, f"{part.name}.part")

    def _accept_file(self, part: _OpenPart, spool_name: str) -> None:
        if len(self.form.files) >= self.limits.max_files:
            raise BadRequest(f"too many files in the multipart body (at most {self.limits.max_files})")
        part.path = self.folder / spool_name
        self.form.files.append(FilePart(name=part.name or "", filename=part.filename, path=part.path))

    def _accept_text(self, part: _OpenPart) -> None:
        if len(self.form.texts) >= self.limits.max_fields:
            raise BadRequest(f"too many fields in the multipart body (at most {self.limits.max_fields})")

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        part = self._part
        assert part is not None
        part.data += memoryview(data)[start:end]
        if part.path is None:
            self._count_text(part, end - start)
        elif len(part.data) >= FLUSH_BYTES:
            self._pending.append((part, part.data, False))
            part.data = bytearray()

    def _count_text(self, part: _OpenPart, added: int) -> None:
        limits = self.limits
        self._text_bytes += added
        if len(part.data) > limits.max_field_bytes:
            raise PayloadTooLarge(f"multipart field {part.name!r} is larger than {format_size(limits.max_field_bytes)}")
        if self._text_bytes > limits.max_text_bytes:
            raise PayloadTooLarge(
                f"the multipart text fields are larger than {format_size(limits.max_text_bytes)} together")

    def _on_part_end(self) -> None:
        part = self._part
        assert part is not None
        self._part = None
        if part.path is not None:
            self._pending.append((part, part.data, True))
        else:
            self.form.texts.append(TextPart(part.name or "", part.filename, bytes(part.data), self.charset))

    def _on_end(self) -> None:
        self._complete = True

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


def _charset(value: bytes | None) -> str:
    if not value:
        return "utf-8"
    try:
        return codecs.lookup(value.decode("latin-1")).name
    except LookupError:
        return "latin-1"


def _names_a_file(filename: str) -> bool:
    return bool(filename) and not filename.lower().endswith((".json", ".txt"))

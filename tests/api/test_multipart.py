"""The streaming multipart parser on its own: parts, limits, malformed bodies, and that a failure leaves no file."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import pytest
from starlette.requests import Request
from starlette.types import Message

from aiaa_server.api.multipart import (
    FLUSH_BYTES,
    MultipartForm,
    MultipartFormParser,
    MultipartLimits,
    UnexpectedField,
    body_too_large,
    read_multipart,
)
from aiaa_server.errors import AIAAError, BadRequest, PayloadTooLarge

CONTENT_TYPE = "multipart/form-data; boundary=B"
OPEN = MultipartLimits(max_body_bytes=2**30, text_fields=("params",))
NAMED = MultipartLimits(max_body_bytes=2**30, file_fields=("config", "data"))

Part = tuple[str | None, str | None, bytes]  # (name, filename, content)


def part(name: str | None, content: bytes, filename: str | None = None) -> bytes:
    disposition = "form-data" + (f'; name="{name}"' if name is not None else "")
    disposition += f'; filename="{filename}"' if filename is not None else ""
    return f"--B\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + content + b"\r\n"


def body(*parts: bytes) -> bytes:
    return b"".join(parts) + b"--B--\r\n"


async def stream(chunks: Iterable[bytes], error: BaseException | None = None) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk
    if error is not None:
        raise error


def parse(data: bytes | list[bytes], folder: Path, limits: MultipartLimits = OPEN,
          content_type: str = CONTENT_TYPE, error: BaseException | None = None) -> MultipartForm:
    chunks = [data] if isinstance(data, bytes) else data
    parser = MultipartFormParser(content_type, folder, limits)
    return asyncio.run(parser.parse(stream(chunks, error)))


def request(chunks: list[bytes], length: int | None = None, disconnect: bool = False) -> Request:
    headers = [(b"content-type", CONTENT_TYPE.encode())]
    if length is not None:
        headers.append((b"content-length", str(length).encode()))
    messages: list[Message] = [{"type": "http.request", "body": c, "more_body": True} for c in chunks]
    messages.append({"type": "http.disconnect"} if disconnect else {"type": "http.request", "body": b""})

    async def receive() -> Message:
        return messages.pop(0)

    return Request({"type": "http", "method": "POST", "path": "/", "headers": headers}, receive)


def split(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


# ----------------------------------------------------------------------------------------- accepted


def test_text_and_file_parts(tmp_path: Path) -> None:
    image = bytes(range(256)) * 9000  # > FLUSH_BYTES: written in several blocks
    assert len(image) > FLUSH_BYTES
    data = body(part("params", b'{"a": 1}'), part("image", image, "ct.nii.gz"), part("label", "é".encode()))
    form = parse(split(data, 7000), tmp_path)
    assert [(t.name, t.filename, t.text) for t in form.texts] == [("params", None, '{"a": 1}'), ("label", None, "é")]
    assert [(f.name, f.filename, f.path.name) for f in form.files] == [("image", "ct.nii.gz", "part00000")]
    assert form.files[0].path.read_bytes() == image


def test_params_file_part_is_text_unless_it_names_an_image(tmp_path: Path) -> None:
    form = parse(body(part("params", b"{}", "params.json"), part("params", b"\x1f\x8b", "scan.nii.gz"),
                      part("other", b"{}", "notes.json")), tmp_path)
    assert [(t.name, t.filename, t.raw) for t in form.texts] == [("params", "params.json", b"{}")]
    assert [(f.name, f.filename) for f in form.files] == [("params", "scan.nii.gz"), ("other", "notes.json")]


def test_empty_file_part_is_an_empty_file(tmp_path: Path) -> None:
    form = parse(body(part("image", b"", "empty.nii")), tmp_path)
    assert form.files[0].path.read_bytes() == b""


def test_empty_body_is_an_empty_form(tmp_path: Path) -> None:
    form = parse(b"", tmp_path)
    assert form.files == [] and form.texts == []


def test_charset_of_the_content_type_decodes_text(tmp_path: Path) -> None:
    form = parse(body(part("label", "é".encode("latin-1"))), tmp_path,
                 content_type=CONTENT_TYPE + "; charset=latin-1")
    assert form.texts[0].text == "é"


def test_named_file_fields_are_spooled_by_name_whatever_their_filename(tmp_path: Path) -> None:
    form = parse(body(part("config", b"{}"), part("data", b"PK", "model.zip")), tmp_path, NAMED)
    assert {f.name: f.path.name for f in form.files} == {"config": "config.part", "data": "data.part"}
    assert (tmp_path / "config.part").read_bytes() == b"{}" and form.texts == []


# ----------------------------------------------------------------------------------------- refused


@pytest.mark.parametrize(("name", "expected"), [("other", "other"), (None, "")])
def test_unexpected_named_field(tmp_path: Path, name: str | None, expected: str) -> None:
    with pytest.raises(UnexpectedField) as refused:
        parse(body(part("config", b"{}"), part(name, b"x", "x.bin")), tmp_path, NAMED)
    assert refused.value.field == expected and refused.value.status == 400
    assert list(tmp_path.iterdir()) == []


def test_named_field_sent_twice(tmp_path: Path) -> None:
    with pytest.raises(BadRequest, match="'data' sent twice"):
        parse(body(part("data", b"a", "a.zip"), part("data", b"b", "b.zip")), tmp_path, NAMED)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("content_type", "words"), [
    ("multipart/form-data", "no boundary"),
    ("multipart/form-data; boundary=" + "b" * 201, "201 characters"),
])
def test_bad_boundary(tmp_path: Path, content_type: str, words: str) -> None:
    with pytest.raises(BadRequest, match=words):
        MultipartFormParser(content_type, tmp_path, OPEN)


@pytest.mark.parametrize(("data", "words"), [
    (b"\x00\x01garbage", "could not parse the multipart body"),
    (part("image", b"x" * 100, "a.nii"), "ended before its closing boundary"),
    (body(part("image", b"x", "a.nii"))[:-9], "ended before its closing boundary"),
    (b'--B\r\nContent-Disposition: form-data; filename="a.nii"\r\n\r\nx\r\n--B--\r\n', 'no Content-Disposition "name"'),
], ids=["garbage", "truncated-in-a-part", "truncated-in-the-boundary", "nameless-part"])
def test_malformed_bodies(tmp_path: Path, data: bytes, words: str) -> None:
    with pytest.raises(BadRequest, match=words):
        parse(data, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_truncated_large_file_leaves_nothing(tmp_path: Path) -> None:
    data = part("first", b"1" * 10, "one.nii") + part("image", b"x" * (3 * FLUSH_BYTES), "two.nii")
    with pytest.raises(BadRequest, match="ended before"):
        parse(split(data, 2**16), tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("limits", "parts", "error", "words"), [
    (MultipartLimits(2**30, max_files=2), [part(f"f{i}", b"x", f"{i}.nii") for i in range(3)], BadRequest,
     "too many files in the multipart body (at most 2)"),
    (MultipartLimits(2**30, max_fields=2), [part(f"t{i}", b"x") for i in range(3)], BadRequest,
     "too many fields in the multipart body (at most 2)"),
    (MultipartLimits(2**30, max_field_bytes=10), [part("params", b"x" * 11)], PayloadTooLarge,
     "multipart field 'params' is larger than 10 bytes"),
    (MultipartLimits(2**30, max_text_bytes=10), [part("a", b"x" * 6), part("b", b"x" * 6)], PayloadTooLarge,
     "text fields are larger than 10 bytes together"),
], ids=["files", "fields", "field-bytes", "text-bytes"])
def test_count_and_size_limits(tmp_path: Path, limits: MultipartLimits, parts: list[bytes],
                               error: type[AIAAError], words: str) -> None:
    with pytest.raises(error, match=re.escape(words)):
        parse(body(*parts), tmp_path, limits)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("error", [AIAAError("the request body stalled"), asyncio.CancelledError()],
                         ids=["body-timeout", "cancelled"])
def test_a_failing_stream_propagates_and_leaves_nothing(tmp_path: Path, error: BaseException) -> None:
    data = part("done", b"1", "one.nii") + part("image", b"x" * (2 * FLUSH_BYTES), "two.nii")
    with pytest.raises(type(error)):
        parse(split(data, 2**16), tmp_path, error=error)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------- the request body


def test_read_multipart_from_a_request(tmp_path: Path) -> None:
    data = body(part("params", b"{}"), part("image", b"voxels", "a.nii"))
    form = asyncio.run(read_multipart(request(split(data, 10), len(data)), tmp_path, OPEN))
    assert form.texts[0].text == "{}" and form.files[0].path.read_bytes() == b"voxels"


def test_declared_length_over_the_limit_is_refused_before_reading(tmp_path: Path) -> None:
    limits = MultipartLimits(max_body_bytes=2**20, too_large=body_too_large("the request body", "--max_request_mb"))
    with pytest.raises(PayloadTooLarge) as refused:
        asyncio.run(read_multipart(request([], length=2**20 + 1), tmp_path, limits))
    assert refused.value.message == ("the request body is 1048577 bytes, larger than the limit of 1 MiB "
                                     "(server option --max_request_mb)")
    assert refused.value.details == {"limit": 2**20}


def test_streamed_body_over_the_limit_uses_the_routes_wording(tmp_path: Path) -> None:
    def too_large(limit: int, declared: int | None) -> AIAAError:
        return PayloadTooLarge(f"upload larger than {limit} (declared {declared})")

    limits = MultipartLimits(max_body_bytes=FLUSH_BYTES + 2**16, too_large=too_large)
    data = part("image", b"x" * (2 * FLUSH_BYTES), "a.nii")
    with pytest.raises(PayloadTooLarge, match=re.escape(f"upload larger than {limits.max_body_bytes} (declared None)")):
        asyncio.run(read_multipart(request(split(data, 2**16)), tmp_path, limits))
    assert list(tmp_path.iterdir()) == []


def test_client_disconnect_is_a_bad_request_and_leaves_nothing(tmp_path: Path) -> None:
    data = part("image", b"x" * (2 * FLUSH_BYTES), "a.nii")
    with pytest.raises(BadRequest, match="client disconnected before the request body was complete"):
        asyncio.run(read_multipart(request(split(data, 2**16), disconnect=True), tmp_path, OPEN))
    assert list(tmp_path.iterdir()) == []

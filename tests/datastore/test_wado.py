"""The streamed multipart/related parser of WADO-RS answers, and DICOMweb URL parsing (no server needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from aiaa_server.datastore.dicomweb_remote import DicomWebRemote, check_uid, parse_dicomweb_url
from aiaa_server.datastore.wado import MAX_PART_HEADER_BYTES, MultipartFiles, multipart_boundary
from aiaa_server.errors import BadRequest, PayloadTooLarge, UpstreamError

BOUNDARY = b"b0und-4ry"


def body(parts: list[bytes], *, preamble: bytes = b"", media: str = "application/dicom") -> bytes:
    out = preamble
    for n, part in enumerate(parts):
        out += (b"\r\n" if n or preamble else b"") + b"--" + BOUNDARY + b"\r\n"
        out += f"Content-Type: {media}\r\nContent-Length: {len(part)}\r\n\r\n".encode() + part
    return out + b"\r\n--" + BOUNDARY + b"--\r\n"


def parse(data: bytes, folder: Path, chunk: int, **limits: int) -> list[bytes]:
    folder.mkdir(exist_ok=True)
    parts = MultipartFiles(folder, BOUNDARY, limits.get("max_parts", 100), limits.get("max_bytes", 1 << 20))
    try:
        for at in range(0, len(data), chunk):
            parts.feed(data[at:at + chunk])
        return [path.read_bytes() for path in parts.finish()]
    finally:
        parts.close()


# Part contents that look like the delimiter's beginnings, a CRLF at the end, and an empty part.
PARTS = [b"DICM" + bytes(range(256)) * 3, b"\r\n--b0und-4r", b"", b"x\r\n", b"--" + BOUNDARY + b"x"]


@pytest.mark.parametrize("chunk", [1, 2, 7, 64, 1 << 20])
def test_parts_come_back_byte_for_byte_whatever_the_chunking(tmp_path: Path, chunk: int) -> None:
    assert parse(body(PARTS), tmp_path / "out", chunk) == PARTS


def test_a_preamble_and_an_epilogue_are_ignored(tmp_path: Path) -> None:
    data = body(PARTS[:2], preamble=b"ignore me") + b"epilogue"
    assert parse(data, tmp_path / "out", 5) == PARTS[:2]


def test_a_cut_short_answer_is_an_upstream_error(tmp_path: Path) -> None:
    data = body(PARTS)
    with pytest.raises(UpstreamError, match="cut short"):
        parse(data[: len(data) // 2], tmp_path / "out", 16)


def test_the_part_count_and_bytes_are_bounded_while_reading(tmp_path: Path) -> None:
    with pytest.raises(PayloadTooLarge, match="more than 2 instances"):
        parse(body(PARTS), tmp_path / "a", 3, max_parts=2)
    assert len(list((tmp_path / "a").iterdir())) == 2
    with pytest.raises(PayloadTooLarge, match="limit of 100 bytes"):
        parse(body(PARTS), tmp_path / "b", 3, max_bytes=100)


def test_a_part_that_is_not_dicom_or_has_endless_headers_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UpstreamError, match="'text/html'"):
        parse(body(PARTS, media="text/html"), tmp_path / "a", 9)
    endless = b"--" + BOUNDARY + b"\r\nX-Padding: " + b"a" * (MAX_PART_HEADER_BYTES + 1)
    with pytest.raises(UpstreamError, match="headers are over"):
        parse(endless, tmp_path / "b", 4096)


@pytest.mark.parametrize(("content_type", "boundary"), [
    ('multipart/related; type="application/dicom"; boundary=abc', b"abc"),
    ('Multipart/Related; boundary="x-y"; type=application/dicom', b"x-y"),
])
def test_the_boundary_is_read_from_the_content_type(content_type: str, boundary: bytes) -> None:
    assert multipart_boundary(content_type) == boundary


@pytest.mark.parametrize("content_type", ["application/dicom", "multipart/related; type=application/dicom", ""])
def test_an_answer_that_is_not_multipart_is_an_upstream_error(content_type: str) -> None:
    with pytest.raises(UpstreamError):
        multipart_boundary(content_type)


# ---- URLs and UIDs ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("url", "base", "user", "password"), [
    ("dicomweb+http://pacs:8042/dicom-web/", "http://pacs:8042/dicom-web", None, None),
    ("dicomweb+https://u:p%40ss%3Aw@pacs.example/dw", "https://pacs.example/dw", "u", "p@ss:w"),
    ("http://127.0.0.1:8042/dicom-web", "http://127.0.0.1:8042/dicom-web", None, None),
    ("DICOMWEB+HTTP://[::1]:8042/x", "http://[::1]:8042/x", None, None),
    ("dicomweb+http://u@pacs/dicom-web", "http://pacs/dicom-web", "u", None),
])
def test_dicomweb_urls_are_split_from_their_credentials(url: str, base: str, user: str | None,
                                                        password: str | None) -> None:
    parsed = parse_dicomweb_url(url)
    assert (parsed.base_url, parsed.username, parsed.password) == (base, user, password)
    assert "p@ss" not in repr(parsed)


@pytest.mark.parametrize("url", ["ftp://pacs/dicom-web", "dicomweb+http:///nohost", "dicomweb+http://pacs/dw?x=1",
                                 "dicomweb+http://pacs:99999/dw", "/just/a/path"])
def test_bad_dicomweb_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError):
        parse_dicomweb_url(url)


def test_credentials_are_either_a_token_or_basic_auth() -> None:
    with pytest.raises(ValueError, match="not both"):
        DicomWebRemote("dicomweb+http://u:p@pacs/dw", token="t")
    with pytest.raises(ValueError, match="positive"):
        DicomWebRemote("dicomweb+http://pacs/dw", read_timeout_s=0)


@pytest.mark.parametrize("uid", ["1.2.840.10008.1", "0"])
def test_uids_are_digits_and_dots(uid: str) -> None:
    assert check_uid(uid) == uid


@pytest.mark.parametrize("uid", ["", "1..2", "../1", "1.2/3", "1." + "2" * 70, None, "1.2 "])
def test_anything_else_is_not_a_uid(uid: object) -> None:
    with pytest.raises(BadRequest):
        check_uid(uid)

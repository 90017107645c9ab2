"""A streamed `multipart/related` body (a WADO-RS series retrieval) written part by part to numbered files.

The parser never holds more than one network chunk plus a boundary in memory: each part's bytes go straight to
its file as they arrive. It counts parts and bytes while reading, so a series over `max_parts` instances or
`max_bytes` bytes is refused (`PayloadTooLarge`, the limit named) as soon as it crosses the bound, not after
the whole body has landed on disk.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

from aiaa_server.errors import PayloadTooLarge, UpstreamError

MAX_PART_HEADER_BYTES = 16 << 10
DICOM_MEDIA_TYPE = "application/dicom"


def multipart_boundary(content_type: str) -> bytes:
    """The boundary of a `multipart/related` Content-Type header.

    Raises:
        UpstreamError: (502) another media type, or no boundary parameter.
    """
    media, *params = (part.strip() for part in content_type.split(";"))
    if media.lower() != "multipart/related":
        raise UpstreamError(f"expected a multipart/related answer, got {media or 'no Content-Type'!r}")
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "boundary" and value.strip().strip('"'):
            return value.strip().strip('"').encode("latin-1")
    raise UpstreamError("the multipart/related answer has no boundary")


class MultipartFiles:
    """Writes the parts of a multipart body to `<folder>/000000.dcm`, `000001.dcm`, ... as it is fed.

    Args:
        folder: where the part files go (it must exist).
        boundary: the body's boundary (`multipart_boundary`).
        max_parts: most parts (instances) accepted.
        max_bytes: most body bytes accepted (headers and delimiters included).
        suffix: the part files' extension.
    """

    def __init__(self, folder: Path, boundary: bytes, max_parts: int, max_bytes: int, suffix: str = ".dcm") -> None:
        self.folder = Path(folder)
        self.delimiter = b"\r\n--" + boundary
        self.max_parts = max_parts
        self.max_bytes = max_bytes
        self.suffix = suffix
        self.files: list[Path] = []
        self.received = 0
        self._buffer = bytearray(b"\r\n")  # the first delimiter has no line break before it: give it one
        self._state = "preamble"  # preamble -> (after -> headers -> body)* -> after -> done
        self._out: BinaryIO | None = None

    def feed(self, chunk: bytes) -> None:
        """Take the next bytes of the body.

        Raises:
            PayloadTooLarge: (413) the body is over `max_bytes`, or holds more than `max_parts` parts.
            UpstreamError: (502) a malformed part (headers too long, not `application/dicom`).
        """
        self.received += len(chunk)
        if self.received > self.max_bytes:
            raise PayloadTooLarge(f"the series is over the limit of {self.max_bytes} bytes", limit=self.max_bytes)
        self._buffer += chunk
        while self._step():
            pass

    def finish(self) -> list[Path]:
        """The part files, in the order received, once the body has ended.

        Raises:
            UpstreamError: (502) the body ended before its closing delimiter.
        """
        if self._state == "after" and not self._buffer:
            self._state = "done"  # a closing delimiter without its trailing `--`: tolerated
        if self._state != "done":
            raise UpstreamError(f"the multipart answer was cut short ({self.received} bytes, {len(self.files)} parts)")
        return list(self.files)

    def close(self) -> None:
        """Close the part being written, if any (after an error)."""
        if self._out is not None:
            self._out.close()
            self._out = None

    def _step(self) -> bool:
        if self._state in ("preamble", "body"):
            return self._content()
        if self._state == "after":
            return self._after_delimiter()
        if self._state == "headers":
            return self._headers()
        self._buffer.clear()  # done: the epilogue is ignored
        return False

    def _content(self) -> bool:
        at = self._buffer.find(self.delimiter)
        if at < 0:
            self._emit(max(len(self._buffer) - len(self.delimiter) + 1, 0))  # keep what may start a delimiter
            return False
        self._emit(at)
        del self._buffer[: len(self.delimiter)]
        self.close()
        self._state = "after"
        return True

    def _emit(self, size: int) -> None:
        if size <= 0:
            return
        if self._out is not None:
            self._out.write(self._buffer[:size])
        del self._buffer[:size]

    def _after_delimiter(self) -> bool:
        if self._buffer.startswith(b"--"):
            self._state = "done"
            return True
        end = self._buffer.find(b"\r\n")
        if end < 0:
            self._check_header_size()
            return False
        del self._buffer[: end + 2]  # transport padding, then the line break
        self._state = "headers"
        return True

    def _headers(self) -> bool:
        if self._buffer.startswith(b"\r\n"):
            block, skip = b"", 2
        else:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                self._check_header_size()
                return False
            block, skip = bytes(self._buffer[:end]), end + 4
        del self._buffer[:skip]
        self._check_media_type(block)
        if len(self.files) >= self.max_parts:
            raise PayloadTooLarge(f"the series has more than {self.max_parts} instances", limit=self.max_parts)
        path = self.folder / f"{len(self.files):06d}{self.suffix}"
        self._out = path.open("wb")
        self.files.append(path)
        self._state = "body"
        return True

    def _check_header_size(self) -> None:
        if len(self._buffer) > MAX_PART_HEADER_BYTES:
            raise UpstreamError(f"a part's headers are over {MAX_PART_HEADER_BYTES} bytes")

    @staticmethod
    def _check_media_type(block: bytes) -> None:
        for line in block.decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            media = value.split(";")[0].strip().lower()
            if name.strip().lower() == "content-type" and media != DICOM_MEDIA_TYPE:
                raise UpstreamError(f"a part is {media!r}, not {DICOM_MEDIA_TYPE}")

"""NRRD uploads read with every bound checked from the header before any data is touched.

`nrrd.read` follows `data file:` to any local path, skips lines without a bound and decompresses the whole
stream into memory, so it is not used on uploads: the header lines are read here (bounded) and parsed by
pynrrd, then the data is streamed from the same file straight into an array of the declared size, never
decompressing more than that array (plus one byte, to refuse data longer than declared).
"""

from __future__ import annotations

import bz2
import gzip
import math
import os
import re
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np

from aiaa_server.errors import InvalidImage
from aiaa_server.imaging.limits import read_exactly

try:  # the same fast gzip as NIfTI uploads; the stdlib is the fallback
    from isal import igzip as _igzip
except ImportError:  # pragma: no cover
    _igzip = None

MAX_HEADER_BYTES = 2**20
MAX_LINE_SKIP = 10000
MAX_COMPRESSED_BYTE_SKIP = 2**20
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

_TYPES = {
    "i1": ("signed char", "int8", "int8_t"),
    "u1": ("uchar", "unsigned char", "uint8", "uint8_t"),
    "i2": ("short", "short int", "signed short", "signed short int", "int16", "int16_t"),
    "u2": ("ushort", "unsigned short", "unsigned short int", "uint16", "uint16_t"),
    "i4": ("int", "signed int", "int32", "int32_t"),
    "u4": ("uint", "unsigned int", "uint32", "uint32_t"),
    "i8": ("longlong", "long long", "long long int", "signed long long", "signed long long int", "int64", "int64_t"),
    "u8": ("ulonglong", "unsigned long long", "unsigned long long int", "uint64", "uint64_t"),
    "f4": ("float",),
    "f8": ("double",),
}
_DTYPES = {name: code for code, names in _TYPES.items() for name in names}
_ENCODINGS = {"raw": "raw", "gzip": "gzip", "gz": "gzip", "bzip2": "bzip2", "bz2": "bzip2",
              "ascii": "ascii", "text": "ascii", "txt": "ascii"}
_DETACHED = re.compile(rb"^\s*data\s*file\s*:", re.IGNORECASE)


@dataclass(frozen=True)
class NrrdHeader:
    """A validated attached NRRD header.

    Attributes:
        fields: the header fields as pynrrd parses them (kept as the `Volume` header).
        shape: `sizes`, fastest axis first ([i, j, k] for a volume).
        dtype: voxel type with the file's byte order.
        encoding: raw, gzip, bzip2 or ascii.
        line_skip: lines to skip before the data.
        byte_skip: bytes to skip after them (of the decompressed data when compressed); -1: raw data ends the file.
    """

    fields: dict[str, Any]
    shape: tuple[int, ...]
    dtype: np.dtype
    encoding: str
    line_skip: int
    byte_skip: int


def _header_lines(handle: BinaryIO) -> list[str]:
    """The lines up to the blank one that ends the header; `handle` is left at the first byte after it."""
    lines: list[str] = []
    size = 0
    while True:
        line = handle.readline(MAX_HEADER_BYTES + 1 - size)
        size += len(line)
        if size > MAX_HEADER_BYTES:
            raise InvalidImage(f"NRRD header is longer than {MAX_HEADER_BYTES} bytes")
        if not line.endswith(b"\n"):
            raise InvalidImage("NRRD header does not end with a blank line: the data must follow it in the file")
        if _DETACHED.match(line):  # before pynrrd sees it: its LIST form runs to the end of the file
            raise InvalidImage("detached NRRD headers (a 'data file' field) are not accepted: "
                               "send one .nrrd file with the data attached")
        lines.append(line.decode("ascii", "replace"))
        if len(lines) > 1 and not line.strip():
            return lines


def _dtype(fields: dict[str, Any], encoding: str) -> np.dtype:
    code = _DTYPES.get(str(fields["type"]))
    if code is None:
        raise InvalidImage(f"NRRD type {fields['type']!r} is not supported")
    dtype = np.dtype(code)
    if dtype.itemsize == 1 or encoding == "ascii":
        return dtype
    endian = {"little": "<", "big": ">"}.get(str(fields.get("endian")))
    if endian is None:
        raise InvalidImage(f"NRRD 'endian' must be little or big for type {fields['type']!r}")
    return dtype.newbyteorder(endian)


def _skips(fields: dict[str, Any], encoding: str) -> tuple[int, int]:
    line_skip = int(fields.get("line skip", fields.get("lineskip", 0)))
    byte_skip = int(fields.get("byte skip", fields.get("byteskip", 0)))
    if not 0 <= line_skip <= MAX_LINE_SKIP:
        raise InvalidImage(f"NRRD 'line skip: {line_skip}' is out of range: 0 to {MAX_LINE_SKIP} lines")
    lowest = -1 if encoding == "raw" else 0  # -1 ("the data ends the file") only makes sense uncompressed
    if byte_skip < lowest or encoding in ("gzip", "bzip2") and byte_skip > MAX_COMPRESSED_BYTE_SKIP:
        raise InvalidImage(f"NRRD 'byte skip: {byte_skip}' is out of range for {encoding} data")
    return line_skip, byte_skip


def read_nrrd_header(handle: BinaryIO) -> NrrdHeader:
    """Read and validate the header of an attached NRRD, leaving `handle` where the data starts.

    Args:
        handle: the file, opened in binary mode at its first byte.

    Raises:
        InvalidImage: a detached header (`data file`), a missing or inconsistent field, an unsupported
            type or encoding, or a line / byte skip out of bounds. Nothing of any other file is read.
    """
    import nrrd

    try:
        fields = dict(nrrd.read_header(_header_lines(handle)))
    except InvalidImage:
        raise
    except Exception as exc:  # pynrrd's NRRDError, ValueError on malformed numbers
        raise InvalidImage(f"invalid NRRD header: {exc}") from exc
    for required in ("type", "dimension", "sizes", "encoding"):
        if required not in fields:
            raise InvalidImage(f"NRRD header has no '{required}' field")
    shape = tuple(int(size) for size in fields["sizes"])
    if len(shape) != int(fields["dimension"]):
        raise InvalidImage(f"NRRD 'sizes' has {len(shape)} entries but 'dimension' is {fields['dimension']}")
    encoding = _ENCODINGS.get(str(fields["encoding"]).lower())
    if encoding is None:
        raise InvalidImage(f"NRRD encoding {fields['encoding']!r} is not supported: use raw, gzip or bzip2")
    return NrrdHeader(fields, shape, _dtype(fields, encoding), encoding, *_skips(fields, encoding))


def nrrd_affine(fields: dict[str, Any], ndim: int) -> np.ndarray:
    """The voxel → RAS affine (4 × 4) from `space directions` (or `spacings`), `space origin` and `space`.

    Args:
        fields: the header fields as pynrrd parses them.
        ndim: the image's dimensions (`dimension`).

    Returns:
        The affine, in mm; an LPS `space` is flipped to RAS, any other (or none) is taken as RAS.

    Raises:
        InvalidImage: a non-spatial axis (a `none` direction: components), more than 3 axes, or a space of
            more than 3 dimensions.
    """
    affine = np.eye(4)
    directions = fields.get("space directions")
    if directions is not None:
        rows = [np.asarray(d, dtype=np.float64) for d in directions if d is not None and not np.all(np.isnan(d))]
        if len(rows) != ndim or ndim > 3:
            raise InvalidImage("multi-component NRRD images are not supported; send a scalar volume")
        if len(rows[0]) > 3:
            raise InvalidImage(f"NRRD space has {len(rows[0])} dimensions; at most 3 are supported")
        affine[: len(rows[0]), :ndim] = np.stack(rows, axis=1)
    elif "spacings" in fields:
        spacings = np.asarray(fields["spacings"], dtype=np.float64)[:3]
        affine[: len(spacings), : len(spacings)] = np.diag(spacings)
    origin = fields.get("space origin")
    if origin is not None:
        origin = np.asarray(origin, dtype=np.float64)[:3]
        affine[: len(origin), 3] = origin
    if str(fields.get("space", "")).lower() in ("left-posterior-superior", "lps"):
        affine[:2] *= -1  # LPS_TO_RAS @ affine, without a warning for the NaN that check_affine then refuses
    return affine


def _skip_lines(handle: BinaryIO, count: int) -> None:
    skipped = 0
    while skipped < count:
        piece = handle.readline(2**16)  # pieces: a "line" of binary data may be as long as the file
        if not piece:
            raise InvalidImage("NRRD 'line skip' runs past the end of the file")
        skipped += piece.endswith(b"\n")


def _discard(stream: BinaryIO, count: int) -> None:
    while count > 0:
        piece = stream.read(min(count, 2**16))
        if not piece:
            raise InvalidImage("NRRD 'byte skip' runs past the end of the data")
        count -= len(piece)


def _decompressor(handle: BinaryIO, encoding: str) -> BinaryIO:
    if encoding == "bzip2":
        return bz2.BZ2File(handle)
    return _igzip.IGzipFile(fileobj=handle, mode="rb") if _igzip is not None else gzip.GzipFile(fileobj=handle)


def _read_ascii(handle: BinaryIO, header: NrrdHeader) -> np.ndarray:
    count = math.prod(header.shape)
    values = np.fromfile(handle, dtype=header.dtype, count=count + 1, sep=" ")  # +1: refuse extra values
    if values.size != count:
        raise InvalidImage(f"NRRD text data has {'more' if values.size > count else values.size} values; "
                           f"the header declares {count}")
    return values.reshape(header.shape, order="F")


def _read_raw(handle: BinaryIO, header: NrrdHeader, array: np.ndarray) -> None:
    if header.byte_skip == -1:
        start = os.fstat(handle.fileno()).st_size - array.nbytes
        if start < handle.tell():
            raise InvalidImage("NRRD file is shorter than the data its header declares")
        handle.seek(start)
    else:
        handle.seek(header.byte_skip, os.SEEK_CUR)
    read_exactly(handle, array)
    if handle.read(1):
        raise InvalidImage("NRRD file holds more data than its header declares")


def read_nrrd_data(handle: BinaryIO, header: NrrdHeader) -> np.ndarray:
    """Read the data that follows a header read by `read_nrrd_header` into a new array of its declared size.

    The caller checks `header.shape` and `header.dtype` against its limits first: this allocates them.

    Args:
        handle: the same file, positioned right after the header.
        header: the validated header.

    Returns:
        Array [i, j, k] (Fortran order, fastest axis first as on disk) with the file's byte order.

    Raises:
        InvalidImage: data shorter or longer than declared, or a corrupt compressed stream.
    """
    _skip_lines(handle, header.line_skip)
    if header.encoding == "ascii":
        handle.seek(header.byte_skip, os.SEEK_CUR)
        return _read_ascii(handle, header)
    array = np.empty(header.shape, dtype=header.dtype, order="F")
    if header.encoding == "raw":
        _read_raw(handle, header, array)
        return array
    with _decompressor(handle, header.encoding) as stream:
        _discard(stream, header.byte_skip)
        read_exactly(stream, array)
        if stream.read(1):
            raise InvalidImage(f"NRRD {header.encoding} data is longer than its header declares")
    return array


__all__ = ["LPS_TO_RAS", "MAX_LINE_SKIP", "NrrdHeader", "nrrd_affine", "read_nrrd_data", "read_nrrd_header"]

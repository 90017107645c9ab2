"""Reading DICOM files under bounds: zips expanded counting the bytes written, one deadline per upload, and
headers parsed with a cap on the reads pydicom makes, the pixel data left where it is.

Every bound is checked before the work it guards: zips are expanded counting the bytes actually written
(in all, per member, and against the archive's size), a file must start like DICOM before pydicom parses
it, and headers are read first (pixel data left on disk, or in the caller's buffer) so that the declared
sizes can be checked before any pixel is decoded.
"""

from __future__ import annotations

import io
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.filereader import read_partial
from pydicom.pixels import get_decoder
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID

from aiaa_server.errors import AIAAError, InvalidImage, PayloadTooLarge
from aiaa_server.imaging.formats import ZIP_MAGIC, looks_like_dicom
from aiaa_server.imaging.limits import DEFAULT_LIMITS, DecodeLimits

MAX_MEMBER_BYTES = 2**30  # one extracted file: a single-frame slice is far smaller
MAX_ZIP_RATIO = 200  # extracted bytes per byte of zip archive, checked once past RATIO_FLOOR_BYTES
RATIO_FLOOR_BYTES = 16 * 2**20  # small series of blank slices may compress better than any real one
MAX_HEADER_READS = 100_000  # reads pydicom makes for one file's header (1-2 per element; a CT slice needs ~100)
PIXEL_DATA = Tag(0x7FE0, 0x0010)
DEFER_BYTES = 4096  # values longer than this (the pixel data) stay on disk until they are used

StopWhen = Callable[[BaseTag, "str | None", int], bool]


class Deadline:
    """The one time bound of a DICOM decode (`limits.dicom_timeout_s`)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def check(self) -> None:
        """Raises: PayloadTooLarge (413, limit `dicom_timeout_s`) once the time is up."""
        if time.monotonic() >= self.end:
            raise PayloadTooLarge(
                f"decoding the DICOM upload took longer than {self.seconds:g} s (the limit dicom_timeout_s); "
                "send fewer or smaller files", limit="dicom_timeout_s")


class _Reads:
    """Counts a parse's reads against its cap (zeros parse as millions of empty elements) and its deadline."""

    def __init__(self, deadline: Deadline, max_reads: int) -> None:
        self.deadline = deadline
        self.max_reads = max_reads
        self.count = 0

    def tick(self) -> None:
        self.count += 1
        if self.count > self.max_reads:
            raise InvalidImage(f"a DICOM file has an implausibly long header (over {self.max_reads} reads): not "
                               "a DICOM image slice")
        self.deadline.check()


class _GuardedFile(io.BufferedReader):
    """A file as pydicom reads it, every read counted. A BufferedReader, so pydicom reopens it by name for
    deferred values."""

    def __init__(self, path: Path, reads: _Reads) -> None:
        super().__init__(io.FileIO(str(path), "rb"))
        self._reads = reads

    def read(self, size: int | None = -1) -> bytes:
        self._reads.tick()
        return super().read(size)


class _GuardedBytes(io.BytesIO):
    """Bytes as pydicom reads them, every read counted; deferred values are read from this buffer later."""

    def __init__(self, data: bytes, reads: _Reads) -> None:
        super().__init__(data)
        self._reads = reads

    def read(self, size: int | None = -1) -> bytes:
        self._reads.tick()
        return super().read(size)


def past_pixel_data() -> StopWhen:
    """Stop parsing at the first element after Pixel Data: some scanners pad files with megabytes of zeros
    there, which would parse as millions of empty elements (only padding and signatures may follow it)."""
    seen = False

    def stop(tag: BaseTag, _vr: str | None, _length: int) -> bool:
        nonlocal seen
        if seen:
            return True
        seen = tag == PIXEL_DATA
        return False

    return stop


def read_header(source: Path | bytes, deadline: Deadline, stop_when: StopWhen | None = None,
                max_reads: int = MAX_HEADER_READS) -> Dataset:
    """Parse a DICOM file's elements, values over DEFER_BYTES (the pixel data) left unread until used.

    Args:
        source: a file, or the bytes of one (deferred values are then read from a buffer over them).
        deadline: the upload's time bound, checked on every read.
        stop_when: where to stop parsing (default: at the first element after Pixel Data).
        max_reads: the reads pydicom may make before the file is refused.

    Returns:
        The dataset, file meta included.

    Raises:
        InvalidImage: (400) not DICOM (checked on the first 132 bytes before pydicom parses anything), an
            unparsable file, or more than `max_reads` reads.
        PayloadTooLarge: (413) past the deadline.
    """
    head = source[:132] if isinstance(source, bytes) else _head(source)
    if not looks_like_dicom(head):  # before pydicom: force=True parses anything, slowly
        raise InvalidImage("a file of the upload is not DICOM (no DICM marker, no DICOM element at its start)")
    reads = _Reads(deadline, max_reads)
    stop = stop_when or past_pixel_data()
    try:
        if isinstance(source, bytes):
            return read_partial(_GuardedBytes(source, reads), stop_when=stop, force=True, defer_size=DEFER_BYTES)
        with _GuardedFile(source, reads) as handle:
            return read_partial(handle, stop_when=stop, force=True, defer_size=DEFER_BYTES)
    except AIAAError:
        raise
    except Exception as exc:
        raise InvalidImage(f"a file of the upload is not DICOM: {exc}") from exc


@contextmanager
def malformed_is_invalid(what: str) -> Iterator[None]:
    """Any failure but an AIAAError becomes InvalidImage (400) naming `what` (pydicom raises many types for
    malformed values: a non-numeric position, a truncated sequence, ...)."""
    try:
        yield
    except AIAAError:
        raise
    except Exception as exc:
        raise InvalidImage(f"could not decode {what}: {exc}") from exc


def check_transfer_syntax(dataset: Dataset) -> None:
    """Refuse a file whose pixel data pydicom cannot decode with the installed packages, naming its encoding.

    Args:
        dataset: a header with its file meta (a file without one is read as uncompressed, and passes).

    Raises:
        InvalidImage: (400) a transfer syntax without an available decoder (details: `transfer_syntax`).
    """
    meta = getattr(dataset, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if not syntax:
        return
    uid = UID(str(syntax))
    try:
        available = get_decoder(uid).is_available
    except NotImplementedError:  # pydicom has no decoder for it at all
        available = False
    if not available:
        name = uid.name if uid.is_transfer_syntax else "an unknown transfer syntax"
        raise InvalidImage(
            f"the DICOM file uses the transfer syntax {name} ({uid}), which this server cannot decode (no decoder "
            "for it is installed); send it uncompressed (Explicit VR Little Endian), e.g. converted with "
            "`gdcmconv --raw`", transfer_syntax=str(uid))


def _head(path: Path) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(132)


@dataclass
class _Budget:
    """What the files of one upload have used so far, against `limits`."""

    limits: DecodeLimits
    files: int = 0
    zipped: int = 0  # bytes of the zip archives opened
    extracted: int = 0  # bytes written out of them

    def count(self, files: int) -> None:
        self.files += files
        if self.files > self.limits.max_dicom_files:
            raise PayloadTooLarge(f"the DICOM upload holds more than {self.limits.max_dicom_files} files "
                                  "(the limit max_dicom_files)", limit="max_dicom_files")

    def grow(self, chunk: int, member_total: int) -> None:
        """Count `chunk` bytes just extracted; `member_total` is what the current member has given so far."""
        self.extracted += chunk
        if member_total > MAX_MEMBER_BYTES:
            raise PayloadTooLarge(f"a file in the zip archive expands past {MAX_MEMBER_BYTES // 2**20} MiB")
        if self.extracted > self.limits.max_bytes:
            raise PayloadTooLarge(f"the zip archives expand past {self.limits.max_bytes / 2**20:.6g} MiB "
                                  "(the server option --max_image_mb raises it)", limit="max_image_mb")
        if self.extracted > RATIO_FLOOR_BYTES and self.extracted > MAX_ZIP_RATIO * self.zipped:
            raise PayloadTooLarge(f"the zip archive expands more than {MAX_ZIP_RATIO} times its size: "
                                  "refused as a zip bomb")


def _is_zip(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(4) == ZIP_MAGIC


def _extract(path: Path, target: Path, budget: _Budget, deadline: Deadline) -> list[Path]:
    files = []
    target.mkdir(parents=True, exist_ok=True)
    budget.zipped += path.stat().st_size
    with zipfile.ZipFile(path) as archive:
        members = [m for m in archive.infolist() if not m.is_dir()]
        budget.count(len(members) - 1)  # the archive itself was counted as one file
        for number, member in enumerate(members):
            deadline.check()
            out = target / f"m{number:06d}"  # never trust member names for paths (zip slip)
            written = 0
            with archive.open(member) as source, open(out, "wb") as sink:
                while chunk := source.read(2**20):  # sizes from the bytes read: declared sizes can lie
                    written += len(chunk)
                    budget.grow(len(chunk), written)
                    sink.write(chunk)
            files.append(out)
    return files


def expand(paths: Sequence[Path], work_dir: Path, limits: DecodeLimits, deadline: Deadline) -> list[Path]:
    """`expand_zips` under a deadline the caller shares with the rest of its decode."""
    budget = _Budget(limits)
    budget.count(len(paths))
    files: list[Path] = []
    for index, path in enumerate(paths):
        if not _is_zip(path):
            files.append(path)
            continue
        try:
            files.extend(_extract(path, work_dir / f"zip{index}", budget, deadline))
        except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError) as exc:
            raise InvalidImage(f"could not read the zip archive: {exc}") from exc
    return files


def expand_zips(paths: Sequence[Path], work_dir: Path, limits: DecodeLimits = DEFAULT_LIMITS) -> list[Path]:
    """Replace each zip by the files it holds, extracted under `work_dir` with numbered names.

    Args:
        paths: uploaded files; those starting with the zip signature are expanded.
        work_dir: where the members are written (member names are never used as paths).
        limits: `max_dicom_files` bounds the files in all; `max_bytes` the bytes extracted in all;
            `dicom_timeout_s` the time taken.

    Returns:
        The non-zip paths and the extracted files, in upload order.

    Raises:
        InvalidImage: a corrupt archive.
        PayloadTooLarge: too many files, too many bytes, a member over MAX_MEMBER_BYTES, or an archive
            expanding more than MAX_ZIP_RATIO times its size.
    """
    return expand(paths, work_dir, limits, Deadline(limits.dicom_timeout_s))


__all__ = ["DEFER_BYTES", "MAX_HEADER_READS", "PIXEL_DATA", "Deadline", "check_transfer_syntax", "expand", "expand_zips",
           "past_pixel_data", "read_header"]

"""Unpacking uploaded archives safely: zip/tar sniffing, entry-path checks, size and count limits, MMAR root."""

from __future__ import annotations

import os
import re
import shutil
import stat
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Literal

from aiaa_server.bundles.layout import METADATA_PATH, is_bundle
from aiaa_server.errors import AIAAError, ArchiveTooLarge, InvalidArchive
from aiaa_server.mmar.loader import CONFIG_PATH, is_mmar

ARCHIVE_JUNK = {"__MACOSX", ".DS_Store"}
COPY_CHUNK = 2**20


@dataclass(frozen=True)
class ArchiveLimits:
    """Bounds on one uploaded archive: entries (files and folders; `--max_archive_files`) and extracted bytes
    (`--max_archive_mb`)."""

    max_files: int = 10000
    max_bytes: int = 8192 * 2**20


ArchiveKind = Literal["zip", "tar"]


def sniff_archive(path: Path) -> ArchiveKind | None:
    """The archive kind from the first bytes: "zip", "tar" (also any gzip, bzip2 or xz stream), or None."""
    with open(path, "rb") as f:
        head = f.read(512)
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    if head[:2] == b"\x1f\x8b" or head[:3] == b"BZh" or head[:6] == b"\xfd7zXZ\x00":
        return "tar"  # compressed; tarfile finds out whether a tar is inside
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar"
    return None


def member_path(raw: str) -> PurePosixPath | None:
    """The safe relative path of an archive entry, None for the root entry; refuses anything escaping.

    Raises:
        InvalidArchive: (400) a NUL byte, an absolute or drive path, or a `..` part.
    """
    if "\x00" in raw:
        raise InvalidArchive(f"archive entry {raw!r} has a NUL byte in its name", entry=raw)
    name = raw.replace("\\", "/")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise InvalidArchive(f"archive entry {raw!r} has an absolute path", entry=raw)
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise InvalidArchive(f"archive entry {raw!r} points outside the archive ('..')", entry=raw)
    return PurePosixPath(*parts) if parts else None


class _Extractor:
    """Writes entries below `dest`, counting files and bytes against the limits."""

    def __init__(self, dest: Path, limits: ArchiveLimits) -> None:
        self.dest = dest
        self.limits = limits
        self.entries = 0
        self.total = 0
        dest.mkdir(parents=True, exist_ok=True)
        self._root = dest.resolve()

    def _count_entry(self, raw: str) -> None:
        self.entries += 1
        if self.entries > self.limits.max_files:
            raise ArchiveTooLarge(
                f"archive has more than {self.limits.max_files} entries (see --max_archive_files)", entry=raw
            )

    def _target(self, rel: PurePosixPath, raw: str) -> Path:
        target = self.dest.joinpath(*rel.parts)
        if not target.resolve().is_relative_to(self._root):
            raise InvalidArchive(f"archive entry {raw!r} points outside the archive", entry=raw)
        return target

    def add_dir(self, raw: str) -> None:
        self._count_entry(raw)
        rel = member_path(raw)
        if rel is None:
            return
        try:
            self._target(rel, raw).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InvalidArchive(f"archive entry {raw!r} cannot be created: {exc.strerror}", entry=raw) from exc

    def add_file(self, raw: str, declared_size: int, source: IO[bytes]) -> None:
        self._count_entry(raw)
        rel = member_path(raw)
        if rel is None:
            raise InvalidArchive(f"archive entry {raw!r} has no file name", entry=raw)
        self._check_total(self.total + max(declared_size, 0), raw)
        target = self._target(rel, raw)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except FileExistsError as exc:
            raise InvalidArchive(f"archive entry {raw!r} appears twice", entry=raw) from exc
        except OSError as exc:
            raise InvalidArchive(f"archive entry {raw!r} cannot be created: {exc.strerror}", entry=raw) from exc
        with os.fdopen(fd, "wb") as out:
            while chunk := source.read(COPY_CHUNK):
                self._check_total(self.total + len(chunk), raw)  # declared sizes can lie
                self.total += len(chunk)
                out.write(chunk)

    def _check_total(self, total: int, raw: str) -> None:
        if total > self.limits.max_bytes:
            raise ArchiveTooLarge(
                f"archive expands to more than {self.limits.max_bytes // 2**20} MiB (see --max_archive_mb)",
                entry=raw,
            )


def _zip_entry_count(path: Path) -> int | None:
    """Entry count from the end-of-central-directory record, read before zipfile parses every entry."""
    try:
        with open(path, "rb") as f:
            record = zipfile._EndRecData(f)  # type: ignore[attr-defined]
    except (OSError, AttributeError):
        return None
    return int(record[4]) if record else None


def _extract_zip(path: Path, extractor: _Extractor) -> None:
    count = _zip_entry_count(path)
    if count is not None and count > extractor.limits.max_files:
        raise ArchiveTooLarge(f"archive has {count} entries, more than {extractor.limits.max_files} "
                              "(see --max_archive_files)")
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise InvalidArchive(f"archive entry {info.filename!r} is a symbolic link", entry=info.filename)
            if stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):  # 0: no type recorded
                raise InvalidArchive(f"archive entry {info.filename!r} is not a regular file", entry=info.filename)
            if info.flag_bits & 0x1:
                raise InvalidArchive(f"archive entry {info.filename!r} is encrypted", entry=info.filename)
            if info.is_dir():
                extractor.add_dir(info.filename)
                continue
            with archive.open(info) as source:
                extractor.add_file(info.filename, info.file_size, source)


def _extract_tar(path: Path, extractor: _Extractor) -> None:
    with tarfile.open(path, mode="r:*") as archive:
        for member in archive:
            if member.issym() or member.islnk():
                kind = "symbolic" if member.issym() else "hard"
                raise InvalidArchive(
                    f"archive entry {member.name!r} is a {kind} link (to {member.linkname!r})", entry=member.name
                )
            if member.isdir():
                extractor.add_dir(member.name)
            elif member.isreg():
                source = archive.extractfile(member)
                assert source is not None
                with source:
                    extractor.add_file(member.name, member.size, source)
            else:
                raise InvalidArchive(f"archive entry {member.name!r} is not a regular file", entry=member.name)
            archive.members.clear()  # tarfile keeps every header otherwise; the count limit bounds the loop


def extract_archive(path: Path, dest: Path, limits: ArchiveLimits) -> None:
    """Extract a zip or (compressed) tar under `dest`, entry paths checked, regular files and folders only.

    Raises:
        InvalidArchive: (400) not a zip or tar, a corrupt archive, an escaping or duplicate entry, a link,
            device or other special entry, or an encrypted zip entry.
        ArchiveTooLarge: (413) more entries or extracted bytes than `limits` (counted as written).
    """
    kind = sniff_archive(path)
    if kind is None:
        raise InvalidArchive("data is not a zip or tar(.gz) archive of an MMAR")
    extractor = _Extractor(dest, limits)
    try:
        if kind == "zip":
            _extract_zip(path, extractor)
        else:
            _extract_tar(path, extractor)
    except AIAAError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, tarfile.TarError, EOFError, zlib.error, OSError,
            NotImplementedError, RuntimeError, ValueError) as exc:
        raise InvalidArchive(f"cannot read the {kind} archive: {exc}") from exc


def locate_mmar_root(extracted: Path) -> Path:
    """The model inside an extracted archive, an MMAR or a MONAI bundle: at the root, or inside one single
    top folder.

    `__MACOSX` and `.DS_Store` entries at the root are removed first.

    Raises:
        InvalidArchive: (400) neither `config/config_aiaa.json` nor a bundle's `configs/metadata.json` and
            `configs/inference.json|yaml` in either place.
    """
    for junk in ARCHIVE_JUNK:
        target = extracted / junk
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    if is_mmar(extracted) or is_bundle(extracted):
        return extracted
    children = list(extracted.iterdir())
    if len(children) == 1 and children[0].is_dir() and (is_mmar(children[0]) or is_bundle(children[0])):
        return children[0]
    raise InvalidArchive(
        f"the archive holds no MMAR ({CONFIG_PATH.as_posix()}) and no MONAI bundle ({METADATA_PATH.as_posix()} "
        "with configs/inference.json): either must be at its root (or inside one top folder)"
    )

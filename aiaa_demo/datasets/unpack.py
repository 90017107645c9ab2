"""Unpacking the pinned archives in Python: Debian packages (ar + data.tar.*), tarballs and zips (wheels).

Only the members asked for are written, and only regular files. Every member name of an archive is checked
before anything is written: an absolute path, a drive letter, a backslash or a `..` part makes the whole
archive refused (`UnsafeArchive`), as does a wanted member that is a link or missing, or one larger than
`max_member_bytes`.
"""

from __future__ import annotations

import io
import os
import shutil
import tarfile
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import BinaryIO

MAX_MEMBER_BYTES = 512 * 2**20
AR_MAGIC = b"!<arch>\n"


class UnsafeArchive(ValueError):
    """An archive with a member path outside its root, an unwanted file type, or a missing wanted member."""


def member_path(name: str) -> PurePosixPath:
    """The normalised relative path of an archive member ("./usr/x" -> "usr/x").

    Raises:
        UnsafeArchive: an absolute path, a Windows drive or backslash path, or a `..` part.
    """
    if name.startswith(("/", "\\")) or "\\" in name or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchive(f"archive member {name!r} has an absolute or non-POSIX path")
    parts = [p for p in PurePosixPath(name).parts if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchive(f"archive member {name!r} reaches outside the archive ('..')")
    return PurePosixPath(*parts) if parts else PurePosixPath(".")


def _write(stream: BinaryIO, target: Path, size: int, max_member_bytes: int) -> None:
    if size > max_member_bytes:
        raise UnsafeArchive(f"archive member {target.name} is {size} bytes, over {max_member_bytes}")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    with open(tmp, "wb") as out:
        shutil.copyfileobj(stream, out, 2**20)
    os.replace(tmp, target)


def _wanted(members: Iterable[str]) -> set[str]:
    return {str(member_path(m)) for m in members}


def _check_all_found(wanted: set[str], found: dict[str, Path], archive: str) -> None:
    missing = sorted(wanted - set(found))
    if missing:
        raise UnsafeArchive(f"{archive} has no member {', '.join(missing)}")


def ar_members(path: Path) -> Iterator[tuple[str, int, int]]:
    """The members of an `ar` archive (a .deb): (name, offset of its data, size).

    Raises:
        UnsafeArchive: not an ar archive, a truncated header, or an unsafe member name.
    """
    with open(path, "rb") as handle:
        if handle.read(8) != AR_MAGIC:
            raise UnsafeArchive(f"{path.name} is not an ar archive (a .deb)")
        total = os.fstat(handle.fileno()).st_size
        while (header := handle.read(60)) and header.strip(b"\n"):
            if len(header) < 60 or header[58:60] != b"`\n":
                raise UnsafeArchive(f"{path.name}: corrupt ar member header")
            name = header[:16].decode("ascii", "replace").strip().rstrip("/")
            size = int(header[48:58].decode("ascii").strip())
            offset = handle.tell()
            if offset + size > total:
                raise UnsafeArchive(f"{path.name}: ar member {name!r} runs past the end of the file")
            yield str(member_path(name)), offset, size
            handle.seek(offset + size + size % 2)  # members are 2-byte aligned


def _deb_data(path: Path) -> tuple[str, bytes]:
    for name, offset, size in ar_members(path):
        if name.startswith("data.tar"):
            if size > MAX_MEMBER_BYTES:
                raise UnsafeArchive(f"{path.name}: {name} is {size} bytes, over {MAX_MEMBER_BYTES}")
            with open(path, "rb") as handle:
                handle.seek(offset)
                return name, handle.read(size)
    raise UnsafeArchive(f"{path.name} has no data.tar member: not a Debian package")


def extract_tar(archive: BinaryIO | Path, members: Iterable[str], dest: Path, *, name: str = "tar archive",
                max_member_bytes: int = MAX_MEMBER_BYTES) -> dict[str, Path]:
    """Extract the wanted regular files of a tar archive (any compression tarfile reads: gz, bz2, xz).

    Args:
        archive: the file, or a binary stream at its start.
        members: the member paths to extract (leading "./" optional).
        dest: the folder they are written under, at their member paths.
        name: how messages name the archive.
        max_member_bytes: the largest member accepted.

    Returns:
        Normalised member path -> the extracted file.

    Raises:
        UnsafeArchive: any unsafe member path, a wanted member that is not a regular file or is missing.
    """
    wanted, found = _wanted(members), {}
    source = {"name": archive} if isinstance(archive, Path) else {"fileobj": archive}
    with tarfile.open(mode="r:*", **source) as tar:
        infos = tar.getmembers()  # every name is checked before anything is written
        paths = [str(member_path(info.name)) for info in infos]
        for info, path in zip(infos, paths, strict=True):
            if path not in wanted:
                continue
            if not info.isreg():
                raise UnsafeArchive(f"{name}: member {info.name!r} is not a regular file")
            stream = tar.extractfile(info)
            assert stream is not None  # a regular file always has a stream
            _write(stream, dest / path, info.size, max_member_bytes)
            found[path] = dest / path
    _check_all_found(wanted, found, name)
    return found


def extract_zip(path: Path, members: Iterable[str], dest: Path, *,
                max_member_bytes: int = MAX_MEMBER_BYTES) -> dict[str, Path]:
    """Extract the wanted files of a zip archive (a wheel); the same checks and result as `extract_tar`."""
    wanted, found = _wanted(members), {}
    with zipfile.ZipFile(path) as archive:
        infos = archive.infolist()
        paths = [str(member_path(info.filename)) for info in infos]  # all checked before anything is written
        for info, member in zip(infos, paths, strict=True):
            if member not in wanted:
                continue
            if info.is_dir() or (info.external_attr >> 16) & 0o170000 == 0o120000:
                raise UnsafeArchive(f"{path.name}: member {info.filename!r} is not a regular file")
            with archive.open(info) as stream:
                _write(stream, dest / member, info.file_size, max_member_bytes)
            found[member] = dest / member
    _check_all_found(wanted, found, path.name)
    return found


def extract_deb(path: Path, members: Iterable[str], dest: Path, *,
                max_member_bytes: int = MAX_MEMBER_BYTES) -> dict[str, Path]:
    """Extract wanted files of a Debian package's data.tar (.xz, .gz, .bz2 or plain) without dpkg.

    Args:
        path: the .deb (an ar archive: debian-binary, control.tar.*, data.tar.*).
        members: paths inside data.tar, e.g. "usr/share/doc/pkg/copyright".
        dest: where they are written, at those paths.
        max_member_bytes: the largest member accepted (data.tar itself too).

    Returns:
        Normalised member path -> the extracted file.

    Raises:
        UnsafeArchive: not a .deb, a data.tar compression this Python cannot read (zstd), or the checks
            of `extract_tar`.
    """
    data_name, data = _deb_data(path)
    if data_name.endswith(".zst"):
        raise UnsafeArchive(f"{path.name}: {data_name} is zstd-compressed; pin a version packed with xz or gzip")
    return extract_tar(io.BytesIO(data), members, dest, name=f"{path.name}:{data_name}",
                       max_member_bytes=max_member_bytes)


def extract(kind: str, path: Path, members: Iterable[str], dest: Path) -> dict[str, Path]:
    """Extract `members` of the archive at `path` of the given kind ("deb", "tar" or "zip") under `dest`."""
    if kind == "deb":
        return extract_deb(path, members, dest)
    if kind == "tar":
        return extract_tar(path, members, dest, name=path.name)
    if kind == "zip":
        return extract_zip(path, members, dest)
    raise ValueError(f"unknown archive kind {kind!r}")

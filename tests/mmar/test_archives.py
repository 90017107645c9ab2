"""Uploaded archives: entry-path safety, zip/tar refusals, size and count limits, MMAR location."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from aiaa_server.errors import ArchiveTooLarge, InvalidArchive
from aiaa_server.mmar.archives import ArchiveLimits, extract_archive, locate_mmar_root, member_path
from tests.mmar.test_store import tar_folder, tar_member, tar_with, zip_entries, zip_folder
from tests.support.mmars import write_threshold_mmar

# ------------------------------------------------------------------------------------------ entry paths


@pytest.mark.parametrize("raw", ["../evil", "config/../../evil", "/etc/passwd", "C:\\evil", "a\\..\\..\\evil",
                                 "ok/\x00"])
def test_member_path_refuses_escapes(raw: str) -> None:
    with pytest.raises(InvalidArchive):
        member_path(raw)


def test_member_path_normalises_harmless_forms() -> None:
    assert str(member_path("./config//config_aiaa.json")) == "config/config_aiaa.json"
    assert str(member_path("models\\model.ts")) == "models/model.ts"
    assert member_path("./") is None


# ---------------------------------------------------------------------------------------- extraction


def test_zip_traversal_refused_and_nothing_written_outside(tmp_path: Path) -> None:
    archive = zip_entries(tmp_path / "a.zip", {"config/config_aiaa.json": b"{}", "../../evil.txt": b"x"})
    dest = tmp_path / "deep" / "dest"
    with pytest.raises(InvalidArchive, match="outside"):
        extract_archive(archive, dest, ArchiveLimits())
    assert not list(tmp_path.rglob("evil.txt"))


def test_zip_absolute_path_refused(tmp_path: Path) -> None:
    archive = zip_entries(tmp_path / "a.zip", {"/tmp/evil-absolute.txt": b"x"})
    with pytest.raises(InvalidArchive, match="absolute"):
        extract_archive(archive, tmp_path / "dest", ArchiveLimits())


def test_zip_symlink_refused(tmp_path: Path) -> None:
    archive = zip_entries(tmp_path / "a.zip", {"config/config_aiaa.json": b"{}"}, symlinks={"models": "/etc"})
    with pytest.raises(InvalidArchive, match="symbolic link"):
        extract_archive(archive, tmp_path / "dest", ArchiveLimits())
    assert not (tmp_path / "dest" / "models").exists()


@pytest.mark.parametrize(
    ("member", "reason"),
    [
        (tar_member("models", tarfile.SYMTYPE, "/etc"), "symbolic link"),
        (tar_member("models/model.ts", tarfile.LNKTYPE, "/etc/passwd"), "hard link"),
        (tar_member("config/fifo", tarfile.FIFOTYPE), "not a regular file"),
        (tar_member("../evil.txt"), "outside"),
        (tar_member("/abs/evil.txt"), "absolute"),
    ],
)
def test_tar_unsafe_members_refused(tmp_path: Path, member: tarfile.TarInfo, reason: str) -> None:
    data = b"x" if member.type == tarfile.REGTYPE else None
    archive = tar_with(tmp_path / "a.tar.gz", [(tar_member("config/config_aiaa.json"), b"{}"), (member, data)])
    with pytest.raises(InvalidArchive, match=reason):
        extract_archive(archive, tmp_path / "dest", ArchiveLimits())
    assert not (tmp_path / "evil.txt").exists()


def test_zip_bomb_refused_by_uncompressed_size(tmp_path: Path) -> None:
    archive = zip_entries(tmp_path / "bomb.zip", {"models/model.ts": bytes(8 * 2**20)})
    assert archive.stat().st_size < 2**20 // 4  # small on the wire, 8 MiB expanded
    with pytest.raises(ArchiveTooLarge, match="MiB"):
        extract_archive(archive, tmp_path / "dest", ArchiveLimits(max_bytes=2**20))


def test_tar_bomb_refused_by_uncompressed_size(tmp_path: Path) -> None:
    archive = tar_with(tmp_path / "bomb.tar.gz", [(tar_member("models/model.ts"), bytes(4 * 2**20))])
    with pytest.raises(ArchiveTooLarge):
        extract_archive(archive, tmp_path / "dest", ArchiveLimits(max_bytes=2**20))


def test_archive_file_count_limit(tmp_path: Path) -> None:
    archive = zip_entries(tmp_path / "many.zip", {f"docs/{i}.txt": b"" for i in range(30)})
    with pytest.raises(ArchiveTooLarge, match="entries"):
        extract_archive(archive, tmp_path / "dest", ArchiveLimits(max_files=20))
    extract_archive(archive, tmp_path / "ok", ArchiveLimits(max_files=30))
    assert len(list((tmp_path / "ok" / "docs").iterdir())) == 30


def test_non_archive_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"hello world" * 100)
    with pytest.raises(InvalidArchive, match="not a zip"):
        extract_archive(junk, tmp_path / "dest", ArchiveLimits())


def test_locate_root_accepts_root_and_single_top_folder(tmp_path: Path) -> None:
    mmar = write_threshold_mmar(tmp_path / "src")
    for index, (builder, prefix) in enumerate([(zip_folder, ""), (zip_folder, "my_mmar/"), (tar_folder, "top/")]):
        archive = builder(mmar, tmp_path / f"a{index}.bin", prefix)
        dest = tmp_path / f"x{index}"
        extract_archive(archive, dest, ArchiveLimits())
        root = locate_mmar_root(dest)
        assert (root / "config" / "config_aiaa.json").is_file()
        assert (root / "models" / "model.ts").read_bytes() == (mmar / "models" / "model.ts").read_bytes()


def test_locate_root_ignores_macos_junk_and_refuses_ambiguity(tmp_path: Path) -> None:
    dest = tmp_path / "x"
    write_threshold_mmar(dest / "only")
    (dest / "__MACOSX").mkdir()
    assert locate_mmar_root(dest) == dest / "only"
    write_threshold_mmar(tmp_path / "y" / "one")
    write_threshold_mmar(tmp_path / "y" / "two")
    with pytest.raises(InvalidArchive, match="no MMAR"):
        locate_mmar_root(tmp_path / "y")

"""The workspace model store: model names, crash recovery; archive and pickle builders for upload tests."""

from __future__ import annotations

import io
import json
import os
import tarfile
import zipfile
from pathlib import Path

import pytest

from aiaa_server.errors import InvalidModelName
from aiaa_server.mmar.store import ModelStore, check_model_name
from tests.support.mmars import write_threshold_mmar

# --------------------------------------------------------------------------------- archive builders


def zip_folder(folder: Path, target: Path, prefix: str = "") -> Path:
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, prefix + path.relative_to(folder).as_posix())
    return target


def tar_folder(folder: Path, target: Path, prefix: str = "") -> Path:
    with tarfile.open(target, "w:gz") as archive:
        for path in sorted(folder.rglob("*")):
            archive.add(path, prefix + path.relative_to(folder).as_posix(), recursive=False)
    return target


def zip_entries(target: Path, entries: dict[str, bytes], symlinks: dict[str, str] | None = None) -> Path:
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
        for name, link_target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o120777 << 16)  # S_IFLNK
            archive.writestr(info, link_target)
    return target


def tar_with(target: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(target, "w:gz") as archive:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    return target


def tar_member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info


class EvilPickle:
    """Unpickling it creates a folder: proof that a pickle was executed."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.makedirs, (str(self.marker),))


# ------------------------------------------------------------------------------------------- names


@pytest.mark.parametrize("name", ["spleen", "a", "Spleen_CT-seg.v2", "9lives", "x" * 128])
def test_valid_model_names(name: str) -> None:
    assert check_model_name(name) == name


@pytest.mark.parametrize("name", ["", ".", "..", ".staging", "../x", "a/b", "a\\b", "-x", "_x", "a b", "x" * 129,
                                  "ünïcode", "a\x00b", "a:b"])
def test_invalid_model_names(name: str) -> None:
    with pytest.raises(InvalidModelName):
        check_model_name(name)


# ------------------------------------------------------------------------------------------ recovery


def test_recover_restores_model_moved_aside_by_an_interrupted_replace(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    write_threshold_mmar(store.root / "kept", labels=["old"])
    store.staging_root.mkdir(parents=True)
    # The crash window of a replace: the old version is aside and the new one is not in place yet.
    aside = store.staging_root / "aside-123"
    aside.mkdir()
    os.rename(store.root / "kept", aside / "kept")
    write_threshold_mmar(store.staging_root / "up-456" / "extract", labels=["half"])  # an unfinished upload
    (store.staging_root / "trash-789").mkdir()
    write_threshold_mmar(store.staging_root / "trash-789" / "deleted", labels=["gone"])
    assert store.recover() == ["kept"]
    assert json.loads((store.root / "kept" / "config" / "config_aiaa.json").read_text())["labels"] == ["old"]
    assert list(store.staging_root.iterdir()) == []
    assert store.names() == ["kept"]


def test_recover_drops_aside_copy_when_the_new_version_arrived(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    write_threshold_mmar(store.root / "m", labels=["new"])
    write_threshold_mmar(store.staging_root / "aside-1" / "m", labels=["old"])
    assert store.recover() == []
    assert json.loads((store.root / "m" / "config" / "config_aiaa.json").read_text())["labels"] == ["new"]
    assert list(store.staging_root.iterdir()) == []


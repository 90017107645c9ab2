"""The workspace model store: archive safety, MMAR location, atomic install and crash recovery."""

from __future__ import annotations

import io
import json
import os
import pickle
import tarfile
import zipfile
from pathlib import Path

import pytest
import torch

from aiaa_server.engines.torchscript import TorchScriptPool
from aiaa_server.errors import ArchiveTooLarge, BadRequest, InvalidArchive, InvalidModel, InvalidModelName
from aiaa_server.mmar.registry import ModelRegistry
from aiaa_server.mmar.store import (
    ArchiveLimits,
    ModelAdmin,
    ModelStore,
    assemble_mmar,
    check_model_name,
    extract_archive,
    locate_mmar_root,
    member_path,
    validate_mmar,
)
from tests.support.mmars import ThresholdNet, segmentation_config, write_mmar, write_threshold_mmar

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


# ----------------------------------------------------------------------------------------- validation


def _parts(tmp_path: Path, config: dict | None, data: bytes | None) -> tuple[Path | None, Path | None]:
    config_part = data_part = None
    if config is not None:
        config_part = tmp_path / "config.part"
        config_part.write_text(json.dumps(config))
    if data is not None:
        data_part = tmp_path / "data.part"
        data_part.write_bytes(data)
    return config_part, data_part


def test_pickle_payloads_refused_without_unpickling(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    buffer = io.BytesIO()
    pickle.dump(EvilPickle(marker), buffer)
    for index, payload in enumerate([buffer.getvalue(), _torch_save_bytes(EvilPickle(marker))]):
        staging = tmp_path / f"s{index}"
        staging.mkdir()
        config_part, data_part = _parts(staging, segmentation_config(), payload)
        with pytest.raises(InvalidModel):
            mmar = assemble_mmar(staging, config_part, data_part, ArchiveLimits())
            validate_mmar(mmar, "evil", allow_code=False, default_device="cpu")
    assert not marker.exists()


def _torch_save_bytes(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save({"model": obj}, buffer)
    return buffer.getvalue()


def test_torchscript_without_config_asks_for_config(tmp_path: Path) -> None:
    mmar = write_threshold_mmar(tmp_path / "src")
    _, data_part = _parts(tmp_path, None, (mmar / "models" / "model.ts").read_bytes())
    with pytest.raises(BadRequest, match="send its config_aiaa.json"):
        assemble_mmar(tmp_path, None, data_part, ArchiveLimits())


def test_disallowed_component_refused_before_it_runs(tmp_path: Path) -> None:
    marker = tmp_path / "made-by-config"
    config = segmentation_config(pre=[{"name": "os.makedirs", "args": {"name": str(marker)}}])
    staging = tmp_path / "s"
    staging.mkdir()
    mmar = write_mmar(staging / "mmar", config, ThresholdNet())
    with pytest.raises(InvalidModel, match="not allowed"):
        validate_mmar(mmar, "evil", allow_code=False, default_device="cpu")
    assert not marker.exists()


def test_dry_run_refuses_network_that_mismatches_declared_shape(tmp_path: Path) -> None:
    config = segmentation_config(roi=[16, 16, 16])
    config["inference"]["TRITON"] = {
        "name": "aiaa.inference.TritonInference",
        "triton_model_config": {
            "max_batch_size": 1,
            "input": [{"name": "INPUT__0", "dims": [1, 16, 16, 16]}],
            "output": [{"name": "OUTPUT__0", "dims": [3, 16, 16, 16]}],  # ThresholdNet gives 2 channels
        },
    }
    mmar = write_mmar(tmp_path / "m", config, ThresholdNet())
    with pytest.raises(InvalidModel, match=r"output shape \[1, 2, 16, 16, 16\]"):
        validate_mmar(mmar, "m", allow_code=False, default_device="cpu")
    config["inference"]["TRITON"]["triton_model_config"]["output"][0]["dims"] = [2, 16, 16, 16]
    write_mmar(mmar, config)
    assert validate_mmar(mmar, "m", allow_code=False, default_device="cpu").name == "m"


def test_dry_run_refuses_network_that_rejects_declared_input(tmp_path: Path) -> None:
    class TwoChannel(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv3d(2, 2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x)

    mmar = write_mmar(tmp_path / "m", segmentation_config(roi=[8, 8, 8]), TwoChannel())
    with pytest.raises(InvalidModel, match=r"dry run failed.*\[1, 1, 8, 8, 8\]"):
        validate_mmar(mmar, "m", allow_code=False, default_device="cpu")


# ------------------------------------------------------------------------------- install and recovery


def _admin(tmp_path: Path) -> ModelAdmin:
    store = ModelStore(tmp_path / "ws" / "models")
    store.root.mkdir(parents=True)
    return ModelAdmin(store, ModelRegistry(TorchScriptPool()), fallback_dirs=[])


def _stage(admin: ModelAdmin, labels: list[str]) -> tuple[Path, Path, Path]:
    staging = admin.store.new_staging()
    src = write_threshold_mmar(staging / "src", labels=labels)
    config_part = staging / "config.part"
    data_part = staging / "data.part"
    os.replace(src / "config" / "config_aiaa.json", config_part)
    os.replace(src / "models" / "model.ts", data_part)
    return staging, config_part, data_part


def test_install_replace_and_delete(tmp_path: Path) -> None:
    admin = _admin(tmp_path)
    staging, config_part, data_part = _stage(admin, ["v1"])
    first = admin.install("m", staging, config_part, data_part)
    admin.store.discard_staging(staging)
    assert not first.replaced and admin.registry.get("m").config.labels == ["v1"]
    staging, config_part, data_part = _stage(admin, ["v2"])
    second = admin.install("m", staging, config_part, data_part)
    admin.store.discard_staging(staging)
    assert second.replaced
    assert admin.registry.get("m").config.labels == ["v2"]
    assert first.model.config.labels == ["v1"]  # the old object stays usable for requests holding it
    assert json.loads((admin.store.root / "m" / "config" / "config_aiaa.json").read_text())["labels"] == ["v2"]
    assert list(admin.store.staging_root.iterdir()) == []
    admin.delete("m")
    assert not (admin.store.root / "m").exists() and admin.registry.find("m") is None


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


def test_custom_code_needs_allow_uploaded_code(tmp_path: Path) -> None:
    pre = [*segmentation_config()["pre_transforms"], {"name": "custom.transforms.Identityd", "args": {}}]
    mmar = write_mmar(tmp_path / "m", segmentation_config(pre=pre, roi=[16, 16, 16]), ThresholdNet())
    (mmar / "custom").mkdir()
    (mmar / "custom" / "transforms.py").write_text(
        "class Identityd:\n    def __call__(self, data):\n        return data\n"
    )
    with pytest.raises(InvalidModel, match="--allow_uploaded_code"):
        validate_mmar(mmar, "m", allow_code=False, default_device="cpu")
    assert validate_mmar(mmar, "m", allow_code=True, default_device="cpu").name == "m"

from __future__ import annotations

import os
from pathlib import Path

import pytest

from aiaa_server.datastore import DatastoreLimits, LocalDatastore
from aiaa_server.datastore.atomic import TEMP_PREFIX
from tests.datastore.conftest import FakeClock, voxel, write_nifti


@pytest.fixture
def image(store: LocalDatastore, files: Path) -> str:
    store.add_image("img", write_nifti(files / "img.nii.gz"))
    return "img"


def test_a_saved_label_has_its_metadata(store: LocalDatastore, files: Path, image: str, clock: FakeClock) -> None:
    info = store.save_label(image, write_nifti(files / "up.nii.gz", 5), "final", client_id="ann1",
                            model="deepedit", label_info={"label_names": {"spleen": 1}})
    assert (info.image, info.tag, info.name, info.client_id, info.model) == (image, "final", "img.nii.gz", "ann1",
                                                                            "deepedit")
    assert info.ts == clock.now and info.checksum.startswith("SHA256:") and info.versions == []
    assert info.label_info == {"label_names": {"spleen": 1}}
    assert Path(info.path) == store.root / "labels" / "final" / "img.nii.gz"
    assert store.get_label_info(image) == info
    assert store.get_image_info(image).labels == ["final"]


def test_saving_again_keeps_the_previous_label_as_a_version(store: LocalDatastore, files: Path, image: str,
                                                           clock: FakeClock) -> None:
    for value in (1, 2, 3):
        store.save_label(image, write_nifti(files / "up.nii.gz", value), client_id=f"c{value}")
        clock.advance(10)
    info = store.get_label_info(image)
    assert voxel(Path(info.path)) == 3
    assert [(v.version, v.client_id, voxel(Path(v.path))) for v in info.versions] == [(1, "c1", 1), (2, "c2", 2)]
    assert info.versions[0].name == "v000001.nii.gz"
    assert Path(info.versions[0].path).parent == store.root / ".aiaa" / "history" / image / "final"
    assert info.versions[1].replaced == info.ts  # replaced when the current one was saved
    assert store.get_label_version_path(image, "final", 1) == Path(info.versions[0].path)


def test_versions_are_bounded_oldest_dropped(store: LocalDatastore, files: Path, image: str) -> None:
    for value in range(1, 8):  # max_versions=3
        store.save_label(image, write_nifti(files / "up.nii.gz", value))
    info = store.get_label_info(image)
    assert [v.version for v in info.versions] == [4, 5, 6]
    assert [voxel(Path(v.path)) for v in info.versions] == [4, 5, 6]
    assert len(list((store.root / ".aiaa" / "history" / image / "final").iterdir())) == 3


def test_a_label_in_another_format_replaces_the_old_file(store: LocalDatastore, files: Path, image: str) -> None:
    store.save_label(image, write_nifti(files / "up.nii", 1))
    info = store.save_label(image, write_nifti(files / "up.nii.gz", 2))
    assert [p.name for p in (store.root / "labels" / "final").iterdir()] == ["img.nii.gz"]
    assert [(v.name, voxel(Path(v.path))) for v in info.versions] == [("v000001.nii", 1)]


def test_removing_a_label_keeps_it_as_the_newest_version(store: LocalDatastore, files: Path, image: str) -> None:
    store.save_label(image, write_nifti(files / "up.nii.gz", 1), "original")
    store.remove_label(image, "original")
    assert store.get_image_info(image).labels == []
    store.save_label(image, write_nifti(files / "up.nii.gz", 2), "original")
    versions = store.get_label_info(image, "original").versions
    assert [voxel(Path(v.path)) for v in versions] == [1]


def test_a_label_copied_in_by_hand_is_not_described_by_stale_metadata(store: LocalDatastore, files: Path,
                                                                     image: str) -> None:
    store.save_label(image, write_nifti(files / "up.nii.gz", 1), client_id="ann1")
    path = write_nifti(store.root / "labels" / "final" / "img.nii.gz", 2)  # same size, maybe the same inode
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1))  # file timestamps can be coarse
    info = store.get_label_info(image)
    assert info.client_id is None and info.checksum is None and voxel(Path(info.path)) == 2


def test_a_leftover_temp_file_of_an_interrupted_save_is_ignored_and_cleaned(tmp_path: Path, files: Path) -> None:
    ds = LocalDatastore(tmp_path / "ds", DatastoreLimits())
    ds.add_image("img", write_nifti(files / "i.nii.gz"))
    ds.save_label("img", write_nifti(files / "l.nii.gz", 1))
    ds.close()
    # kill -9 mid-copy: a half-written temp file beside the label, the image and the metadata
    leftovers = [tmp_path / "ds" / "labels" / "final" / f"{TEMP_PREFIX}abc", tmp_path / "ds" / f"{TEMP_PREFIX}x",
                 tmp_path / "ds" / ".aiaa" / "meta" / f"{TEMP_PREFIX}y"]
    for path in leftovers:
        path.write_bytes(b"\x1f\x8b half")
    reopened = LocalDatastore(tmp_path / "ds", DatastoreLimits())
    assert not any(path.exists() for path in leftovers)
    assert reopened.list_images() == ["img"] and voxel(reopened.get_label_path("img")) == 1
    assert reopened.stats().label_tags == {"final": 1}


def test_a_failing_replace_leaves_the_old_label_intact(store: LocalDatastore, files: Path, image: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    store.save_label(image, write_nifti(files / "up.nii.gz", 1), client_id="first")
    before = store.get_label_info(image)
    real_replace = os.replace

    def crash(src: object, dst: object) -> None:
        if "labels" in str(dst):
            raise OSError("disk gone")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk gone"):
        store.save_label(image, write_nifti(files / "up.nii.gz", 2), client_id="second")
    monkeypatch.setattr(os, "replace", real_replace)
    after = store.get_label_info(image)
    assert voxel(Path(after.path)) == 1 and after == before  # same file, same metadata, no stray version
    assert not list(store.root.rglob(f"{TEMP_PREFIX}*"))


def test_a_failing_metadata_write_leaves_a_consistent_label(store: LocalDatastore, files: Path, image: str,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    store.save_label(image, write_nifti(files / "up.nii.gz", 1), client_id="first")
    real_replace = os.replace

    def crash(src: object, dst: object) -> None:
        if str(dst).endswith(".json"):
            raise OSError("crash before the metadata")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        store.save_label(image, write_nifti(files / "up.nii.gz", 2, shape=(5, 5, 5)), client_id="second")
    monkeypatch.setattr(os, "replace", real_replace)
    info = store.get_label_info(image)
    # the new label is whole; the old metadata is not trusted for it; the old file is a kept version
    assert voxel(Path(info.path)) == 2 and info.client_id is None
    assert [voxel(Path(v.path)) for v in info.versions] == [1]


def test_without_history_a_save_replaces_in_place(tmp_path: Path, files: Path) -> None:
    ds = LocalDatastore(tmp_path / "ds", DatastoreLimits(max_versions=0))
    ds.add_image("img", write_nifti(files / "i.nii.gz"))
    ds.save_label("img", write_nifti(files / "l.nii.gz", 1))
    info = ds.save_label("img", write_nifti(files / "l.nii.gz", 2))
    assert info.versions == [] and voxel(Path(info.path)) == 2
    ds.remove_label("img")
    assert ds.stats().completed == 0

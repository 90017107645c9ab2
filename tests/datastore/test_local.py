from __future__ import annotations

from pathlib import Path

import pytest

from aiaa_server.datastore import DatastoreLimits, LocalDatastore
from aiaa_server.errors import BadRequest, Conflict, NotFound, PayloadTooLarge
from tests.datastore.conftest import FakeClock, voxel, write_nifti


def test_an_existing_monai_label_folder_is_read_as_is(tmp_path: Path) -> None:
    root = tmp_path / "spleen"
    for name in ("b.nii.gz", "a.nii", "c.nrrd"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        write_nifti(root / name) if name.endswith((".nii", ".nii.gz")) else (root / name).write_bytes(b"NRRD0004\n")
    write_nifti(root / "labels" / "final" / "a.nii.gz", 1)
    write_nifti(root / "labels" / "original" / "b.nii.gz", 2)
    write_nifti(root / "labels" / "final" / "orphan.nii.gz")  # no image: ignored
    (root / "notes.txt").write_text("not an image")
    (root / "bad;name.nii.gz").write_bytes(b"x")  # unsafe id: skipped
    before = sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))

    ds = LocalDatastore(root, DatastoreLimits())
    assert ds.list_images() == ["a", "b", "c"]
    assert ds.get_image_path("a") == root.resolve() / "a.nii"
    assert ds.get_image_info("c").ext == ".nrrd"
    assert ds.get_image_info("a").labels == ["final"]
    assert voxel(ds.get_label_path("a")) == 1
    assert ds.get_label_info("b", "original").versions == []
    stats = ds.stats()
    assert (stats.total, stats.completed, stats.label_tags) == (3, 1, {"final": 1, "original": 1})
    # nothing of the user's files was moved or rewritten; only .aiaa/ was added
    after = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if ".aiaa" not in p.parts)
    assert set(before) <= set(after) and set(after) - set(before) <= {"labels/original"}


def test_add_get_and_remove_an_image_with_its_labels(store: LocalDatastore, files: Path, clock: FakeClock) -> None:
    info = store.add_image(None, write_nifti(files / "case_1.nii.gz"), client_id="ann1", info={"site": "x"})
    assert (info.id, info.name, info.ext, info.client_id, info.ts) == ("case_1", "case_1.nii.gz", ".nii.gz", "ann1",
                                                                      clock.now)
    assert store.get_image_info("case_1").info == {"site": "x"}
    store.add_image("other", write_nifti(files / "tmp-upload.nii.gz"))
    assert store.list_images() == ["case_1", "other"]
    store.save_label("case_1", write_nifti(files / "l.nii.gz"), "final")
    store.save_label("case_1", write_nifti(files / "l.nii.gz"), "final")  # a kept version too
    store.remove_image("case_1")
    assert store.list_images() == ["other"]
    assert not list((store.root / "labels").rglob("case_1*"))
    assert not list((store.root / ".aiaa").rglob("case_1*"))
    with pytest.raises(NotFound):
        store.get_image_info("case_1")
    with pytest.raises(NotFound):
        store.remove_image("case_1")


@pytest.mark.parametrize("bad", ["../x", "/abs/x", ".hidden", "x" * 129, "a/b"])
def test_unsafe_ids_never_touch_the_folder(store: LocalDatastore, files: Path, bad: str) -> None:
    source = write_nifti(files / "img.nii.gz")
    with pytest.raises(BadRequest, match="letters, digits"):
        store.add_image(bad, source)
    for call in (store.get_image_path, store.get_image_info, store.remove_image):
        with pytest.raises(BadRequest):
            call(bad)
    with pytest.raises(BadRequest):
        store.save_label(bad, source)
    with pytest.raises(BadRequest):
        store.save_label("img", source, tag=bad)
    assert store.list_images() == []
    assert not (store.root.parent / "x.nii.gz").exists()


def test_unknown_ids_and_tags_are_not_found(store: LocalDatastore, files: Path) -> None:
    with pytest.raises(NotFound):
        store.get_image_path("nope")
    with pytest.raises(NotFound):
        store.save_label("nope", write_nifti(files / "l.nii.gz"))
    store.add_image("img", write_nifti(files / "i.nii.gz"))
    with pytest.raises(NotFound):
        store.get_label_info("img", "final")
    with pytest.raises(NotFound):
        store.remove_label("img", "custom")


def test_unknown_extensions_are_refused(store: LocalDatastore, files: Path) -> None:
    (files / "x.txt").write_text("hi")
    with pytest.raises(BadRequest, match="unsupported"):
        store.add_image("x", files / "x.txt")
    with pytest.raises(BadRequest, match="unsupported"):
        store.add_image("x", write_nifti(files / "y.nii.gz"), ext=".exe")


def test_an_existing_id_is_a_conflict_unless_replaced(store: LocalDatastore, files: Path) -> None:
    store.add_image("img", write_nifti(files / "a.nii", 1))
    with pytest.raises(Conflict):
        store.add_image("img", write_nifti(files / "b.nii.gz", 2))
    store.save_label("img", write_nifti(files / "l.nii.gz"))
    info = store.add_image("img", write_nifti(files / "b.nii.gz", 2), replace=True)
    assert info.name == "img.nii.gz" and info.labels == ["final"]
    assert [p.name for p in store.root.glob("img.*")] == ["img.nii.gz"]
    assert voxel(store.get_image_path("img")) == 2


def test_size_limits_are_payload_too_large(tmp_path: Path, files: Path) -> None:
    small, big = write_nifti(files / "s.nii"), write_nifti(files / "b.nii", shape=(40, 40, 40))
    limit = small.stat().st_size + 10
    ds = LocalDatastore(tmp_path / "ds", DatastoreLimits(max_image_bytes=limit, max_label_bytes=limit,
                                                         max_info_bytes=100))
    with pytest.raises(PayloadTooLarge) as caught:
        ds.add_image("big", big)
    assert caught.value.status == 413
    ds.add_image("img", small)
    with pytest.raises(PayloadTooLarge):
        ds.save_label("img", big)
    with pytest.raises(PayloadTooLarge):
        ds.save_label("img", small, label_info={"x": "y" * 200})
    assert ds.list_images() == ["img"]
    assert not list((ds.root / "labels").rglob("*.nii")) and not list(ds.root.rglob(".aiaa-tmp-*"))


def test_the_image_count_limit_is_a_conflict(tmp_path: Path, files: Path) -> None:
    ds = LocalDatastore(tmp_path / "ds", DatastoreLimits(max_images=2))
    for name in ("a", "b"):
        ds.add_image(name, write_nifti(files / f"{name}.nii.gz"))
    with pytest.raises(Conflict, match="full") as caught:
        ds.add_image("c", write_nifti(files / "c.nii.gz"))
    assert caught.value.status == 409
    ds.add_image("a", write_nifti(files / "a.nii.gz", 3), replace=True)  # replacing does not count
    ds.remove_image("b")
    ds.add_image("c", write_nifti(files / "c.nii.gz"))
    assert ds.list_images() == ["a", "c"]


def test_bad_client_ids_and_info_are_refused(store: LocalDatastore, files: Path) -> None:
    source = write_nifti(files / "i.nii.gz")
    with pytest.raises(BadRequest, match="client id"):
        store.add_image("i", source, client_id="x" * 300)
    with pytest.raises(BadRequest, match="JSON object"):
        store.add_image("i", source, info=["not", "a", "dict"])  # type: ignore[arg-type]
    with pytest.raises(BadRequest, match="not JSON"):
        store.add_image("i", source, info={"x": object()})

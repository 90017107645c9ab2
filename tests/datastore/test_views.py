from __future__ import annotations

import json
from pathlib import Path

from aiaa_server.datastore import LocalDatastore
from tests.datastore.conftest import FakeClock, write_nifti


def fill(store: LocalDatastore, files: Path) -> None:
    for name in ("b", "a", "c"):
        store.add_image(name, write_nifti(files / f"{name}.nii.gz"), info={"site": name})
    store.save_label("a", write_nifti(files / "l.nii.gz"), client_id="ann", label_info={"note": "ok"})
    store.save_label("b", write_nifti(files / "l.nii.gz"), "original", model="spleen")
    store.save_label("a", write_nifti(files / "l.nii.gz"), "original", model="spleen")


def test_stats_shape(store: LocalDatastore, files: Path) -> None:
    fill(store, files)
    assert store.stats().model_dump() == {
        "total": 3, "completed": 1, "label_tags": {"final": 1, "original": 2}, "train": ["a"], "ready": ["b", "c"],
    }


def test_train_list_shape(store: LocalDatastore, files: Path, clock: FakeClock) -> None:
    fill(store, files)
    (item,) = [entry.model_dump() for entry in store.datalist()]
    assert item["image"] == str(store.root / "a.nii.gz")
    assert item["label"] == str(store.root / "labels" / "final" / "a.nii.gz")
    assert item["meta"]["image"]["site"] == "a" and item["meta"]["image"]["name"] == "a.nii.gz"
    label = item["meta"]["label"]
    assert (label["note"], label["client_id"], label["name"], label["ts"]) == ("ok", "ann", "a.nii.gz", int(clock.now))
    assert label["checksum"].startswith("SHA256:")


def test_all_shape_is_monai_labels(store: LocalDatastore, files: Path) -> None:
    fill(store, files)
    data = json.loads(store.json().model_dump_json())
    assert set(data) == {"name", "description", "images_dir", "labels_dir", "objects"}
    assert (data["name"], data["images_dir"], data["labels_dir"]) == ("ds", ".", "labels")
    assert sorted(data["objects"]) == ["a", "b", "c"]
    a = data["objects"]["a"]
    assert a["image"]["ext"] == ".nii.gz" and a["image"]["info"]["name"] == "a.nii.gz"
    assert "path" not in a["image"]["info"]
    assert sorted(a["labels"]) == ["final", "original"]
    assert a["labels"]["original"] == {"ext": ".nii.gz", "info": a["labels"]["original"]["info"]}
    assert a["labels"]["original"]["info"]["model"] == "spleen"
    assert data["objects"]["c"]["labels"] == {}


def test_an_empty_datastore(store: LocalDatastore) -> None:
    assert store.stats().model_dump() == {"total": 0, "completed": 0, "label_tags": {}, "train": [], "ready": []}
    assert store.datalist() == [] and store.json().objects == {}

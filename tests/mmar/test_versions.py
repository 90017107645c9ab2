"""Model versions on disk: numbering, the serving pointer, atomic appearance, bad names and numbers."""

from __future__ import annotations

from pathlib import Path

import pytest

from aiaa_server.errors import BadRequest, NotFound
from aiaa_server.mmar.versions import ModelVersions


def candidate(versions: ModelVersions, name: str, payload: str) -> Path:
    folder = versions.staging_dir(name)
    (folder / "config").mkdir(parents=True)
    (folder / "config" / "config_aiaa.json").write_text(payload)
    return folder


def test_versions_are_numbered_in_order_with_their_metrics(tmp_path: Path) -> None:
    versions = ModelVersions(tmp_path)
    first = versions.add("seg", candidate(versions, "seg", "a"), {"best_dice": 0.5})
    second = versions.add("seg", candidate(versions, "seg", "b"), {"best_dice": 0.7})
    assert (first.version, second.version) == (1, 2)
    assert [v.metrics["best_dice"] for v in versions.list("seg")] == [0.5, 0.7]
    assert (Path(second.path) / "config" / "config_aiaa.json").read_text() == "b"
    assert not [p for p in versions.folder("seg").iterdir() if p.name.startswith(".staging-")]


def test_the_serving_pointer_defaults_to_the_original_and_names_only_existing_versions(tmp_path: Path) -> None:
    versions = ModelVersions(tmp_path)
    assert versions.serving("seg") == 0 and versions.list("seg") == []
    versions.add("seg", candidate(versions, "seg", "a"))
    versions.set_serving("seg", 1)
    assert versions.serving("seg") == 1
    with pytest.raises(NotFound):
        versions.set_serving("seg", 2)
    assert versions.serving("seg") == 1
    versions.set_serving("seg", 0)
    assert versions.serving("seg") == 0


def test_a_corrupt_pointer_means_the_original(tmp_path: Path) -> None:
    versions = ModelVersions(tmp_path)
    versions.folder("seg").mkdir(parents=True)
    for garbage in ("{", '{"version": -3}', '{"version": "1"}', "[]"):
        (versions.folder("seg") / "serving.json").write_text(garbage)
        assert versions.serving("seg") == 0


def test_leftover_candidates_of_a_killed_job_are_cleaned(tmp_path: Path) -> None:
    versions = ModelVersions(tmp_path)
    candidate(versions, "seg", "half written")
    versions.clean_staging("seg")
    assert list(versions.folder("seg").iterdir()) == []
    assert versions.list("seg") == []


@pytest.mark.parametrize("name", ["../x", "", ".hidden", "a/b"])
def test_unsafe_model_names_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(BadRequest):
        ModelVersions(tmp_path).folder(name)


def test_serving_figures_follow_the_pointer_and_a_removed_model(tmp_path: Path) -> None:
    import shutil

    versions = ModelVersions(tmp_path)
    assert versions.serving_figures("seg") == (0, None)
    versions.add("seg", candidate(versions, "seg", "a"), {"best_dice": 0.5})
    versions.add("seg", candidate(versions, "seg", "b"), {"best_dice": 0.75})
    versions.set_serving("seg", 1)
    assert versions.serving_figures("seg") == (1, 0.5)
    versions.set_serving("seg", 2)
    assert versions.serving_figures("seg") == (2, 0.75)
    assert versions.serving_figures("seg") == (2, 0.75)  # from the cache: same pointer file
    shutil.rmtree(tmp_path / "seg")  # what re-uploading a model through the admin API does
    assert versions.serving_figures("seg") == (0, None)

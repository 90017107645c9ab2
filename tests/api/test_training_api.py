"""Learning from saved labels end to end on a real server: labelled images through the datastore, a CPU training
job from a weak model, a promoted version that inference then uses, and a job on corrupted labels that is not
promoted; versions listed and rolled back through the admin API."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from aiaa_server.imaging.formats import ImageFormat
from aiaa_server.imaging.io import decode_result
from tests.support.bundles import write_bundle, write_train_config
from tests.support.server import LiveServer, start_server
from tests.support.trainable import ball_volume, write_trainable_mmar
from tests.support.volumes import dice, lps_affine, save_nifti

MODEL = "weak_seg"
BUNDLE = "spleen_bundle"
JOB_GUARD_S = 900  # a hung job fails the test instead of hanging it; not a speed check
TRAIN = {"max_epochs": 60, "time_budget_s": 45, "learning_rate": 0.01, "val_split": 0.25}
AFFINE = lps_affine((1.5, 1.5, 2.0))


@pytest.fixture(scope="module")
def trainer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, dict[str, np.ndarray], Path]]:
    root = tmp_path_factory.mktemp("train")
    write_trainable_mmar(root / "models" / MODEL)
    write_train_config(write_bundle(root / "models" / BUNDLE, "spleen_ct_segmentation", small=True, seed=5),
                       learning_rate=0.01)
    rng = np.random.default_rng(3)
    truths = {}
    with start_server(root / "ws", ["--no-bundled_models", "--models", str(root / "models")]) as live, \
            live.client() as client:
        for index in range(8):
            image, mask = ball_volume(rng)
            case = f"ball_{index}"
            truths[case] = mask
            path = save_nifti(root / f"{case}.nii.gz", image, AFFINE)
            with open(path, "rb") as handle:
                assert client.put("/datastore/", params={"image": case}, data={"params": "{}"},
                                  files={"file": (path.name, handle)}).status_code == 200
            assert save_label(client, case, mask, root).status_code == 200
        yield live, truths, root


def save_label(client: httpx.Client, case: str, mask: np.ndarray, folder: Path) -> httpx.Response:
    path = save_nifti(folder / f"{case}_label.nii.gz", mask.astype(np.uint8), AFFINE)
    with open(path, "rb") as handle:
        return client.put("/datastore/label", params={"image": case}, data={"params": "{}"},
                          files={"label": (path.name, handle)})


def finished(client: httpx.Client, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + JOB_GUARD_S
    while time.monotonic() < deadline:
        status = client.get("/train/").json()
        if status["id"] == job_id and status["status"] not in ("SUBMITTED", "RUNNING"):
            return status
        time.sleep(2)
    raise AssertionError(f"training job {job_id} did not finish")


def mean_dice(client: httpx.Client, cases: list[str], truths: dict[str, np.ndarray], model: str = MODEL) -> float:
    scores = []
    for case in cases:
        answer = client.post(f"/infer/{model}", params={"image": case, "output": "image"}, data={"params": "{}"})
        assert answer.status_code == 200, answer.text
        mask, _ = decode_result(answer.content, ImageFormat.NIFTI_GZ)
        scores.append(dice(mask > 0, truths[case] > 0))
    return float(np.mean(scores))


def test_training_refuses_what_it_cannot_do(trainer: tuple[LiveServer, dict[str, np.ndarray], Path]) -> None:
    live, _, _ = trainer
    with live.client() as client:
        assert client.post("/train/absent", json={}).status_code == 404
        bad = client.post(f"/train/{MODEL}", json={"max_epochs": 0})
        assert bad.status_code == 400 and "max_epochs" in bad.json()["detail"]
        assert client.post(f"/train/{MODEL}", json={"learning_rate": "fast"}).status_code == 400
        assert client.put(f"/admin/model/{MODEL}/versions/99").status_code == 404


def test_a_bundle_trains_with_its_train_json_and_serves_the_promoted_weights(
        trainer: tuple[LiveServer, dict[str, np.ndarray], Path]) -> None:
    live, truths, _ = trainer
    with live.client() as client:
        before = mean_dice(client, sorted(truths), truths, BUNDLE)
        job = client.post(f"/train/{BUNDLE}", json={"max_epochs": 6, "val_split": 0.25}).json()
        done = finished(client, job["id"])
        assert done["status"] == "DONE", done
        result = done["result"]
        assert result["training_config"] == "configs/train.json"
        assert result["promoted"] and result["best_dice"] > result["baseline_dice"]
        assert client.get("/v1/models", params={"model": BUNDLE}).json()["trained_version"] == 1
        assert mean_dice(client, sorted(truths), truths, BUNDLE) > before
        rolled = client.put(f"/admin/model/{BUNDLE}/versions/0").json()
        assert rolled["serving"] == 0 and mean_dice(client, sorted(truths), truths, BUNDLE) == before


def test_a_better_version_is_promoted_and_a_worse_one_is_not(
        trainer: tuple[LiveServer, dict[str, np.ndarray], Path]) -> None:
    live, truths, root = trainer
    with live.client() as client:
        assert client.get("/train/", params={"check_if_running": "true"}).status_code == 404
        info = client.get("/info/").json()
        assert MODEL in info["trainers"]
        before = mean_dice(client, sorted(truths), truths)

        job = client.post(f"/train/{MODEL}", json=TRAIN).json()
        first = finished(client, job["id"])
        assert first["status"] == "DONE", first
        result = first["result"]
        assert result["promoted"] and result["version"] == 1 and result["best_dice"] > result["baseline_dice"]
        assert len(first["progress"]["epochs"]) >= 1
        listed = client.get(f"/admin/model/{MODEL}/versions").json()
        assert listed["serving"] == 1 and [v["version"] for v in listed["versions"]] == [1]
        shown = client.get("/v1/models", params={"model": MODEL}).json()
        assert shown["trained_version"] == 1 and shown["validation_dice"] == result["best_dice"]
        after = mean_dice(client, sorted(truths), truths)
        assert after > before  # inference runs the promoted weights

        val_ids = set(result["val_ids"])
        for case in sorted(set(truths) - val_ids):  # annotators saved wrong labels on the training images
            assert save_label(client, case, np.zeros_like(truths[case]), root).status_code == 200
        second = finished(client, client.post(f"/train/{MODEL}", json=TRAIN).json()["id"])
        assert second["status"] == "DONE" and not second["result"]["promoted"], second["result"]
        assert second["result"]["version"] == 2
        assert client.get(f"/admin/model/{MODEL}/versions").json()["serving"] == 1
        assert mean_dice(client, sorted(truths), truths) == after  # still the first trained version

        rolled = client.put(f"/admin/model/{MODEL}/versions/0").json()
        assert rolled["serving"] == 0
        assert mean_dice(client, sorted(truths), truths) == before
        assert "aiaa_training_jobs" in client.get("/metrics").text
        assert client.put(f"/admin/model/{MODEL}/versions/1").json()["serving"] == 1

        client.post(f"/train/{MODEL}", json=TRAIN)  # a third job, killed with the server
        while client.get("/train/").json()["status"] != "RUNNING":
            time.sleep(0.5)
    live.process.kill()  # kill -9 in the middle of a job
    live.process.wait()
    with start_server(live.workspace, ["--no-bundled_models", "--models", str(root / "models")],
                      log_path=root / "restart.log") as again, again.client() as client:
        shown = client.get("/v1/models", params={"model": MODEL}).json()
        assert shown["trained_version"] == 1 and mean_dice(client, sorted(truths), truths) == after
        assert client.get("/train/").status_code == 404
    versions = live.workspace / "models" / MODEL / "versions"
    assert sorted(p.name for p in versions.iterdir()) == ["1", "2", "serving.json"]



"""The job as the server runs it (a real `python -m aiaa_server.learning.job` process), and its failure paths
in this process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from aiaa_server.learning.job import EXIT_BAD_SPEC, EXIT_FAILED, EXIT_OK, main, run_job
from aiaa_server.learning.spec import TrainSpec, read_status
from tests.learning.conftest import TinySegNet, make_spec, served_dice, write_cases, write_spec
from tests.support.programs import add_program
from tests.support.volumes import lps_affine, save_nifti
from tests.support.waiting import until

REPO = Path(__file__).resolve().parents[2]
HANG_GUARD_S = 300  # only a hung job reaches it


def _start_job(spec: TrainSpec, root: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    log = (root / "job.log").open("wb")
    return subprocess.Popen([sys.executable, "-m", "aiaa_server.learning.job", str(write_spec(spec, root / "spec.json"))],
                            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)


def _job_log(root: Path) -> str:
    return (root / "job.log").read_text(errors="replace")


def test_job_fine_tunes_a_weakened_model_into_a_servable_candidate(training_root: Path) -> None:
    items = write_cases(training_root / "cases", 6)
    spec = make_spec(training_root, items)
    job = _start_job(spec, training_root)
    assert job.wait(timeout=HANG_GUARD_S) == 0, _job_log(training_root)
    status = read_status(spec.status_path)
    assert status is not None and status.state == "done", _job_log(training_root)
    assert status.baseline_dice is not None and status.best_dice is not None
    assert status.baseline_dice < status.best_dice
    assert status.epoch == len(status.epochs) >= 1 and status.finished is not None
    assert status.best_dice == max(record.val_dice for record in status.epochs)
    out = spec.output_dir
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "config/config_aiaa.json", "docs/README.md", "metrics.json", "models/model.ts"]
    assert not out.with_name(out.name + ".partial").exists()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["baseline_dice"] == status.baseline_dice and metrics["best_epoch"] == status.best_epoch
    assert metrics["train_ids"] == ["case0", "case1", "case2", "case3"] and metrics["val_ids"] == ["case4", "case5"]
    assert [record["epoch"] for record in metrics["epochs"]] == [record.epoch for record in status.epochs]
    val = items[-1]
    assert served_dice(spec.model_dir, val.image, val.label) == 0.0
    assert served_dice(out, val.image, val.label) > 0.5


def test_sigterm_stops_the_job_without_output(training_root: Path) -> None:
    spec = make_spec(training_root, write_cases(training_root / "cases", 4), max_epochs=1000, time_budget_s=None)
    job = _start_job(spec, training_root)
    try:
        until(lambda: (s := read_status(spec.status_path)) is not None and s.epoch >= 1 or job.poll() is not None,
              timeout=HANG_GUARD_S, interval=0.1)
        job.send_signal(signal.SIGTERM)
        assert job.wait(timeout=HANG_GUARD_S) == 0, _job_log(training_root)
    finally:
        if job.poll() is None:
            job.kill()
    status = read_status(spec.status_path)
    assert status is not None and status.state == "stopped", _job_log(training_root)
    assert "SIGTERM" in status.message and status.finished is not None
    assert not spec.output_dir.exists() and not spec.output_dir.with_name("candidate.partial").exists()


def test_job_on_corrupted_labels_still_finishes_with_dice_in_range(training_root: Path) -> None:
    spec = make_spec(training_root, write_cases(training_root / "cases", 4, seed=1, corrupt=True), max_epochs=2)
    job = _start_job(spec, training_root)
    assert job.wait(timeout=HANG_GUARD_S) == 0, _job_log(training_root)
    status = read_status(spec.status_path)
    assert status is not None and status.state == "done", _job_log(training_root)
    scores = [status.baseline_dice, status.best_dice, *(record.val_dice for record in status.epochs)]
    assert all(score is not None and 0.0 <= score <= 1.0 for score in scores)
    assert (spec.output_dir / "models" / "model.ts").is_file()


@pytest.mark.usefixtures("torch_threads")
def test_a_spent_time_budget_still_runs_one_epoch(training_root: Path) -> None:
    spec = make_spec(training_root, write_cases(training_root / "cases", 3), max_epochs=50, time_budget_s=1e-3,
                     val_count=1)
    assert run_job(spec) == EXIT_OK
    status = read_status(spec.status_path)
    assert status is not None and status.state == "done" and status.epoch == 1 and status.best_epoch == 1
    assert (spec.output_dir / "models" / "model.ts").is_file()


@pytest.mark.usefixtures("torch_threads")
def test_a_label_off_its_image_grid_fails_the_job(training_root: Path) -> None:
    items = write_cases(training_root / "cases", 3)
    save_nifti(items[1].label, np.zeros((48, 48, 30), np.uint8), lps_affine((2.0, 2.0, 2.0)))
    spec = make_spec(training_root, items, val_count=1)
    assert run_job(spec) == EXIT_FAILED
    status = read_status(spec.status_path)
    assert status is not None and status.state == "failed"
    assert "label of 'case1'" in status.message and "voxel grid" in status.message
    assert not spec.output_dir.exists()


@pytest.mark.usefixtures("torch_threads")
def test_a_model_without_torchscript_fails_the_job(training_root: Path) -> None:
    (training_root / "model" / "models" / "model.ts").unlink()
    add_program(training_root / "model", TinySegNet())
    spec = make_spec(training_root, write_cases(training_root / "cases", 2), val_count=1)
    assert run_job(spec) == EXIT_FAILED
    status = read_status(spec.status_path)
    assert status is not None and status.state == "failed" and "TorchScript" in status.message


@pytest.mark.usefixtures("torch_threads")
def test_an_existing_output_folder_fails_the_job_and_is_left_alone(training_root: Path) -> None:
    spec = make_spec(training_root, write_cases(training_root / "cases", 2), val_count=1)
    spec.output_dir.mkdir()
    (spec.output_dir / "keep").write_text("x")
    assert run_job(spec) == EXIT_FAILED
    status = read_status(spec.status_path)
    assert status is not None and status.state == "failed" and "already exists" in status.message
    assert (spec.output_dir / "keep").read_text() == "x"


def test_an_unreadable_spec_exits_2_without_status(tmp_path: Path) -> None:
    (tmp_path / "spec.json").write_text('{"model_name": "m"}')
    assert main([str(tmp_path / "spec.json")]) == EXIT_BAD_SPEC
    assert main([str(tmp_path / "missing.json")]) == EXIT_BAD_SPEC
    assert main([]) == EXIT_BAD_SPEC

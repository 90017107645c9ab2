"""The shared demo training loop: budget, learning-rate schedule, export, checkpoint/resume, export-only."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from aiaa_demo.training import (
    Recipe,
    check_export,
    config_pre_transforms,
    learning_rate,
    train_for,
    training_arguments,
)

MODELS = Path(__file__).resolve().parents[2] / "models"


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    """train_for sets the process's torch threads (--threads); later tests keep theirs."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _args(tmp_path: Path, *argv: str, minutes: float | None = 35.0, steps: int | None = None):
    parser = training_arguments("test", tmp_path, batch=2, minutes=minutes, steps=steps)
    return parser.parse_args(["--out", str(tmp_path / "out" / "model.ts"), *argv])


def _tiny_network() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(4, 1, 1))


class _Batches:
    """Random 8³ inputs and 0/1 targets; records the steps it was asked for."""

    def __init__(self) -> None:
        self.steps: list[int] = []

    def __call__(self, step: int, net: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor, str]:
        self.steps.append(step)
        x = torch.randn(2, 1, 8, 8, 8)
        return x, (x > 0).float(), ""


def test_step_budget_schedule_is_warmup_then_cosine_to_the_floor(tmp_path: Path) -> None:
    args = _args(tmp_path, "--warmup", "50", "--lr-floor", "4e-5", minutes=None, steps=2000)
    lrs = [learning_rate(args, step, elapsed_s=1e9) for step in range(2000)]  # time plays no part
    for step in (0, 25, 49):
        assert lrs[step] == pytest.approx(2e-3 * (step + 1) / 50)
    for step in (50, 700, 1999):  # 2 % floor of a 2e-3 peak, as the spleen demo's own recipe
        progress = (step - 50) / 1950
        assert lrs[step] == pytest.approx(2e-3 * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * progress))))
    assert max(lrs) == pytest.approx(2e-3) and lrs[-1] == pytest.approx(4e-5, rel=1e-3)


def test_short_step_budgets_shorten_the_warmup(tmp_path: Path) -> None:
    args = _args(tmp_path, "--warmup", "50", steps=20)
    assert learning_rate(args, 0, 0.0) == pytest.approx(2e-3 / 3)  # 20 // 10 + 1 warm-up steps
    assert learning_rate(args, 3, 0.0) == pytest.approx(2e-3)


def test_time_budget_schedule_follows_the_clock(tmp_path: Path) -> None:
    args = _args(tmp_path, "--minutes", "10", "--lr", "1e-3")
    assert learning_rate(args, 500, 0.0) == pytest.approx(1e-3)
    assert learning_rate(args, 0, 300.0) == pytest.approx((1e-3 + 5e-5) / 2)
    assert learning_rate(args, 0, 600.0) == pytest.approx(5e-5)


def test_train_for_runs_its_steps_exports_and_checkpoints(tmp_path: Path) -> None:
    args = _args(tmp_path, "--steps", "10", "--stop-after", "3", "--ckpt", str(tmp_path / "ckpt" / "net.pt"))
    batches = _Batches()
    train_for(_tiny_network, args, batches, (1, 1, 8, 8, 8), Recipe(check_shape=(2, 1, 16, 8, 24)))
    assert batches.steps == [0, 1, 2]
    exported = torch.jit.load(str(args.out))
    assert exported(torch.zeros(1, 1, 8, 16, 8)).shape == (1, 1, 8, 16, 8)
    state = torch.load(args.ckpt, weights_only=True)
    assert set(state["net"]) == set(_tiny_network().state_dict()) and state["step"] == 3 and state["elapsed_s"] > 0


def test_train_for_is_seeded_and_resumes_from_its_checkpoint(tmp_path: Path, capsys) -> None:
    ckpt = tmp_path / "net.pt"
    first_run = _Batches()
    train_for(_tiny_network, _args(tmp_path, "--steps", "4", "--stop-after", "2", "--ckpt", str(ckpt), "--seed", "3"),
              first_run, (1, 1, 8, 8, 8))
    first = torch.load(ckpt, weights_only=True)
    batches = _Batches()
    train_for(_tiny_network, _args(tmp_path, "--steps", "4", "--ckpt", str(ckpt), "--seed", "3"), batches,
              (1, 1, 8, 8, 8))
    assert "resumed from" in capsys.readouterr().out
    assert first_run.steps == [0, 1] and batches.steps == [2, 3]  # the step count (and schedule) carries on
    resumed = torch.load(ckpt, weights_only=True)
    assert resumed["step"] == 4 and resumed["elapsed_s"] >= first["elapsed_s"]
    assert any(not torch.equal(first["net"][k], resumed["net"][k]) for k in first["net"])  # trained further


def test_init_starts_from_a_torchscript_model_of_the_same_network(tmp_path: Path, capsys) -> None:
    given = _tiny_network()
    torch.jit.trace(given, torch.zeros(1, 1, 8, 8, 8)).save(str(tmp_path / "given.ts"))
    args = _args(tmp_path, "--steps", "1", "--init", str(tmp_path / "given.ts"), "--lr", "0", "--lr-floor", "0")
    train_for(_tiny_network, args, _Batches(), (1, 1, 8, 8, 8))
    assert "initialised from" in capsys.readouterr().out
    x = torch.randn(1, 1, 8, 8, 8)
    with torch.no_grad():  # a learning rate of 0: the export is the given network
        torch.testing.assert_close(torch.jit.load(str(args.out))(x), given.eval()(x))


def test_export_only_exports_the_checkpoint_without_training(tmp_path: Path) -> None:
    net = _tiny_network()
    torch.save(net.state_dict(), tmp_path / "given.pt")
    args = _args(tmp_path, "--export-only", str(tmp_path / "given.pt"))
    batches = _Batches()
    train_for(_tiny_network, args, batches, (1, 1, 8, 8, 8))
    assert batches.steps == []
    x = torch.randn(1, 1, 8, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.load(str(args.out))(x), net.eval()(x))


def test_check_export_rejects_a_file_that_is_not_the_network(tmp_path: Path) -> None:
    path = tmp_path / "model.ts"
    torch.jit.trace(_tiny_network(), torch.zeros(1, 1, 8, 8, 8)).save(str(path))
    with pytest.raises(AssertionError, match="differs"):
        check_export(_tiny_network(), path, (1, 1, 8, 8, 8))


def test_config_pre_transforms_patch_args_by_class_name_suffix() -> None:
    config = MODELS / "demo_spleen_ct_segmentation" / "config" / "config_aiaa.json"
    patched = config_pre_transforms(config, {"Spacingd": {"keys": ["image", "label"], "mode": ["bilinear", "nearest"]}})
    names = [type(t).__name__ for t in patched]
    assert names[-2:] == ["Spacingd", "ScaleIntensityRanged"]
    assert list(patched[-2].keys) == ["image", "label"] and list(patched[-1].keys) == ["image"]
    assert np.allclose(patched[-2].spacing_transform.pixdim, 2.5)

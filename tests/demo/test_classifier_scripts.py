"""The demo classifier's scripts run end to end: a short training whose export the server's loader serves, and
the evaluation printing its figures through the server's pipeline."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import torch

MMAR = Path(__file__).resolve().parents[2] / "models" / "demo_spleen_presence_classification"


def test_train_then_evaluate_a_tiny_run(tmp_path: Path) -> None:
    staged = shutil.copytree(MMAR, tmp_path / MMAR.name, ignore=shutil.ignore_patterns("model.*"))
    out = staged / "models" / "model.ts"
    trained = subprocess.run(
        [sys.executable, str(MMAR / "commands" / "train.py"), "--num-train", "4", "--steps", "2", "--batch", "2",
         "--out", str(out)], check=False, capture_output=True, text=True, timeout=600)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "exported" in trained.stdout
    with torch.no_grad():
        assert torch.jit.load(str(out))(torch.zeros(3, 1, 64, 64, 32)).shape == (3, 2)
    evaluated = subprocess.run(
        [sys.executable, str(MMAR / "commands" / "evaluate.py"), "--num", "2", "--mmar", str(staged)],
        check=False, capture_output=True, text=True, timeout=600)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert "| accuracy |" in evaluated.stdout and "| ROC AUC |" in evaluated.stdout

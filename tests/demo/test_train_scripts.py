"""The interactive demos' training scripts run end to end: one step on painted real label maps, an export the
server's loader accepts, and a checkpoint that a second run resumes from."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from aiaa_demo.datasets import FETCH_HINT, available, default_cache

MODELS = Path(__file__).resolve().parents[2] / "models"
SCRIPTS = {"demo_deepgrow_3d": (1, 3, 64, 64, 64), "demo_deepgrow_2d": (1, 3, 128, 128),
           "demo_dextr3d_annotation": (1, 2, 64, 64, 64)}


@pytest.mark.parametrize("model", sorted(SCRIPTS))
def test_training_script_takes_a_step_exports_and_resumes(model: str, tmp_path: Path) -> None:
    if not {"colin27_aal", "colin27_brain"} <= set(available()):
        pytest.skip(f"colin27 volumes not in the dataset cache {default_cache()}: {FETCH_HINT}")
    out, ckpt = tmp_path / "model.ts", tmp_path / "ckpt.pt"
    command = [sys.executable, str(MODELS / model / "commands" / "train.py"), "--batch", "4", "--minutes", "30",
               "--out", str(out), "--ckpt", str(ckpt)]
    first = subprocess.run([*command, "--stop-after", "1"], check=False, capture_output=True, text=True,
                           timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "done: 1 steps" in first.stdout
    saved = torch.load(ckpt, weights_only=True)
    assert saved["step"] == 1
    shape = SCRIPTS[model]
    with torch.no_grad():
        assert torch.jit.load(str(out))(torch.zeros(shape)).shape == (1, 1, *shape[2:])
    second = subprocess.run([*command, "--stop-after", "2"], check=False, capture_output=True, text=True,
                            timeout=900)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resumed from" in second.stdout and "done: 2 steps" in second.stdout

#!/usr/bin/env python
"""Evaluate the DEMO DeepGrow 2D model through the server's own pipeline (load_mmar + pipeline.run).

For each held-out scene (``np.random.default_rng((seed, 1, i))``, never used in training) one object and
its largest axial slice are picked and clicked like a user would on that slice: first click at the most
interior pixel, each further click at the most interior pixel of the largest error region of the previous
result (foreground click in a false negative region, background click in a false positive one).  Every call
goes through the real transforms (DeepgrowSliced, guidance, PasteCropd …) on the scene's own 3D grid; the
result must be empty outside the slice, and Dice is measured on the slice after 1, 3 and 5 clicks.
Families: "heldout" = tori only (never seen in training), "train" = the training families on fresh scenes.

Example: python commands/evaluate.py --count 20 --seed 0 --families heldout
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

MMAR_DIR = Path(__file__).resolve().parents[1]
REPO_ROOT = MMAR_DIR.parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(MMAR_DIR / "commands"))

from aiaa_demo.evaluation import evaluate_cases, run_model
from aiaa_demo.synthetic_shapes import Clicks, Scene, dice, first_click, next_click
from aiaa_server.mmar.loader import LoadedModel


def click_session(model: LoadedModel, scene: Scene, mask: np.ndarray, clicks: int = 5) -> dict[str, float]:
    """Dice on the slice after 1, 3 and 5 simulated clicks, every call through `model.pipeline.run`."""
    z = int(np.argmax(mask.sum(axis=(0, 1))))
    truth = mask[..., z]
    state = Clicks()
    point = [*first_click(truth, spacing=scene.spacing[:2]), z]
    state.foreground.append(point)
    state.current = point
    scores: list[float] = []
    for _ in range(clicks):
        result = run_model(model, scene, state.params())
        assert not np.delete(result, z, axis=2).any(), "2D result must only fill the clicked slice"
        prediction = result[..., z]
        scores.append(dice(prediction, truth))
        correction = next_click(truth, prediction, spacing=scene.spacing[:2])
        if correction is None:
            scores.extend([scores[-1]] * (clicks - len(scores)))
            break
        is_fg, (x, y) = correction
        (state.foreground if is_fg else state.background).append([x, y, z])
        state.current = [x, y, z]
    return {"after 1 click": scores[0], "3 clicks": scores[2], "5 clicks": scores[4]}


if __name__ == "__main__":
    evaluate_cases(__doc__.split("\n")[0], MMAR_DIR, click_session)

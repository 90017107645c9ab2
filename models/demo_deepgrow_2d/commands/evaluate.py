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

from aiaa_demo.evaluation import click_session, evaluate_cases, run_model
from aiaa_demo.synthetic_shapes import Scene
from aiaa_server.mmar.loader import LoadedModel


def score_clicks(model: LoadedModel, scene: Scene, mask: np.ndarray, clicks: int = 5) -> dict[str, float]:
    """Dice on the object's largest axial slice after 1, 3 and 5 simulated clicks on it
    (`aiaa_demo.evaluation.click_session`), every call through `model.pipeline.run`."""
    z = int(np.argmax(mask.sum(axis=(0, 1))))
    scores = click_session(lambda params: run_model(model, scene, params), mask, clicks, spacing=scene.spacing,
                           on_slice=z).dice
    return {"after 1 click": scores[0], "3 clicks": scores[2], "5 clicks": scores[4]}


if __name__ == "__main__":
    evaluate_cases(__doc__.split("\n")[0], MMAR_DIR, score_clicks)

#!/usr/bin/env python
"""Evaluate the DEMO DExtr3D model through the server's own pipeline (load_mmar + pipeline.run).

For each held-out scene (``np.random.default_rng((seed, 1, i))``, never used in training) one object is
picked, its 6 true extreme points computed (no jitter), and the model is run in both input modes of
protocol 7.2: the full volume (server-side crop) and the client-cropped 128³ upload (points' box + 20 mm,
resampled, points scaled — what the Python client / Slicer without session send).  Dice is measured on the
grid that was sent.  Families: "heldout" = tori only (never seen in training), "train" = training families.

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

from train import client_crop

from aiaa_demo.evaluation import evaluate_cases, run_model
from aiaa_demo.synthetic_shapes import Scene, dice, extreme_points
from aiaa_server.mmar.loader import LoadedModel

MIN_OBJECT_MM3 = 1500.0  # the synthetic objects evaluated (as the first training runs used)


def annotate_both_ways(model: LoadedModel, scene: Scene, mask: np.ndarray) -> dict[str, float]:
    """Dice from the 6 true extreme points: full volume (server-side crop) and client-cropped 128³ upload."""
    points = extreme_points(mask)
    crop_scene, crop_mask, crop_points = client_crop(scene, mask, points)
    return {
        "full volume": dice(run_model(model, scene, {"points": points}), mask),
        "client-cropped 128^3": dice(run_model(model, crop_scene, {"points": crop_points}), crop_mask),
    }


if __name__ == "__main__":
    evaluate_cases(__doc__.split("\n")[0], MMAR_DIR, annotate_both_ways, MIN_OBJECT_MM3)

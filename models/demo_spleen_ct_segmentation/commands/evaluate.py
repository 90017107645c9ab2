#!/usr/bin/env python
"""Evaluate the DEMO spleen model on fresh, held-out synthetic phantoms.

Each phantom goes through the server's own pipeline (``load_mmar`` + ``pipeline.run``, the same transforms
as an HTTP request): the config's pre-transforms (EnsureChannelFirst, Orientation RAS, Spacing 2.5 mm,
ScaleIntensityRange), sliding-window inference with the TorchScript model, softmax, argmax, the largest
connected component of label 1, and the result restored to the ORIGINAL voxel grid, where its Dice against
the phantom's ground-truth spleen is measured.  Held-out phantom ``i`` uses
``np.random.default_rng((seed, 1, i))``; training uses ``(seed, 0, i)`` streams, so they are disjoint.

Example::

    python commands/evaluate.py --num 10 --seed 1000
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

MMAR_DIR = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(MMAR_DIR.parents[1]))

from aiaa_demo.evaluation import Case, evaluate_cases, run_model
from aiaa_demo.phantoms import ORGAN_LABELS, Phantom, make_abdomen_phantom
from aiaa_server.imaging.masks import dice
from aiaa_server.mmar.loader import LoadedModel


class HeldOutPhantoms:
    """Abdominal phantoms with their spleen as the truth (``--num 10 --seed 1000`` by default)."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.set_defaults(count=10, seed=1000, threads=2)

    def title(self, args: argparse.Namespace) -> str:
        return "held-out phantoms"

    def __call__(self, rng: np.random.Generator, args: argparse.Namespace) -> Case:
        phantom = make_abdomen_phantom(rng)
        layout = "LPS" if phantom.affine[0, 0] < 0 else "RAS"
        note = f"shape={phantom.shape} spacing={[round(s, 2) for s in phantom.spacing]} {layout}"
        return Case(phantom, phantom.labels == ORGAN_LABELS["spleen"], note)


def segment_spleen(model: LoadedModel, phantom: Phantom, truth: np.ndarray) -> dict[str, float]:
    """Dice of the model's spleen on the phantom's own grid."""
    return {"spleen": dice(run_model(model, phantom, {}), truth)}


if __name__ == "__main__":
    evaluate_cases(__doc__.split("\n")[0], MMAR_DIR, segment_spleen, cases=HeldOutPhantoms())

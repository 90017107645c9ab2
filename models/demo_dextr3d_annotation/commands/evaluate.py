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

import argparse
import sys
import time
from pathlib import Path

import numpy as np

MMAR_DIR = Path(__file__).resolve().parents[1]
REPO_ROOT = MMAR_DIR.parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(MMAR_DIR / "commands"))

from train import MIN_OBJECT_MM3, client_crop  # noqa: E402

from aiaa_server.demo_training import scene_objects  # noqa: E402
from aiaa_server.engines.torchscript import TorchScriptPool  # noqa: E402
from aiaa_server.imaging.formats import ImageFormat  # noqa: E402
from aiaa_server.imaging.io import Volume  # noqa: E402
from aiaa_server.inference.interactive import prepare_params  # noqa: E402
from aiaa_server.inference.tensors import volume_to_tensor  # noqa: E402
from aiaa_server.mmar.loader import LoadedModel, load_mmar  # noqa: E402
from aiaa_server.synthetic_shapes import HELDOUT_FAMILIES, TRAIN_FAMILIES, Scene, dice, extreme_points  # noqa: E402

FAMILIES = {"heldout": HELDOUT_FAMILIES, "train": TRAIN_FAMILIES}


def annotate(model: LoadedModel, scene: Scene, points: list[list[int]]) -> np.ndarray:
    params = prepare_params(model.config, {"points": points})
    volume = Volume(scene.image, scene.affine, ImageFormat.NIFTI_GZ)
    output = model.pipeline.run({**params, "image": volume_to_tensor(volume)})
    return np.asarray(output.image) > 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--families", choices=sorted(FAMILIES), default="heldout")
    args = parser.parse_args()
    model = load_mmar(MMAR_DIR, TorchScriptPool())
    full, cropped = [], []
    started = time.monotonic()
    for i in range(args.count):
        rng = np.random.default_rng((args.seed, 1, i))
        scene, (label,) = scene_objects(rng, 1, MIN_OBJECT_MM3, FAMILIES[args.families])
        mask = scene.mask(label)
        points = extreme_points(mask)
        full.append(dice(annotate(model, scene, points), mask))
        crop_scene, crop_mask, crop_points = client_crop(scene, mask, points)
        cropped.append(dice(annotate(model, crop_scene, crop_points), crop_mask))
        print(f"case {i}: {scene.families[label - 1]} spacing={np.round(scene.spacing, 2).tolist()} "
              f"voxels={int(mask.sum())} dice full={full[-1]:.3f} client-cropped={cropped[-1]:.3f}", flush=True)
    print(f"{args.families} families, {args.count} cases, seed {args.seed}, {time.monotonic() - started:.0f} s: "
          f"mean Dice full volume {np.mean(full):.3f} (median {np.median(full):.3f}), "
          f"client-cropped 128^3 {np.mean(cropped):.3f} (median {np.median(cropped):.3f})")


if __name__ == "__main__":
    main()

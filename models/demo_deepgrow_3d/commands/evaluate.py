#!/usr/bin/env python
"""Evaluate the DEMO DeepGrow 3D model through the server's own pipeline (load_mmar + pipeline.run).

For each held-out scene (``np.random.default_rng((seed, 1, i))``, never used in training) one object is
picked and clicked like a user would: first click at the object's most interior voxel, each further click
at the most interior voxel of the largest error region of the previous result (foreground click in a false
negative region, background click in a false positive one).  Every call goes through the real transforms
(DeepgrowCropd, guidance, PasteCropd …) on the scene's own grid; Dice is measured on that grid after 1, 3
and 5 clicks.  Families: "heldout" = tori only (never seen in training), "train" = the training families on
fresh scenes.

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

from aiaa_server.demo_training import random_scene  # noqa: E402
from aiaa_server.engines.torchscript import TorchScriptPool  # noqa: E402
from aiaa_server.imaging.formats import ImageFormat  # noqa: E402
from aiaa_server.imaging.io import Volume  # noqa: E402
from aiaa_server.inference.interactive import prepare_params  # noqa: E402
from aiaa_server.inference.tensors import volume_to_tensor  # noqa: E402
from aiaa_server.mmar.loader import LoadedModel, load_mmar  # noqa: E402
from aiaa_server.synthetic_shapes import (  # noqa: E402
    HELDOUT_FAMILIES,
    TRAIN_FAMILIES,
    Clicks,
    Scene,
    dice,
    first_click,
    next_click,
    pick_object,
)

FAMILIES = {"heldout": HELDOUT_FAMILIES, "train": TRAIN_FAMILIES}


def click_session(model: LoadedModel, scene: Scene, mask: np.ndarray, clicks: int = 5) -> list[float]:
    """Dice after each of `clicks` simulated clicks, every call through `model.pipeline.run`."""
    volume = Volume(scene.image, scene.affine, ImageFormat.NIFTI_GZ)
    state = Clicks()
    point = first_click(mask, spacing=scene.spacing)
    state.foreground.append(point)
    state.current = point
    scores: list[float] = []
    prediction = np.zeros_like(mask)
    for _ in range(clicks):
        params = prepare_params(model.config, state.params())
        output = model.pipeline.run({**params, "image": volume_to_tensor(volume)})
        prediction = np.asarray(output.image) > 0
        scores.append(dice(prediction, mask))
        correction = next_click(mask, prediction, spacing=scene.spacing)
        if correction is None:
            scores.extend([scores[-1]] * (clicks - len(scores)))
            break
        is_fg, point = correction
        (state.foreground if is_fg else state.background).append(point)
        state.current = point
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--families", choices=sorted(FAMILIES), default="heldout")
    args = parser.parse_args()
    model = load_mmar(MMAR_DIR, TorchScriptPool())
    rows = []
    started = time.monotonic()
    for i in range(args.count):
        rng = np.random.default_rng((args.seed, 1, i))
        while True:
            scene = random_scene(rng, FAMILIES[args.families])
            label = pick_object(rng, scene, min_voxels=int(2000 / np.prod(scene.spacing)))
            if label is not None:
                break
        scores = click_session(model, scene, scene.mask(label))
        rows.append(scores)
        print(f"case {i}: {scene.families[label - 1]} spacing={np.round(scene.spacing, 2).tolist()} "
              f"dice@1/3/5 = {scores[0]:.3f} {scores[2]:.3f} {scores[4]:.3f}", flush=True)
    table = np.asarray(rows)
    print(f"{args.families} families, {args.count} cases, seed {args.seed}, {time.monotonic() - started:.0f} s: "
          f"mean Dice after 1 click {table[:, 0].mean():.3f}, 3 clicks {table[:, 2].mean():.3f}, "
          f"5 clicks {table[:, 4].mean():.3f} (median after 3: {np.median(table[:, 2]):.3f})")


if __name__ == "__main__":
    main()

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
    """Dice on the slice after each of `clicks` simulated clicks, every call through `model.pipeline.run`."""
    volume = Volume(scene.image, scene.affine, ImageFormat.NIFTI_GZ)
    z = int(np.argmax(mask.sum(axis=(0, 1))))
    truth = mask[..., z]
    state = Clicks()
    point = [*first_click(truth, spacing=scene.spacing[:2]), z]
    state.foreground.append(point)
    state.current = point
    scores: list[float] = []
    for _ in range(clicks):
        params = prepare_params(model.config, state.params())
        output = model.pipeline.run({**params, "image": volume_to_tensor(volume)})
        result = np.asarray(output.image) > 0
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

#!/usr/bin/env python
"""Train the DEMO DExtr3D annotation model on synthetic shapes (aiaa_server.synthetic_shapes).

Every training sample goes through the MMAR's own pre-transforms, built from config/config_aiaa.json with
the server's component loader, so training sees exactly what serving sees:

1. a random scene (train shape families only: ellipsoid, blob, tube, box; the torus family is held out),
   random spacing and RAS/LPS layout; a random object of it;
2. its six extreme points (one on each bounding-box face, nearest the face centre), jittered by up to 2
   voxels like a user's clicks;
3. with probability 0.3 the client-side crop of protocol 7.2 mode 1 first (points' box + 20 mm, resampled
   to 128³, points scaled), as the Python client / Slicer without session upload it;
4. ExtremePointsCropd (box + 20 mm → 64³) + ScaleIntensityRanged + AddGuidanceChannelsd (points heat-map,
   σ 1.5 voxels of the 64³ grid = 3 voxels of a 128³ roi, rescaled to [-1, 1]); the label is sampled on the
   same grid; Dice + BCE loss.

Each scene yields two samples (two objects);
scene ``i`` of step ``s`` uses ``np.random.default_rng((seed, 0, s, i))``; evaluation uses ``(seed, 1, i)``.
The network is a MONAI UNet (16-32-64-128, 3 strided levels, 1 residual unit, ~0.6 M parameters), exported
with torch.jit.trace to models/model.ts (written atomically, also every --export-every seconds).

Example: commands/train.sh --minutes 35 --seed 0
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

MMAR_DIR = Path(__file__).resolve().parents[1]
REPO_ROOT = MMAR_DIR.parents[1]
sys.path.insert(0, str(REPO_ROOT))

from aiaa_server.imaging.formats import ImageFormat  # noqa: E402
from aiaa_server.imaging.io import Volume  # noqa: E402
from aiaa_server.inference.click_transforms import (  # noqa: E402
    GEOMETRY_KEY,
    box_matrix,
    dextr_box,
    sample_grid,
    spacing_of,
)
from aiaa_server.inference.tensors import volume_to_tensor  # noqa: E402
from aiaa_server.mmar.components import build_component  # noqa: E402
from aiaa_server.mmar.config import ComponentConfig  # noqa: E402
from aiaa_server.synthetic_shapes import TRAIN_FAMILIES, Scene, extreme_points, make_scene, pick_object  # noqa: E402

CONFIG = MMAR_DIR / "config" / "config_aiaa.json"
CLIENT_ROI = 128
CLIENT_PAD_MM = 20.0


def build_network() -> torch.nn.Module:
    from monai.networks.nets import UNet

    return UNet(spatial_dims=3, in_channels=2, out_channels=1, channels=(16, 32, 64, 128), strides=(2, 2, 2),
                num_res_units=1)


def pre_transforms() -> list[Any]:
    """The config's pre-transforms, built by the server's component loader."""
    config = json.loads(CONFIG.read_text())
    return [build_component(ComponentConfig(name=e["name"], args=e.get("args", {}))) for e in config["pre_transforms"]]


def random_scene(rng: np.random.Generator, families: tuple[str, ...] = TRAIN_FAMILIES):
    if rng.random() < 0.6:
        spacing = np.full(3, rng.uniform(1.8, 2.5))
    else:
        spacing = np.array([rng.uniform(1.1, 1.8)] * 2 + [rng.uniform(1.5, 3.0)])
    fov = np.array([rng.uniform(130, 170)] * 2 + [rng.uniform(100, 140)])
    shape = tuple(int(math.ceil(f / s)) for f, s in zip(fov, spacing))
    return make_scene(rng, shape=shape, spacing=spacing, families=families, size_mm=(9.0, 38.0))


def client_crop(scene: Scene, mask: np.ndarray, points: list[list[int]]) -> tuple[Scene, np.ndarray, list[list[int]]]:
    """What a DExtr3D client does before uploading (protocol 7.2 mode 1): points' box + 20 mm → 128³."""
    lo, hi = dextr_box(np.asarray(points, dtype=np.float64), spacing_of(scene.affine), scene.image.shape,
                       CLIENT_PAD_MM)
    matrix = box_matrix(lo, hi, (CLIENT_ROI,) * 3)
    image = sample_grid(torch.from_numpy(scene.image)[None], matrix, (CLIENT_ROI,) * 3)[0].numpy()
    cropped = sample_grid(torch.from_numpy(mask.astype(np.float32))[None], matrix, (CLIENT_ROI,) * 3)[0].numpy()
    inverse = np.linalg.inv(matrix)
    scaled = [[int(round(v)) for v in inverse[:3, :3] @ np.asarray(p, dtype=np.float64) + inverse[:3, 3]]
              for p in points]
    crop_scene = Scene(image=image, labels=(cropped >= 0.5).astype(np.int16), affine=scene.affine @ matrix,
                       families=scene.families[:1])
    return crop_scene, cropped >= 0.5, [[int(np.clip(v, 0, CLIENT_ROI - 1)) for v in p] for p in scaled]


def scene_with_object(rng: np.random.Generator, families: tuple[str, ...] = TRAIN_FAMILIES) -> tuple[Scene, int]:
    while True:
        scene = random_scene(rng, families)
        label = pick_object(rng, scene, min_voxels=int(1500 / np.prod(scene.spacing)))
        if label is not None:
            return scene, label


def make_samples(rng: np.random.Generator, transforms: list[Any], count: int = 2
                 ) -> list[tuple[torch.Tensor, np.ndarray]]:
    """`count` samples (random objects) from one random scene."""
    scene, label = scene_with_object(rng)
    labels = [label] + [pick_object(rng, scene, min_voxels=int(1500 / np.prod(scene.spacing))) or label
                        for _ in range(count - 1)]
    return [make_sample(rng, transforms, scene, scene.mask(lab)) for lab in labels]


def make_sample(rng: np.random.Generator, transforms: list[Any], scene: Scene, mask: np.ndarray,
                client_cropped: float = 0.3) -> tuple[torch.Tensor, np.ndarray]:
    """(network input (2, 64, 64, 64), truth on the same grid)."""
    points = extreme_points(mask, rng, jitter=2)
    if rng.random() < client_cropped:
        scene, mask, points = client_crop(scene, mask, points)
    data: dict[str, Any] = {
        "image": volume_to_tensor(Volume(scene.image, scene.affine, ImageFormat.NIFTI_GZ)), "points": points,
    }
    for transform in transforms:
        data = transform(data)
    geometry = data[GEOMETRY_KEY]
    truth = sample_grid(torch.from_numpy(mask.astype(np.float32))[None], geometry.matrix, geometry.grid_shape)[0]
    return torch.as_tensor(data["image"]).float().as_subclass(torch.Tensor), (truth >= 0.5).numpy()


def loss_fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    probs = torch.sigmoid(logits)
    dims = tuple(range(1, logits.ndim))
    dice = 1 - (2 * (probs * target).sum(dims) + 1) / (probs.sum(dims) + target.sum(dims) + 1)
    return dice.mean() + torch.nn.functional.binary_cross_entropy_with_logits(logits, target)


def export(net: torch.nn.Module, path: Path, size: int = 64) -> None:
    net.eval()
    with torch.no_grad():
        traced = torch.jit.trace(net, torch.zeros(1, 2, size, size, size))
    tmp = path.with_suffix(".tmp")
    traced.save(str(tmp))
    os.replace(tmp, path)
    net.train()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=35.0, help="wall-clock training budget")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--export-every", type=float, default=300.0, help="seconds between model.ts exports")
    parser.add_argument("--ckpt", type=Path, default=None, help="state_dict to resume from / save to")
    parser.add_argument("--out", type=Path, default=MMAR_DIR / "models" / "model.ts")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    transforms = pre_transforms()
    net = build_network()
    if args.ckpt is not None and args.ckpt.exists():
        net.load_state_dict(torch.load(args.ckpt))
        print(f"resumed from {args.ckpt}", flush=True)
    optimizer = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    budget = args.minutes * 60.0
    started = last_export = time.monotonic()
    step, running = 0, None
    while (elapsed := time.monotonic() - started) < budget:
        for group in optimizer.param_groups:  # cosine decay over the time budget
            group["lr"] = 5e-5 + (args.lr - 5e-5) * 0.5 * (1 + math.cos(math.pi * elapsed / budget))
        rngs = [np.random.default_rng((args.seed, 0, step, i)) for i in range(args.batch // 2)]
        samples = [sample for rng in rngs for sample in make_samples(rng, transforms)]
        batch = torch.stack([s[0] for s in samples])
        target = torch.stack([torch.from_numpy(s[1].astype(np.float32))[None] for s in samples])
        loss = loss_fn(net(batch), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        value = loss.item()
        running = value if running is None else 0.95 * running + 0.05 * value
        step += 1
        if step % 20 == 0:
            print(f"step {step} t={elapsed / 60:.1f}min loss={running:.4f}", flush=True)
        if time.monotonic() - last_export > args.export_every:
            export(net, args.out)
            if args.ckpt is not None:
                torch.save(net.state_dict(), args.ckpt)
            last_export = time.monotonic()
    export(net, args.out)
    if args.ckpt is not None:
        torch.save(net.state_dict(), args.ckpt)
    print(f"done: {step} steps, {(time.monotonic() - started) / 60:.1f} min, model {args.out} "
          f"({args.out.stat().st_size / 1e6:.1f} MB)", flush=True)


if __name__ == "__main__":
    main()

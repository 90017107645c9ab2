#!/usr/bin/env python
"""Train the DEMO DeepGrow 2D model on synthetic shapes (aiaa_server.synthetic_shapes).

Every training sample goes through the MMAR's own pre-transforms (DeepgrowSliced 128² at 1.5 mm,
ScaleIntensityRanged), built from config/config_aiaa.json with the server's component loader, so training
sees exactly what serving sees:

1. a random scene (train shape families only: ellipsoid, blob, tube, box; the torus family is held out),
   random spacing and RAS/LPS layout; a random object of it;
2. a random axial slice (array axis 2) through the object, the first click at the object's most interior
   pixels of that slice (2D distance transform, jittered);
3. DeepgrowSliced + ScaleIntensityRanged from the config; the label slice is sampled on the same grid;
4. 0–4 rounds of simulated corrections with the current network (DeepGrow training): predict, then click
   the most interior voxel of the largest error region (fg click in a false negative, bg click in a false
   positive); then a training step (Dice + BCE) with the final clicks.

Each scene yields four samples (random objects and slices);
scene ``i`` of step ``s`` uses ``np.random.default_rng((seed, 0, s, i))``; evaluation uses ``(seed, 1, i)``.
The network is a 2D MONAI UNet (16-32-64-128, 3 strided levels, 1 residual unit, ~0.2 M parameters), exported
with torch.jit.trace to models/model.ts (written atomically, also every --export-every seconds).

Example: commands/train.sh --minutes 15 --seed 0
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
    GUIDANCE_KEY,
    AddGuidanceChannelsd,
    guidance_channel,
    sample_grid,
)
from aiaa_server.inference.tensors import volume_to_tensor  # noqa: E402
from aiaa_server.mmar.components import build_component  # noqa: E402
from aiaa_server.mmar.config import ComponentConfig  # noqa: E402
from aiaa_server.synthetic_shapes import (  # noqa: E402
    TRAIN_FAMILIES,
    Scene,
    first_click,
    make_scene,
    next_click,
    pick_object,
)

CONFIG = MMAR_DIR / "config" / "config_aiaa.json"
CROP = "DeepgrowSliced"
Sample = tuple[torch.Tensor, np.ndarray, list[np.ndarray], list[np.ndarray]]


def build_network() -> torch.nn.Module:
    from monai.networks.nets import UNet

    return UNet(spatial_dims=2, in_channels=3, out_channels=1, channels=(16, 32, 64, 128), strides=(2, 2, 2),
                num_res_units=1)


def crop_transforms(train_size: int) -> tuple[list[Any], AddGuidanceChannelsd]:
    """The config's pre-transforms up to the guidance step (crop size overridden), and the guidance step."""
    config = json.loads(CONFIG.read_text())
    built: list[Any] = []
    guidance: AddGuidanceChannelsd | None = None
    for entry in config["pre_transforms"]:
        args = dict(entry.get("args", {}))
        if entry["name"].endswith(CROP) and train_size:
            args["spatial_size"] = [train_size] * 2
        component = build_component(ComponentConfig(name=entry["name"], args=args))
        if isinstance(component, AddGuidanceChannelsd):
            guidance = component
        else:
            built.append(component)
    assert guidance is not None, "config has no AddGuidanceChannelsd"
    return built, guidance


def random_scene(rng: np.random.Generator, families: tuple[str, ...] = TRAIN_FAMILIES):
    if rng.random() < 0.6:
        spacing = np.full(3, rng.uniform(1.8, 2.5))
    else:
        spacing = np.array([rng.uniform(1.1, 1.8)] * 2 + [rng.uniform(1.5, 3.0)])
    fov = np.array([rng.uniform(130, 170)] * 2 + [rng.uniform(100, 140)])
    shape = tuple(int(math.ceil(f / s)) for f, s in zip(fov, spacing))
    return make_scene(rng, shape=shape, spacing=spacing, families=families, size_mm=(9.0, 38.0))


def scene_with_object(rng: np.random.Generator, families: tuple[str, ...] = TRAIN_FAMILIES) -> tuple[Scene, int]:
    while True:
        scene = random_scene(rng, families)
        label = pick_object(rng, scene, min_voxels=int(2000 / np.prod(scene.spacing)))
        if label is not None:
            return scene, label


def make_samples(rng: np.random.Generator, transforms: list[Any], count: int = 2) -> list[Sample]:
    """`count` samples (random objects) from one random scene."""
    scene, label = scene_with_object(rng)
    labels = [label] + [pick_object(rng, scene, min_voxels=int(2000 / np.prod(scene.spacing))) or label
                        for _ in range(count - 1)]
    return [make_sample(rng, transforms, scene, scene.mask(lab)) for lab in labels]


def make_sample(rng: np.random.Generator, transforms: list[Any], scene: Scene, mask: np.ndarray) -> Sample:
    """(normalised image slice crop (1, S, S), truth crop, fg clicks, bg clicks) in crop pixel coordinates."""
    areas = mask.sum(axis=(0, 1))
    slices = np.nonzero(areas >= max(8, 0.2 * areas.max()))[0]
    z = int(rng.choice(slices))
    x, y = first_click(mask[..., z], rng, jitter=0.4, spacing=scene.spacing[:2])
    click = [x, y, z]
    data: dict[str, Any] = {
        "image": volume_to_tensor(Volume(scene.image, scene.affine, ImageFormat.NIFTI_GZ)),
        "foreground": [click], "background": [], "current_point": [click],
    }
    for transform in transforms:
        data = transform(data)
    geometry = data[GEOMETRY_KEY]
    source = torch.from_numpy(mask[..., z].astype(np.float32))[None]
    truth = sample_grid(source, geometry.matrix, geometry.grid_shape)[0]
    image = torch.as_tensor(data["image"]).float().as_subclass(torch.Tensor)
    return image, (truth >= 0.5).numpy(), list(data[GUIDANCE_KEY]["foreground"]), []


def network_input(image: torch.Tensor, fg: list[np.ndarray], bg: list[np.ndarray], sigma: float) -> torch.Tensor:
    shape = tuple(image.shape[1:])
    maps = [guidance_channel(np.asarray(c).reshape(-1, len(shape)), shape, sigma) for c in (fg, bg)]
    return torch.cat([image, torch.from_numpy(np.stack(maps))], dim=0)


def add_corrections(net: torch.nn.Module, samples: list[list[Any]], rounds: int, sigma: float) -> None:
    """DeepGrow-style simulated interaction: `rounds` corrective clicks from the current network."""
    for _ in range(rounds):
        batch = torch.stack([network_input(s[0], s[2], s[3], sigma) for s in samples])
        with torch.no_grad():
            predictions = (net(batch)[:, 0] > 0).numpy()
        for sample, prediction in zip(samples, predictions):
            click = next_click(sample[1], prediction)
            if click is not None:
                (sample[2] if click[0] else sample[3]).append(np.asarray(click[1], dtype=np.float64))


def loss_fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    probs = torch.sigmoid(logits)
    dims = tuple(range(1, logits.ndim))
    dice = 1 - (2 * (probs * target).sum(dims) + 1) / (probs.sum(dims) + target.sum(dims) + 1)
    return dice.mean() + torch.nn.functional.binary_cross_entropy_with_logits(logits, target)


def export(net: torch.nn.Module, path: Path, size: int = 128) -> None:
    net.eval()
    with torch.no_grad():
        traced = torch.jit.trace(net, torch.zeros(1, 3, size, size))
    tmp = path.with_suffix(".tmp")
    traced.save(str(tmp))
    os.replace(tmp, path)
    net.train()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=35.0, help="wall-clock training budget")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=0, help="training crop size (pixels per side; 0: the config's)")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--export-every", type=float, default=300.0, help="seconds between model.ts exports")
    parser.add_argument("--ckpt", type=Path, default=None, help="state_dict to resume from / save to")
    parser.add_argument("--out", type=Path, default=MMAR_DIR / "models" / "model.ts")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    transforms, guidance = crop_transforms(args.size)
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
        rngs = [np.random.default_rng((args.seed, 0, step, i)) for i in range(args.batch // 4)]
        samples = [list(sample) for rng in rngs for sample in make_samples(rng, transforms, count=4)]
        rounds = 0 if rngs[0].random() < 0.3 else int(rngs[0].integers(1, 5))
        net.eval()
        add_corrections(net, samples, rounds, guidance.sigma)
        net.train()
        batch = torch.stack([network_input(s[0], s[2], s[3], guidance.sigma) for s in samples])
        target = torch.stack([torch.from_numpy(s[1].astype(np.float32))[None] for s in samples])
        loss = loss_fn(net(batch), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        value = loss.item()
        running = value if running is None else 0.95 * running + 0.05 * value
        step += 1
        if step % 20 == 0:
            print(f"step {step} t={elapsed / 60:.1f}min loss={running:.4f} rounds={rounds}", flush=True)
        if time.monotonic() - last_export > args.export_every:
            export(net, args.out, args.size or 128)
            if args.ckpt is not None:
                torch.save(net.state_dict(), args.ckpt)
            last_export = time.monotonic()
    export(net, args.out, args.size or 128)
    if args.ckpt is not None:
        torch.save(net.state_dict(), args.ckpt)
    print(f"done: {step} steps, {(time.monotonic() - started) / 60:.1f} min, model {args.out} "
          f"({args.out.stat().st_size / 1e6:.1f} MB)", flush=True)


if __name__ == "__main__":
    main()

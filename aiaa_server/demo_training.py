"""Shared pieces of the bundled demo models' training and evaluation scripts (models/*/commands/).

Each training script builds its samples through its MMAR's own pre-transforms (so training sees what serving
sees) and hands one function per step to `train_for`, which owns the time-budgeted loop: cosine learning rate
over the budget, periodic atomic TorchScript export, checkpoint/resume.  Each evaluation script hands a
function scoring one case to `evaluate_cases`, which owns the held-out scenes, the loop and the summary.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aiaa_server.engines.torchscript import TorchScriptPool
from aiaa_server.imaging.formats import ImageFormat
from aiaa_server.imaging.io import Volume
from aiaa_server.inference.click_transforms import AddGuidanceChannelsd, guidance_channel
from aiaa_server.inference.interactive import prepare_params
from aiaa_server.inference.tensors import volume_to_tensor
from aiaa_server.mmar.components import build_component
from aiaa_server.mmar.config import ComponentConfig
from aiaa_server.mmar.loader import LoadedModel, load_mmar
from aiaa_server.synthetic_shapes import (
    HELDOUT_FAMILIES,
    TRAIN_FAMILIES,
    Scene,
    make_scene,
    next_click,
    pick_object,
)

StepBatch = Callable[[int, torch.nn.Module], tuple[torch.Tensor, torch.Tensor, str]]
ScoreCase = Callable[[LoadedModel, Scene, np.ndarray], dict[str, float]]
EVALUATION_FAMILIES = {"heldout": HELDOUT_FAMILIES, "train": TRAIN_FAMILIES}


def training_arguments(description: str, mmar_dir: Path, batch: int) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--minutes", type=float, default=35.0, help="wall-clock training budget")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=batch)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--export-every", type=float, default=300.0, help="seconds between model.ts exports")
    parser.add_argument("--ckpt", type=Path, default=None, help="state_dict to resume from / save to")
    parser.add_argument("--out", type=Path, default=mmar_dir / "models" / "model.ts")
    return parser


def config_pre_transforms(config_path: Path, overrides: dict[str, dict[str, Any]] | None = None) -> list[Any]:
    """The MMAR's pre-transforms built by the server's component loader; `overrides` patch args by class
    name suffix (e.g. a smaller training crop)."""
    built = []
    for entry in json.loads(config_path.read_text())["pre_transforms"]:
        args = dict(entry.get("args", {}))
        for suffix, patch in (overrides or {}).items():
            if entry["name"].endswith(suffix):
                args.update(patch)
        built.append(build_component(ComponentConfig(name=entry["name"], args=args)))
    return built


def split_guidance(transforms: list[Any]) -> tuple[list[Any], AddGuidanceChannelsd]:
    """DeepGrow training adds guidance itself (clicks change during a step): take that transform out."""
    guidance = [t for t in transforms if isinstance(t, AddGuidanceChannelsd)]
    assert len(guidance) == 1, "config needs exactly one AddGuidanceChannelsd"
    return [t for t in transforms if t is not guidance[0]], guidance[0]


def random_scene(rng: np.random.Generator, families: tuple[str, ...] = TRAIN_FAMILIES) -> Scene:
    """A synthetic scene of random spacing (isotropic or thick-slice) covering ~15 cm."""
    if rng.random() < 0.6:
        spacing = np.full(3, rng.uniform(1.8, 2.5))
    else:
        spacing = np.array([rng.uniform(1.1, 1.8)] * 2 + [rng.uniform(1.5, 3.0)])
    fov = np.array([rng.uniform(130, 170)] * 2 + [rng.uniform(100, 140)])
    shape = tuple(int(math.ceil(f / s)) for f, s in zip(fov, spacing))
    return make_scene(rng, shape=shape, spacing=spacing, families=families, size_mm=(9.0, 38.0))


def scene_objects(rng: np.random.Generator, count: int, min_mm3: float,
                  families: tuple[str, ...] = TRAIN_FAMILIES) -> tuple[Scene, list[int]]:
    """A random scene and `count` labels of objects of at least `min_mm3` in it."""
    while True:
        scene = random_scene(rng, families)
        min_voxels = int(min_mm3 / np.prod(scene.spacing))
        label = pick_object(rng, scene, min_voxels=min_voxels)
        if label is not None:
            return scene, [label] + [pick_object(rng, scene, min_voxels=min_voxels) or label
                                     for _ in range(count - 1)]


def network_input(image: torch.Tensor, fg: list[np.ndarray], bg: list[np.ndarray], sigma: float) -> torch.Tensor:
    """DeepGrow input: image + foreground and background click heat-maps."""
    shape = tuple(image.shape[1:])
    maps = [guidance_channel(np.asarray(c).reshape(-1, len(shape)), shape, sigma) for c in (fg, bg)]
    return torch.cat([image, torch.from_numpy(np.stack(maps))], dim=0)


def add_corrections(net: torch.nn.Module, samples: list[list[Any]], rounds: int, sigma: float) -> None:
    """DeepGrow-style simulated interaction: `rounds` corrective clicks from the current network.

    Samples are `[image, truth, fg clicks, bg clicks]`; clicks are appended in place."""
    for _ in range(rounds):
        batch = torch.stack([network_input(s[0], s[2], s[3], sigma) for s in samples])
        with torch.no_grad():
            predictions = (net(batch)[:, 0] > 0).numpy()
        for sample, prediction in zip(samples, predictions):
            click = next_click(sample[1], prediction)
            if click is not None:
                (sample[2] if click[0] else sample[3]).append(np.asarray(click[1], dtype=np.float64))


def deepgrow_batch(net: torch.nn.Module, samples: list[list[Any]], rng: np.random.Generator,
                   sigma: float) -> tuple[torch.Tensor, torch.Tensor, str]:
    """0–4 rounds of simulated corrections (30 % none), then the network inputs and targets."""
    rounds = 0 if rng.random() < 0.3 else int(rng.integers(1, 5))
    net.eval()
    add_corrections(net, samples, rounds, sigma)
    net.train()
    batch = torch.stack([network_input(s[0], s[2], s[3], sigma) for s in samples])
    return batch, targets(samples), f"rounds={rounds}"


def targets(samples: list[Any]) -> torch.Tensor:
    return torch.stack([torch.from_numpy(s[1].astype(np.float32))[None] for s in samples])


def dice_bce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    probs = torch.sigmoid(logits)
    dims = tuple(range(1, logits.ndim))
    dice = 1 - (2 * (probs * target).sum(dims) + 1) / (probs.sum(dims) + target.sum(dims) + 1)
    return dice.mean() + torch.nn.functional.binary_cross_entropy_with_logits(logits, target)


def export_traced(net: torch.nn.Module, path: Path, example_shape: tuple[int, ...]) -> None:
    """TorchScript-trace `net` and replace `path` atomically (a server may be reading it)."""
    net.eval()
    with torch.no_grad():
        traced = torch.jit.trace(net, torch.zeros(example_shape))
    tmp = path.with_suffix(".tmp")
    traced.save(str(tmp))
    os.replace(tmp, path)
    net.train()


def train_for(net: torch.nn.Module, args: argparse.Namespace, step_batch: StepBatch,
              example_shape: tuple[int, ...]) -> None:
    """Train until `args.minutes` run out: AdamW, cosine decay over the budget, export every
    `args.export_every` seconds and at the end, resume from / save to `args.ckpt`."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    if args.ckpt is not None and args.ckpt.exists():
        net.load_state_dict(torch.load(args.ckpt, weights_only=True))
        print(f"resumed from {args.ckpt}", flush=True)
    optimizer = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    budget = args.minutes * 60.0
    started = last_export = time.monotonic()
    step, running = 0, None
    while (elapsed := time.monotonic() - started) < budget:
        for group in optimizer.param_groups:
            group["lr"] = 5e-5 + (args.lr - 5e-5) * 0.5 * (1 + math.cos(math.pi * elapsed / budget))
        batch, target, note = step_batch(step, net)
        loss = dice_bce_loss(net(batch), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
        step += 1
        if step % 20 == 0:
            print(f"step {step} t={elapsed / 60:.1f}min loss={running:.4f} {note}", flush=True)
        if time.monotonic() - last_export > args.export_every:
            _save(net, args, example_shape)
            last_export = time.monotonic()
    _save(net, args, example_shape)
    print(f"done: {step} steps, {(time.monotonic() - started) / 60:.1f} min, model {args.out} "
          f"({args.out.stat().st_size / 1e6:.1f} MB)", flush=True)


def _save(net: torch.nn.Module, args: argparse.Namespace, example_shape: tuple[int, ...]) -> None:
    export_traced(net, args.out, example_shape)
    if args.ckpt is not None:
        torch.save(net.state_dict(), args.ckpt)


# --------------------------------------------------------------------------------------------------- #
# evaluation
# --------------------------------------------------------------------------------------------------- #


def run_model(model: LoadedModel, scene: Scene, params: dict[str, Any]) -> np.ndarray:
    """The model's mask for `scene` with request `params`, through the server's own pipeline."""
    volume = Volume(scene.image, scene.affine, ImageFormat.NIFTI_GZ)
    output = model.pipeline.run({**prepare_params(model.config, params), "image": volume_to_tensor(volume)})
    return np.asarray(output.image) > 0


def evaluate_cases(description: str, mmar_dir: Path, score_case: ScoreCase, min_mm3: float = 2000.0) -> None:
    """CLI (`--count --seed --families`): score `count` held-out scenes (``default_rng((seed, 1, i))``, never
    used in training; one object each) with `score_case`; print each case and the mean (median) per score."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--families", choices=sorted(EVALUATION_FAMILIES), default="heldout")
    args = parser.parse_args()
    model = load_mmar(mmar_dir, TorchScriptPool())
    rows: list[dict[str, float]] = []
    started = time.monotonic()
    for i in range(args.count):
        rng = np.random.default_rng((args.seed, 1, i))
        scene, (label,) = scene_objects(rng, 1, min_mm3, EVALUATION_FAMILIES[args.families])
        rows.append(score_case(model, scene, scene.mask(label)))
        scores = " ".join(f"{name}={value:.3f}" for name, value in rows[-1].items())
        print(f"case {i}: {scene.families[label - 1]} spacing={np.round(scene.spacing, 2).tolist()} {scores}",
              flush=True)
    summary = ", ".join(f"{name} {np.mean([r[name] for r in rows]):.3f} (median {np.median([r[name] for r in rows]):.3f})"
                        for name in rows[0])
    print(f"{args.families} families, {args.count} cases, seed {args.seed}, {time.monotonic() - started:.0f} s: "
          f"mean Dice {summary}")

"""The shared training loop of the bundled demo models (models/*/commands/train.py).

Each training script builds its samples through its MMAR's own pre-transforms (so training sees what serving
sees) and hands one function per step to `train_for`, which owns the loop: the budget (wall-clock minutes
and/or a number of steps), linear warm-up then cosine learning rate over that budget, periodic atomic
export checked against the eager network (TorchScript `--out`, e.g. model.ts for Triton, and the `torch.export`
program beside it, model.pt2, which the local engine prefers), checkpoint/resume and export of a saved checkpoint.
What differs between the demos besides the data (loss, optimiser) is their `Recipe`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.utils import set_determinism

from aiaa_demo.export import check_program, export_program
from aiaa_demo.synthetic_shapes import TRAIN_FAMILIES, Scene, make_scene, next_click, pick_object
from aiaa_server.inference.click_transforms import AddGuidanceChannelsd, guidance_channel
from aiaa_server.mmar.components import build_component
from aiaa_server.mmar.config import ComponentConfig

StepBatch = Callable[[int, torch.nn.Module], tuple[torch.Tensor, torch.Tensor, str]]
Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
MakeOptimizer = Callable[[Iterable[torch.nn.Parameter], float], torch.optim.Optimizer]
LOG_EVERY = 20  # steps


def training_arguments(description: str, mmar_dir: Path, batch: int, minutes: float | None = 35.0,
                       steps: int | None = None) -> argparse.ArgumentParser:
    """The options every demo's train.py shares; scripts add their own and may `set_defaults` of these.

    Args:
        description: the script's one-line description.
        mmar_dir: the demo's MMAR folder (default config and output paths).
        batch: default batch size.
        minutes: default wall-clock budget (None: no time limit).
        steps: default step budget (None: the learning-rate schedule follows the wall-clock budget).

    Returns:
        The parser.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--minutes", type=float, default=minutes, help="wall-clock training budget")
    parser.add_argument("--steps", type=int, default=steps,
                        help="step budget; when given the learning-rate schedule follows steps, not minutes")
    parser.add_argument("--stop-after", type=int, default=None,
                        help="stop after this many steps (the learning-rate schedule still follows the budget)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=batch)
    parser.add_argument("--lr", type=float, default=2e-3, help="peak learning rate")
    parser.add_argument("--lr-floor", type=float, default=5e-5, help="learning rate at the end of the cosine decay")
    parser.add_argument("--warmup", type=int, default=0,
                        help="linear warm-up steps (at most a tenth of a --steps budget)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--export-every", type=float, default=300.0, help="seconds between model.ts exports")
    parser.add_argument("--ckpt", type=Path, default=None, help="state_dict to resume from / save to")
    parser.add_argument("--init", type=Path, default=None,
                        help="start from these weights (a TorchScript model.ts of the same network) unless resuming")
    parser.add_argument("--export-only", type=Path, default=None, help="export this state_dict to --out and exit")
    parser.add_argument("--config", type=Path, default=mmar_dir / "config" / "config_aiaa.json")
    parser.add_argument("--out", type=Path, default=mmar_dir / "models" / "model.ts",
                        help="TorchScript output; the torch.export program goes beside it (same name, .pt2)")
    return parser


def config_pre_transforms(config_path: Path, overrides: dict[str, dict[str, Any]] | None = None) -> list[Any]:
    """The MMAR's pre-transforms built by the server's component loader.

    Args:
        config_path: the MMAR's config_aiaa.json.
        overrides: args patched by class name suffix, e.g. a smaller training crop or more keys.

    Returns:
        The built transforms, in config order.
    """
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
    shape = tuple(math.ceil(f / s) for f, s in zip(fov, spacing))
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
    """Soft Dice + binary cross-entropy of single-channel logits `(B, 1, *spatial)` against a 0/1 target."""
    probs = torch.sigmoid(logits)
    dims = tuple(range(1, logits.ndim))
    dice = 1 - (2 * (probs * target).sum(dims) + 1) / (probs.sum(dims) + target.sum(dims) + 1)
    return dice.mean() + torch.nn.functional.binary_cross_entropy_with_logits(logits, target)


def adamw(parameters: Iterable[torch.nn.Parameter], lr: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(parameters, lr=lr, weight_decay=1e-4)


@dataclass(frozen=True)
class Recipe:
    """What a demo's training differs in besides its data and CLI numbers.

    `check_shape` is the input shape on which the reloaded export must match the eager network (None: the
    trace example's shape); a shape other than the example's checks that the traced model is size-agnostic.
    """

    loss: Loss = dice_bce_loss
    optimizer: MakeOptimizer = adamw
    check_shape: tuple[int, ...] | None = None


def learning_rate(args: argparse.Namespace, step: int, elapsed_s: float) -> float:
    """Linear warm-up from 0 to `args.lr`, then cosine decay to `args.lr_floor` over the rest of the budget.

    Args:
        args: the parsed `training_arguments`.
        step: the step about to run (0-based).
        elapsed_s: seconds since training started.

    Returns:
        The learning rate of that step.
    """
    warmup = _warmup_steps(args)
    if step < warmup:
        return args.lr * (step + 1) / warmup
    if args.steps:
        progress = (step - warmup) / max(1, args.steps - warmup)
    else:
        progress = elapsed_s / (args.minutes * 60.0)
    return args.lr_floor + (args.lr - args.lr_floor) * 0.5 * (1 + math.cos(math.pi * progress))


def _warmup_steps(args: argparse.Namespace) -> int:
    return min(args.warmup, args.steps // 10 + 1) if args.steps else args.warmup


def _finished(args: argparse.Namespace, step: int, elapsed_s: float) -> bool:
    last_step = min((n for n in (args.steps, args.stop_after) if n is not None), default=None)
    out_of_steps = last_step is not None and step >= last_step
    return out_of_steps or (args.minutes is not None and elapsed_s >= args.minutes * 60.0)


def export_traced(net: torch.nn.Module, path: Path, example_shape: tuple[int, ...]) -> None:
    """TorchScript-trace `net` on zeros of `example_shape` and replace `path` atomically (a server may be
    reading it)."""
    net.eval()
    with torch.no_grad():
        traced = torch.jit.trace(net, torch.zeros(example_shape))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    traced.save(str(tmp))
    os.replace(tmp, path)
    net.train()


def check_export(net: torch.nn.Module, path: Path, input_shape: tuple[int, ...]) -> float:
    """Reload the TorchScript file and compare it with the eager `net` on random input of `input_shape`.

    Returns:
        The largest absolute output difference (asserted below 1e-3; batch and spatial sizes must match).
    """
    net.eval()
    x = torch.randn(input_shape)
    with torch.no_grad():
        exported, eager = torch.jit.load(str(path), map_location="cpu")(x), net(x)
    net.train()
    assert exported.shape[0] == x.shape[0] and exported.shape[2:] == x.shape[2:], tuple(exported.shape)
    error = float((exported - eager).abs().max())
    assert error < 1e-3, f"traced model differs from the eager model ({error})"
    return error


def train_for(build_network: Callable[[], torch.nn.Module], args: argparse.Namespace, step_batch: StepBatch,
              example_shape: tuple[int, ...], recipe: Recipe = Recipe()) -> None:
    """Seed, build the network and train it until the budget runs out (or only export `args.export_only`).

    Args:
        build_network: makes the untrained network (called after seeding, so its initialisation is seeded).
        args: the parsed `training_arguments` (budget, learning rates, paths).
        step_batch: `(step, net) -> (inputs, targets, note)` for each step; `note` is logged.
        example_shape: network input shape the export is traced on, e.g. `(1, 1, 64, 64, 64)`.
        recipe: loss, optimiser and export check.
    """
    torch.set_num_threads(args.threads)
    set_determinism(seed=args.seed)
    net = build_network()
    if args.export_only is not None:
        saved = torch.load(args.export_only, map_location="cpu", weights_only=True)
        net.load_state_dict(saved.get("net", saved))
        _export(net, args, example_shape)
        _check(net, args, recipe.check_shape or example_shape, example_shape)
        return
    step, done_s = _resume(net, args.ckpt)
    if step == 0 and args.init is not None:
        net.load_state_dict(torch.jit.load(str(args.init), map_location="cpu").state_dict())
        print(f"initialised from {args.init}", flush=True)
    assert args.minutes is not None or args.steps or args.stop_after, "no budget: give --minutes or --steps"
    net.train()
    optimizer = recipe.optimizer(net.parameters(), args.lr)
    started = last_export = time.monotonic() - done_s
    running = None
    while not _finished(args, step, elapsed := time.monotonic() - started):
        lr = learning_rate(args, step, elapsed)
        batch, target, note = step_batch(step, net)
        loss = _optimise(net, optimizer, lr, recipe.loss(net(batch), target))
        running = loss if running is None else 0.95 * running + 0.05 * loss
        step += 1
        if step % LOG_EVERY == 0:
            print(f"step {step} t={elapsed / 60:.1f}min lr={lr:.2e} loss={running:.4f} {note}", flush=True)
        if time.monotonic() - last_export > args.export_every:
            _save(net, args, example_shape, step, time.monotonic() - started)
            last_export = time.monotonic()
    _save(net, args, example_shape, step, time.monotonic() - started)
    _check(net, args, recipe.check_shape or example_shape, example_shape)
    print(f"done: {step} steps, {(time.monotonic() - started) / 60:.1f} min", flush=True)


def _optimise(net: torch.nn.Module, optimizer: torch.optim.Optimizer, lr: float, loss: torch.Tensor) -> float:
    """One optimiser step at learning rate `lr`; returns the loss value."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


def _resume(net: torch.nn.Module, ckpt: Path | None) -> tuple[int, float]:
    """Load `ckpt` if it exists; returns (steps done, seconds done) so the budget and schedule carry on.

    A checkpoint is `{"net": state_dict, "step": int, "elapsed_s": float}` (a bare state_dict is read as
    step 0). The optimiser state is not kept (it would double the file); AdamW rebuilds it within steps."""
    if ckpt is None or not ckpt.exists():
        return 0, 0.0
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    if "net" not in saved:
        saved = {"net": saved, "step": 0, "elapsed_s": 0.0}
    net.load_state_dict(saved["net"])
    print(f"resumed from {ckpt} at step {saved['step']}, {saved['elapsed_s'] / 60:.1f} min", flush=True)
    return int(saved["step"]), float(saved["elapsed_s"])


def program_path(out: Path) -> Path:
    """Where the torch.export program goes: beside the TorchScript `--out`, suffix `.pt2`."""
    return out.with_suffix(".pt2")


def _export(net: torch.nn.Module, args: argparse.Namespace, example_shape: tuple[int, ...]) -> None:
    """Both exports: TorchScript (`--out`) and the torch.export program beside it (kept in step, since the
    server's local engine prefers the `.pt2`)."""
    export_traced(net, args.out, example_shape)
    export_program(net, program_path(args.out), example_shape[1], len(example_shape) - 2)


def _save(net: torch.nn.Module, args: argparse.Namespace, example_shape: tuple[int, ...], step: int,
          elapsed_s: float) -> None:
    _export(net, args, example_shape)
    if args.ckpt is not None:
        args.ckpt.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.ckpt.with_suffix(".tmp")
        torch.save({"net": net.state_dict(), "step": step, "elapsed_s": elapsed_s}, tmp)
        os.replace(tmp, args.ckpt)


def _check(net: torch.nn.Module, args: argparse.Namespace, check_shape: tuple[int, ...],
           example_shape: tuple[int, ...]) -> None:
    error = check_export(net, args.out, check_shape)
    print(f"exported {args.out} ({args.out.stat().st_size / 1e6:.1f} MB); checked on {check_shape}, "
          f"max |traced - eager| {error:.1e}", flush=True)
    program = program_path(args.out)
    net.eval()
    errors = check_program(program, net, [example_shape])
    net.train()
    print(f"exported {program} ({program.stat().st_size / 1e6:.1f} MB); checked on {example_shape}, "
          f"max |program - eager| {errors[example_shape]:.1e}", flush=True)

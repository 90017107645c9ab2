"""The shared evaluation loop of the bundled demo models (models/*/commands/evaluate.py).

Each evaluation script hands a function scoring one case to `evaluate_cases`, which owns the command line,
the held-out cases (``np.random.default_rng((seed, 1, i))``, streams never used in training), the loop and the
summary. Cases come from a `CaseSource`: synthetic-shape scenes by default (`ShapeCases`), or the script's own
(e.g. abdominal phantoms). Models run through the server's own pipeline (`load_mmar` + `pipeline.run`), the
same transforms as an HTTP request.

The simulated annotators live here too, shared by the demo scripts and `aiaa_demo.evaluate_real`:
`click_session` (DeepGrow 3D, or 2D on one slice) and `extreme_points_dice` (DExtr3D).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np
import torch

from aiaa_demo.synthetic_shapes import HELDOUT_FAMILIES, TRAIN_FAMILIES, Clicks, dice, first_click, next_click
from aiaa_demo.training import scene_objects
from aiaa_server.engines.torchscript import TorchScriptPool
from aiaa_server.imaging.formats import ImageFormat
from aiaa_server.imaging.io import Volume
from aiaa_server.imaging.masks import extreme_points
from aiaa_server.inference.interactive import prepare_params
from aiaa_server.inference.tensors import volume_to_tensor
from aiaa_server.mmar.loader import LoadedModel, load_mmar

EVALUATION_FAMILIES = {"heldout": HELDOUT_FAMILIES, "train": TRAIN_FAMILIES}


class Case(NamedTuple):
    """One evaluation case.

    `volume` has `image` (HU, `(I, J, K)`) and `affine` (4x4 voxel -> RAS mm): a `Scene` or a `Phantom`;
    `mask` is the `(I, J, K)` boolean truth; `note` is printed with the case's scores.
    """

    volume: Any
    mask: np.ndarray
    note: str


ScoreCase = Callable[[LoadedModel, Any, np.ndarray], dict[str, float]]
Predict = Callable[[dict[str, Any]], np.ndarray]
"""Request params -> the model's boolean mask on the input grid (e.g. `run_model` bound to a model and volume)."""


class CaseSource(Protocol):
    """Makes the evaluation cases and owns their command-line options."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Add options, or change the defaults of the shared ones (`--count`, `--seed`, `--threads`)."""

    def title(self, args: argparse.Namespace) -> str:
        """What was evaluated, for the summary line."""

    def __call__(self, rng: np.random.Generator, args: argparse.Namespace) -> Case:
        """The case drawn from `rng`."""


class ShapeCases:
    """Synthetic-shape scenes with one object of at least `min_mm3` each; `--families heldout|train`."""

    def __init__(self, min_mm3: float = 2000.0) -> None:
        self.min_mm3 = min_mm3

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--families", choices=sorted(EVALUATION_FAMILIES), default="heldout")

    def title(self, args: argparse.Namespace) -> str:
        return f"{args.families} families"

    def __call__(self, rng: np.random.Generator, args: argparse.Namespace) -> Case:
        scene, (label,) = scene_objects(rng, 1, self.min_mm3, EVALUATION_FAMILIES[args.families])
        note = f"{scene.families[label - 1]} spacing={np.round(scene.spacing, 2).tolist()}"
        return Case(scene, scene.mask(label), note)


def run_model(model: LoadedModel, volume: Any, params: dict[str, Any]) -> np.ndarray:
    """The model's mask for `volume` (anything with `image` and `affine`) with request `params`, through the
    server's own pipeline; boolean, on the volume's grid."""
    data = volume_to_tensor(Volume(volume.image, volume.affine, ImageFormat.NIFTI_GZ))
    output = model.pipeline.run({**prepare_params(model.config, params), "image": data})
    return np.asarray(output.image) > 0


@dataclass
class ClickTrace:
    """One simulated click session.

    `dice[n - 1]`: Dice after n clicks (repeated once the result is perfect); `clicks`: (is_foreground,
    [x, y, z]) in the order sent; `slice_dice`: with a `probe_slice`, each result's Dice on that slice.
    """

    dice: list[float] = field(default_factory=list)
    clicks: list[tuple[bool, list[int]]] = field(default_factory=list)
    slice_dice: list[float] = field(default_factory=list)


def click_session(predict: Predict, truth: np.ndarray, clicks: int = 5, spacing: Sequence[float] | None = None,
                  on_slice: int | None = None, first: Sequence[int] | None = None,
                  probe_slice: int | None = None) -> ClickTrace:
    """Click like a DeepGrow annotator; no randomness.

    The first click (foreground) is `first`, by default the voxel of `truth` farthest from its boundary (maximum
    of the Euclidean distance transform, in mm with `spacing`). Each further click goes to the most interior
    voxel of the largest error region of the latest result: a foreground click in a miss (false negative), a
    background click in a leak (false positive). Each call sends every click so far, the newest as
    `current_point`.

    Args:
        predict: request params -> boolean mask on the grid of `truth`.
        truth: the (X, Y, Z) boolean ground truth.
        clicks: the number of calls (one click each).
        spacing: voxel size in mm (default isotropic).
        on_slice: DeepGrow 2D: clicks and Dice on the axial slice `z = on_slice` of `truth`; every result must
            be empty outside that slice.
        first: the first click, [x, y, z] (with `on_slice`, its z must be that slice).
        probe_slice: also score each 3D result on this slice (`ClickTrace.slice_dice`).

    Raises:
        ValueError: `clicks` < 1, or nothing of `truth` to click on.
        RuntimeError: a 2D result filled voxels outside the clicked slice.
    """
    if clicks < 1:
        raise ValueError(f"clicks must be >= 1, got {clicks}")
    truth = np.asarray(truth, dtype=bool)
    target = truth if on_slice is None else truth[..., on_slice]
    if not target.any():
        raise ValueError("the structure is empty" + ("" if on_slice is None else f" on slice {on_slice}"))
    steps = tuple(float(s) for s in (spacing if spacing is not None else (1.0,) * truth.ndim))
    in_plane = steps if on_slice is None else steps[:2]
    if first is None:
        first = first_click(target, spacing=in_plane) + ([] if on_slice is None else [on_slice])
    point = [int(c) for c in first]
    state = Clicks(foreground=[point], current=point)
    trace = ClickTrace(clicks=[(True, point)])
    while True:
        result = np.asarray(predict(state.params()), dtype=bool)
        if on_slice is not None and np.delete(result, on_slice, axis=2).any():
            raise RuntimeError(f"a 2D result must only fill the clicked slice z={on_slice}")
        prediction = result if on_slice is None else result[..., on_slice]
        trace.dice.append(dice(prediction, target))
        if probe_slice is not None:
            trace.slice_dice.append(dice(result[..., probe_slice], truth[..., probe_slice]))
        correction = None if len(trace.dice) == clicks else next_click(target, prediction, spacing=in_plane)
        if correction is None:
            break
        is_fg, point = correction
        point = point + ([] if on_slice is None else [on_slice])
        (state.foreground if is_fg else state.background).append(point)
        state.current = point
        trace.clicks.append((is_fg, point))
    for scores in (trace.dice, trace.slice_dice):
        scores.extend(scores[-1:] * (clicks - len(scores)) if scores else [])
    return trace


def extreme_points_dice(predict: Predict, truth: np.ndarray) -> tuple[float, list[list[int]]]:
    """DExtr3D from the 6 true extreme points of `truth` (`aiaa_server.imaging.masks.extreme_points`): Dice of
    the result on the grid of `truth`, and the points sent."""
    points = extreme_points(truth)
    if not points:
        raise ValueError("the structure is empty")
    return dice(predict({"points": points}), truth), points


def evaluation_arguments(description: str) -> argparse.ArgumentParser:
    """The options every demo's evaluate.py shares."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--count", "--num", dest="count", type=int, default=20, help="number of held-out cases")
    parser.add_argument("--seed", type=int, default=0, help="case i uses np.random.default_rng((seed, 1, i))")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--model", type=Path, default=None,
                        help="TorchScript file to evaluate instead of the MMAR's models/model.ts")
    parser.add_argument("--json", type=Path, default=None, help="also write the per-case scores as JSON")
    return parser


def evaluate_cases(description: str, mmar_dir: Path, score_case: ScoreCase, min_mm3: float = 2000.0,
                   cases: CaseSource | None = None) -> None:
    """CLI: score `--count` held-out cases with `score_case`; print each case and the summary of each score.

    Args:
        description: the script's one-line description.
        mmar_dir: the demo's MMAR folder.
        score_case: `(model, volume, truth mask) -> {score name: value}`.
        min_mm3: smallest object of the default `ShapeCases`.
        cases: where the cases come from (default: `ShapeCases(min_mm3)`).
    """
    cases = cases or ShapeCases(min_mm3)
    parser = evaluation_arguments(description)
    cases.add_arguments(parser)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows: list[dict[str, float]] = []
    started = time.monotonic()
    with _loaded_model(mmar_dir, args.model) as model:
        for i in range(args.count):
            case = cases(np.random.default_rng((args.seed, 1, i)), args)
            rows.append(score_case(model, case.volume, case.mask))
            scores = " ".join(f"{name}={value:.4f}" for name, value in rows[-1].items())
            print(f"case {i}: {case.note} {scores}", flush=True)
    print(f"{cases.title(args)}, {args.count} cases, seed {args.seed}, {time.monotonic() - started:.0f} s: "
          f"mean Dice {summary(rows)}")
    if args.json is not None:
        args.json.write_text(json.dumps({"seed": args.seed, "count": args.count, "cases": rows}, indent=2))


def summary(rows: list[dict[str, float]]) -> str:
    """`name mean (median m, min a, max b)` for each score of the rows."""
    parts = []
    for name in rows[0]:
        values = np.array([row[name] for row in rows])
        parts.append(f"{name} {values.mean():.3f} (median {np.median(values):.3f}, min {values.min():.3f}, "
                     f"max {values.max():.3f})")
    return ", ".join(parts)


@contextmanager
def _loaded_model(mmar_dir: Path, model_file: Path | None) -> Iterator[LoadedModel]:
    """The MMAR loaded as the server would; with `model_file`, a staged copy serving that file instead."""
    if model_file is None:
        yield load_mmar(mmar_dir, TorchScriptPool())
        return
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / mmar_dir.name
        shutil.copytree(mmar_dir, staged, ignore=shutil.ignore_patterns("models"))
        (staged / "models").mkdir()
        (staged / "models" / "model.ts").symlink_to(model_file.resolve())
        yield load_mmar(staged, TorchScriptPool())

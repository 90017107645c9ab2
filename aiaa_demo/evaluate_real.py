"""Interactive models on named structures of real scans: `python -m aiaa_demo.evaluate_real`.

Every interactive model (DeepGrow 3D, DeepGrow 2D, DExtr3D and the classical baseline `classical_region_grow`)
runs through the server's own pipeline (`load_mmar` + `pipeline.run`, the transforms of an HTTP request) on the
structures of `aiaa_demo.real_structures`, clicked by the simulated annotator of `aiaa_demo.evaluation`:

* DeepGrow 3D (and the baseline): first click at the structure's most interior voxel (distance-transform maximum,
  in mm), each next click at the most interior voxel of the largest error region (foreground in a miss,
  background in a leak); Dice on the input grid after each click.
* DeepGrow 2D: the axial slice through that same first click; clicks and Dice on that slice only.
* DExtr3D: one call with the structure's 6 true extreme points; Dice on the input grid.

Prints Markdown tables (per model: Dice after 1 / 3 / 5 clicks per structure, the baseline's figures beside them,
the mean per click count; then a summary), progress on stderr, and with `--json` writes every figure.
Nothing is random: the clicks follow from the masks and the results; torch is seeded anyway (`--seed`).

Example: python -m aiaa_demo.evaluate_real --quick --models demo_deepgrow_3d --json /tmp/quick.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from aiaa_demo.evaluation import click_session, extreme_points_dice, run_model
from aiaa_demo.real_structures import LoadedStructure, load_structure, resolve
from aiaa_demo.synthetic_shapes import first_click
from aiaa_server.engines.torchscript import TorchScriptPool
from aiaa_server.mmar.config import ModelType
from aiaa_server.mmar.loader import LoadedModel, is_mmar, load_mmar

MODELS_DIR = Path(__file__).resolve().parents[1] / "models"
BASELINE = "classical_region_grow"
DEFAULT_MODELS = ("demo_deepgrow_3d", "demo_deepgrow_2d", "demo_dextr3d_annotation", BASELINE)
# How each known model is clicked; any other MMAR is classified from its config (see `protocol_of`).
PROTOCOLS = {"demo_deepgrow_3d": "3d", "demo_deepgrow_2d": "2d", "demo_dextr3d_annotation": "extreme_points",
             BASELINE: "3d"}
PROTOCOL_TITLES = {"3d": "DeepGrow 3D clicks, Dice on the input grid",
                   "2d": "DeepGrow 2D clicks on the axial slice through the first click, Dice on that slice",
                   "extreme_points": "DExtr3D from the 6 true extreme points, Dice on the input grid"}
PROTOCOL_SHORT = {"3d": "3D clicks", "2d": "2D clicks, one slice", "extreme_points": "6 extreme points"}


def protocol_of(name: str, model: LoadedModel) -> str:
    """`3d`, `2d` or `extreme_points`: `PROTOCOLS` for the known models, else from the config (annotation type:
    extreme points; deepgrow: the `spatial_dims` the server advertises)."""
    if name in PROTOCOLS:
        return PROTOCOLS[name]
    if model.config.type is ModelType.ANNOTATION:
        return "extreme_points"
    if model.config.type is ModelType.DEEPGROW:
        return "2d" if model.config.spatial_dims == 2 else "3d"
    raise ValueError(f"{name} is a {model.config.type.value} model, not an interactive one")


def reported_clicks(clicks: int) -> list[int]:
    """The click counts shown in the tables: 1, 3, 5 (those up to `clicks`) and `clicks` itself."""
    return sorted({c for c in (1, 3, 5) if c <= clicks} | {clicks})


def evaluate_one(model: LoadedModel, protocol: str, item: LoadedStructure, clicks: int,
                 first: list[int] | None = None) -> dict[str, Any]:
    """Run one model on one structure; `dice` has one figure per click (one for extreme points).

    Args:
        model: the loaded MMAR.
        protocol: `3d`, `2d` or `extreme_points` (`protocol_of`).
        item: the structure and its volume.
        clicks: clicks per DeepGrow session.
        first: the first click (default: the mask's most interior voxel, `first_click`).
    """
    volume = SimpleNamespace(image=item.image, affine=item.affine)

    def predict(params: dict[str, Any]) -> np.ndarray:
        return run_model(model, volume, params)

    first = first if first is not None else first_click(item.mask, spacing=item.spacing)
    if protocol == "extreme_points":
        score, points = extreme_points_dice(predict, item.mask)
        return {"dice": [score], "points": points}
    if protocol == "2d":
        trace = click_session(predict, item.mask, clicks, item.spacing, on_slice=first[2], first=first)
        extra: dict[str, Any] = {"slice": first[2], "slice_voxels": int(item.mask[..., first[2]].sum())}
    else:
        trace = click_session(predict, item.mask, clicks, item.spacing, first=first, probe_slice=first[2])
        extra = {"slice": first[2], "slice_dice": trace.slice_dice}
    return {"dice": trace.dice, **extra,
            "clicks": [{"foreground": fg, "point": point} for fg, point in trace.clicks]}


def _cell(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _figure(row: dict[str, Any] | None, clicks: int, key: str = "dice") -> float | None:
    if row is None or "error" in row or key not in row:
        return None
    values = row[key]
    return values[min(clicks, len(values)) - 1]


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def model_table(name: str, protocol: str, report: dict[str, Any], clicks: int) -> list[str]:
    """The Markdown table of one model: a row per structure, the baseline's figures beside its own, the means."""
    shown = [1] if protocol == "extreme_points" else reported_clicks(clicks)
    baseline = report["results"].get(BASELINE) if name != BASELINE else None
    base_key = "slice_dice" if protocol == "2d" else "dice"
    base_shown = reported_clicks(clicks) if baseline is not None else []
    heads = ["6 extreme points"] if protocol == "extreme_points" else [f"{c} click{'s' * (c > 1)}" for c in shown]
    heads += [f"baseline {c}" for c in base_shown]
    lines = [f"### {name}: {PROTOCOL_TITLES[protocol]}", ""]
    if baseline is not None:
        lines += [f"baseline = {BASELINE} (3D clicks from the same first click"
                  + (", Dice of its 3D result on the same slice)" if protocol == "2d" else ")"), ""]
    lines += ["| structure | volume | mL | " + " | ".join(heads) + " |",
              "|---|---|---:|" + "---:|" * len(heads)]
    columns: list[list[float | None]] = [[] for _ in heads]
    for structure in report["structures"]:
        row = report["results"][name].get(structure["name"])
        own = [_figure(row, c) for c in shown]
        base = [_figure((baseline or {}).get(structure["name"]), c, base_key) for c in base_shown]
        for column, value in zip(columns, own + base):
            column.append(value)
        failed = row is not None and "error" in row
        cells = (["error"] * len(own) if failed else [_cell(v) for v in own]) + [_cell(v) for v in base]
        lines.append(f"| {structure['name']} | {structure['volume']} | {structure['ml']:.1f} | "
                     + " | ".join(cells) + " |")
    count = sum(1 for s in report["structures"] if _figure(report["results"][name].get(s["name"]), 1) is not None)
    lines.append(f"| **mean ({count})** | | | " + " | ".join(f"**{_cell(_mean(c))}**" for c in columns) + " |")
    return lines + [""]


def summary_table(report: dict[str, Any], clicks: int) -> list[str]:
    """Mean Dice per click count of every model over all its structures."""
    shown = reported_clicks(clicks)
    lines = ["### Mean Dice over all structures", "",
             "| model | protocol | structures | " + " | ".join(f"{c} click{'s' * (c > 1)}" for c in shown) + " |",
             "|---|---|---:|" + "---:|" * len(shown)]
    for name, protocol in report["protocols"].items():
        rows = report["results"][name].values()
        means = [_mean([_figure(r, c) for r in rows]) for c in shown]
        if protocol == "extreme_points":
            means = [means[0]] + [None] * (len(shown) - 1)
        count = sum(1 for r in rows if "error" not in r)
        lines.append(f"| {name} | {PROTOCOL_SHORT[protocol]} | {count} | " + " | ".join(map(_cell, means)) + " |")
    return lines + [""]


def markdown(report: dict[str, Any]) -> str:
    """The whole report as Markdown: the skipped models, one table per model, the summary."""
    clicks = report["clicks"]
    lines = [f"> {name}: {why}" for name, why in report["skipped"].items()]
    lines += [""] if lines else []
    for name, protocol in report["protocols"].items():
        lines += model_table(name, protocol, report, clicks)
    return "\n".join(lines + summary_table(report, clicks))


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def load_models(names: Sequence[str], models_dir: Path) -> tuple[dict[str, LoadedModel], dict[str, str]]:
    """The models found under `models_dir` (loaded as the server would), and why each other one is skipped."""
    loaded: dict[str, LoadedModel] = {}
    skipped: dict[str, str] = {}
    pool = TorchScriptPool()
    for name in names:
        folder = models_dir / name
        if not is_mmar(folder):
            skipped[name] = f"no MMAR at {folder} (not added yet?): skipped"
            continue
        try:
            loaded[name] = load_mmar(folder, pool)
            protocol_of(name, loaded[name])
        except Exception as exc:  # noqa: BLE001 - one unusable model must not stop the others
            loaded.pop(name, None)
            skipped[name] = f"cannot be evaluated: {type(exc).__name__}: {exc}"
    return loaded, skipped


def run(names: Sequence[str], structures: Sequence[str] | None, clicks: int = 5, quick: bool = False,
        models_dir: Path = MODELS_DIR, cache: Path | None = None, seed: int = 0) -> dict[str, Any]:
    """Evaluate the models `names` on the structures; the report `markdown` prints and `--json` writes.

    Raises:
        FileNotFoundError: none of the structures' volumes is in the dataset cache.
        KeyError: an unknown structure name.
    """
    torch.manual_seed(seed)
    started = time.monotonic()
    chosen = resolve(list(structures) if structures else None, quick)
    models, skipped = load_models(names, models_dir)
    for name, why in skipped.items():
        _progress(f"{name}: {why}")
    protocols = {name: protocol_of(name, model) for name, model in models.items()}
    report: dict[str, Any] = {"clicks": clicks, "seed": seed, "protocols": protocols, "skipped": skipped,
                              "structures": [], "results": {name: {} for name in models}}
    missing: list[str] = []
    for index, structure in enumerate(chosen, 1):
        try:
            item = load_structure(structure, cache)
        except FileNotFoundError as exc:
            missing.append(str(exc))
            _progress(f"{structure.name}: skipped: {exc}")
            continue
        first = first_click(item.mask, spacing=item.spacing)
        report["structures"].append({
            "name": structure.name, "volume": structure.volume, "pattern": structure.pattern, "why": structure.why,
            "labels": item.labels, "voxels": int(item.mask.sum()), "shape": list(item.image.shape),
            "spacing": [round(s, 4) for s in item.spacing], "note": item.note, "first_click": first,
            "ml": float(item.mask.sum() * np.prod(item.spacing) / 1000.0)})
        for name, model in models.items():
            t0 = time.monotonic()
            try:
                row = evaluate_one(model, protocols[name], item, clicks, first)
            except Exception as exc:  # noqa: BLE001 - reported in the table and the JSON
                row = {"error": f"{type(exc).__name__}: {exc}"}
            row["seconds"] = round(time.monotonic() - t0, 2)
            report["results"][name][structure.name] = row
            figures = row.get("error") or " ".join(f"{d:.3f}" for d in row["dice"])
            _progress(f"[{index}/{len(chosen)}] {structure.name} {name}: {figures} ({row['seconds']:.1f} s)")
    if not report["structures"]:
        raise FileNotFoundError("no structure could be loaded: " + "; ".join(dict.fromkeys(missing)))
    report["means"] = {name: {str(c): _mean([_figure(r, c) for r in report["results"][name].values()])
                              for c in ([1] if protocol == "extreme_points" else range(1, clicks + 1))}
                       for name, protocol in protocols.items()}
    report["seconds"] = round(time.monotonic() - started, 1)
    return report


def arguments() -> argparse.ArgumentParser:
    """The command line of `python -m aiaa_demo.evaluate_real`."""
    parser = argparse.ArgumentParser(prog="python -m aiaa_demo.evaluate_real", description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS),
                        help=f"MMAR folder names under --models-dir (default: {' '.join(DEFAULT_MODELS)})")
    parser.add_argument("--structures", nargs="+", default=None,
                        help="structure names of aiaa_demo.real_structures or AAL region names (default: all)")
    parser.add_argument("--clicks", type=int, default=5, help="clicks per DeepGrow session (default 5)")
    parser.add_argument("--quick", action="store_true", help="only 3 small structures (QUICK), for tests")
    parser.add_argument("--json", type=Path, default=None, help="also write every figure as JSON")
    parser.add_argument("--models-dir", type=Path, default=MODELS_DIR, help="where the MMARs are (default: models/)")
    parser.add_argument("--cache", type=Path, default=None, help="dataset cache (default: $AIAA_DATA_CACHE or ~/.cache)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0, help="torch seed (nothing here draws random numbers)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; exit status 2 when no structure or no model could be evaluated."""
    args = arguments().parse_args(argv)
    if args.clicks < 1:
        arguments().error("--clicks must be at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        report = run(args.models, args.structures, args.clicks, args.quick, args.models_dir, args.cache, args.seed)
    except (FileNotFoundError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(markdown(report))
    print(f"{len(report['structures'])} structures, {len(report['protocols'])} models, {report['seconds']:.0f} s",
          file=sys.stderr)
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0 if report["protocols"] else 2


if __name__ == "__main__":
    raise SystemExit(main())

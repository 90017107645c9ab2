#!/usr/bin/env python
"""DeepGrow 3D clicks inside a structure larger than the model's crop (`inference.crop_growth`), through a
real aiaa-server process: click latency vs the bare network forwards the clicks needed.

1. Generates a 512×512×120 CT-like volume (0.8×0.8×2.5 mm: 410×410×300 mm) holding one soft-tissue structure
   of 300×240×220 mm (an ellipsoid, 60 HU in −100 HU fat, 12 HU noise), larger than DeepGrow 3D's 192 mm crop
   (96³ at 2 mm) on every axis.
2. Stages two copies of models/demo_deepgrow_3d: `large_growing` with `inference.crop_growth` (--max-passes,
   --zoom, --border-voxels) and `large_single` without.  Their network (--network):
   * `threshold` (default): a TorchScript stand-in that runs the demo UNet and discards its output for
     threshold logits of the image channel, 25 · (x + 0.04) (−20 HU): the demo model's forward cost and a
     known mask, so the clicks take the passes such a structure needs.  The committed demo UNet was trained
     on objects smaller than its crop and does not reach the crop's faces on this structure (one pass);
   * `demo`: the demo UNet as committed.
3. Starts `python -m aiaa_server --models <tmp> --no-bundled_models` on a free loopback port and uploads the
   volume once (PUT /session/).  Then, for each of --clicks seeded random points at least 40 mm inside the
   structure: times one bare forward of the same TorchScript network on 1×3×96×96×96 in this process (the
   server idle meanwhile), then sends the point as a single foreground click to each model in turn
   (POST /v1/deepgrow?session_id=…), timing the HTTP round trip only.  Interleaving keeps the forwards and the
   clicks under the same machine load.  Each answer's `crop_passes` gives the passes the click ran.
Prints per model the median click latency, the median of the forwards the clicks needed (passes × the median
bare forward), their ratio, the pass counts and the median Dice against the structure.

Usage: python bench/large_structure_click.py [--clicks 20] [--seed 0] [--threads 0] [--network threshold]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from email.parser import BytesParser
from email.policy import HTTP
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from aiaa_server.imaging.formats import ImageFormat
from aiaa_server.imaging.io import decode_result
from aiaa_server.imaging.masks import dice
from tests.support.server import start_server
from tests.support.volumes import save_nifti

SOURCE = REPO / "models" / "demo_deepgrow_3d"
SHAPE, SPACING = (512, 512, 120), (0.8, 0.8, 2.5)
SEMI_AXES_MM = np.array([150.0, 120.0, 110.0])
INSIDE_MM = 40.0  # clicks at least this deep in the structure
MODELS = ("large_growing", "large_single")


class ThresholdStandIn(torch.nn.Module):
    """The demo UNet's forward, then logits of the (scaled) image channel above −20 HU."""

    def __init__(self, unet: torch.nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.unet(x) * 0.0 + 25.0 * (x[:, :1] + 0.04)


def structure_volume(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(int16 HU image, boolean truth, affine) of the volume described in the module doc."""
    affine = np.diag([*SPACING, 1.0])
    centre = (np.asarray(SHAPE) - 1) / 2.0
    axes = [((np.arange(n) - c) * s / r) ** 2 for n, c, s, r in zip(SHAPE, centre, SPACING, SEMI_AXES_MM)]
    truth = (axes[0][:, None, None] + axes[1][None, :, None] + axes[2][None, None, :]) <= 1.0
    image = np.where(truth, 60.0, -100.0) + rng.normal(0.0, 12.0, SHAPE)
    return np.round(image).astype(np.int16), truth, affine


def click_points(rng: np.random.Generator, count: int) -> list[list[int]]:
    """`count` voxels at least INSIDE_MM inside the structure (uniform in the shrunken ellipsoid)."""
    centre = (np.asarray(SHAPE) - 1) / 2.0
    inner = SEMI_AXES_MM - INSIDE_MM
    points: list[list[int]] = []
    while len(points) < count:
        unit = rng.uniform(-1.0, 1.0, 3)
        if unit @ unit <= 1.0:
            points.append([int(np.rint(c + u * r / s)) for c, u, r, s in zip(centre, unit, inner, SPACING)])
    return points


def stage_models(folder: Path, network: str, growth: dict[str, Any]) -> torch.jit.ScriptModule:
    """The two MMARs under `folder`; returns the network they run (for the bare forward)."""
    unet = torch.jit.load(str(SOURCE / "models" / "model.ts"), map_location="cpu").eval()
    module = unet if network == "demo" else torch.jit.trace(ThresholdStandIn(unet).eval(), torch.zeros(1, 3, 96, 96, 96))
    for name in MODELS:
        target = folder / name
        shutil.copytree(SOURCE / "config", target / "config")
        (target / "models").mkdir()
        torch.jit.save(module, str(target / "models" / "model.ts"))
        config = json.loads((target / "config" / "config_aiaa.json").read_text())
        config["inference"].pop("crop_growth", None)
        if name == "large_growing":
            config["inference"]["crop_growth"] = growth
        (target / "config" / "config_aiaa.json").write_text(json.dumps(config, indent=2))
    return module


def decode(response: httpx.Response) -> tuple[dict[str, Any], np.ndarray]:
    """(result params, boolean mask) of a multipart answer."""
    message = BytesParser(policy=HTTP).parsebytes(
        f"Content-Type: {response.headers['content-type']}\r\n\r\n".encode() + response.content)
    params: dict[str, Any] = {}
    mask = None
    for part in message.iter_parts():
        payload = part.get_payload(decode=True)
        if part.get_filename():
            array, _ = decode_result(payload, ImageFormat.NIFTI_GZ)
            mask = np.asarray(array) > 0
        else:
            params = json.loads(payload)
    if mask is None:
        raise RuntimeError("no image part in the response")
    return params, mask


def bare_forward_seconds(module: torch.jit.ScriptModule, batch: torch.Tensor) -> float:
    with torch.inference_mode():
        started = time.perf_counter()
        module(batch)
        if batch.is_cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - started


def click(client: httpx.Client, session_id: str, model: str, point: list[int], truth: np.ndarray
          ) -> tuple[float, int, float]:
    """(latency s, passes, Dice) of a fresh request with `point` as its one foreground click."""
    params = {"foreground": [point], "background": [], "current_point": [point]}
    started = time.perf_counter()
    response = client.post("/v1/deepgrow", params={"model": model, "session_id": session_id},
                           data={"params": json.dumps(params)})
    latency = time.perf_counter() - started
    response.raise_for_status()
    result, mask = decode(response)
    return latency, int(result.get("crop_passes", 1)), dice(mask, truth)


def report(name: str, rows: list[tuple[float, int, float]], forward: float, server_times: list[float]) -> None:
    latencies = sorted(r[0] for r in rows)
    needed = [r[1] * forward for r in rows]
    median, needed_median = statistics.median(latencies), statistics.median(needed)
    p95 = latencies[min(len(latencies) - 1, int(np.ceil(0.95 * len(latencies))) - 1)]
    passes = dict(sorted(Counter(r[1] for r in rows).items()))
    print(f"{name}: {len(rows)} clicks, passes per click {passes} (count of clicks), median Dice "
          f"{statistics.median(r[2] for r in rows):.3f}")
    server_side = f"; server-side median {statistics.median(server_times) * 1000:.0f} ms" if server_times else ""
    print(f"  click latency median {median * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms{server_side}")
    print(f"  forwards needed (passes x bare forward) median {needed_median * 1000:.0f} ms")
    print(f"  ratio click median / needed-forwards median: {median / needed_median:.2f}x; per-click ratio median "
          f"{statistics.median(r[0] / (r[1] * forward) for r in rows):.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clicks", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: the server's default)")
    parser.add_argument("--network", choices=("threshold", "demo"), default="threshold")
    parser.add_argument("--max-passes", type=int, default=3)
    parser.add_argument("--zoom", type=float, default=2.0)
    parser.add_argument("--border-voxels", type=int, default=2)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="the server's --device")
    args = parser.parse_args()
    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    growth = {"max_passes": args.max_passes, "zoom": args.zoom, "border_voxels": args.border_voxels}

    rng = np.random.default_rng(args.seed)
    image, truth, affine = structure_volume(rng)
    points = click_points(rng, args.clicks)
    rows: dict[str, list[tuple[float, int, float]]] = {model: [] for model in MODELS}
    forwards: list[float] = []
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        image_path = save_nifti(root / "large.nii.gz", image, affine)
        (root / "models").mkdir()
        module = stage_models(root / "models", args.network, growth)
        server_args = ["--models", str(root / "models"), "--no-bundled_models", "--device", args.device]
        server_args += ["--torch_threads", str(args.threads)] if args.threads else []
        with start_server(root / "workspace", server_args, startup_timeout=180, log_path=root / "server.log",
                          cwd=REPO) as server, server.client(timeout=300) as client:
            with open(image_path, "rb") as handle:
                created = client.put("/session/", params={"expiry": "600"}, files={"image": (image_path.name, handle)})
            created.raise_for_status()
            session_id = created.json()["session_id"]
            module, batch = module.to(args.device), torch.randn(1, 3, 96, 96, 96, device=args.device)
            bare_forward_seconds(module, batch)  # warm-up
            for model in MODELS:
                click(client, session_id, model, points[0], truth)
            for point in points:
                forwards.append(bare_forward_seconds(module, batch))
                for model in MODELS:
                    rows[model].append(click(client, session_id, model, point, truth))
        log = server.output()
    forward = statistics.median(forwards)
    server_times = {model: [float(t) for t in re.findall(
        rf"deepgrow {model} on session \S+ \(.*?\): ([0-9.]+) s", log)][1:] for model in MODELS}  # not the warm-up
    extent = 2 * SEMI_AXES_MM
    print(f"volume {'x'.join(map(str, SHAPE))} @ {'x'.join(map(str, SPACING))} mm, structure "
          f"{'x'.join(f'{e:.0f}' for e in extent)} mm (crop 96^3 @ 2 mm = 192 mm), network {args.network}, "
          f"torch threads {threads}, crop_growth {growth}")
    print(f"1-min load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after ({os.cpu_count()} CPUs)")
    print(f"bare forward on 1x3x96x96x96: median {forward * 1000:.0f} ms over {len(forwards)}, interleaved with the "
          f"clicks (min {min(forwards) * 1000:.0f}, max {max(forwards) * 1000:.0f})")
    for model in MODELS:
        report(model, rows[model], forward, server_times[model])


if __name__ == "__main__":
    main()

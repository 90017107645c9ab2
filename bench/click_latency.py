#!/usr/bin/env python
"""DeepGrow 3D click latency through a real aiaa-server process, compared with the bare network forward.

1. Generates a 512×512×120 CT-like abdomen phantom (aiaa_demo.phantoms, spacing 0.8×0.8×2.5 mm).
2. Starts `python -m aiaa_server` on a free loopback port (tests/support/server.py), uploads the volume
   once (PUT /session/).
3. Performs --clicks DeepGrow clicks (POST /v1/deepgrow?model=demo_deepgrow_3d&session_id=…) like a user:
   first click inside an organ, then corrective clicks on the largest error region of the previous result;
   after 5 clicks (or when nothing is left to correct) the next organ is started.  Only the HTTP round trip
   is timed (the click simulation on the client side is not).
4. Times the bare model forward (models/model.ts, TorchScript as `torch.jit.load` gives it) on a tensor of the
   crop shape the server feeds it (3 × the config's DeepgrowCropd spatial_size) with the server's thread count,
   and the same network as the server's engine runs it, before each click.
Prints median / p95 click latency, each click's crop passes, and the ratios to the median bare forward (one bare
forward runs before each click, so load on the machine hits both).

Usage: python bench/click_latency.py [--clicks 24] [--seed 0] [--threads 0]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from aiaa_demo.phantoms import ORGAN_LABELS, Phantom, make_abdomen_phantom, save_nifti
from aiaa_demo.synthetic_shapes import Clicks, first_click, next_click
from aiaa_server.imaging.formats import ImageFormat
from aiaa_server.imaging.io import decode_result
from tests.support.server import LiveServer, start_server

MODEL = "demo_deepgrow_3d"
ORGANS = ("spleen", "liver", "left_kidney", "right_kidney", "stomach")


def start(workspace: Path, threads: int, device: str = "cpu") -> LiveServer:
    args = ["--device", device, *(["--torch_threads", str(threads)] if threads else [])]
    return start_server(workspace, args, startup_timeout=180, log_path=workspace.parent / "server.log", cwd=REPO)


def decode(response: httpx.Response) -> tuple[np.ndarray, dict]:
    """The result mask and the result JSON of a multipart DeepGrow answer."""
    from email.parser import BytesParser
    from email.policy import HTTP

    message = BytesParser(policy=HTTP).parsebytes(
        f"Content-Type: {response.headers['content-type']}\r\n\r\n".encode() + response.content)
    mask, result = None, {}
    for part in message.iter_parts():
        if part.get_filename():
            array, _ = decode_result(part.get_payload(decode=True), ImageFormat.NIFTI_GZ)
            mask = np.asarray(array) > 0
        elif part.get_content_type() == "application/json":
            result = json.loads(part.get_payload(decode=True))
    if mask is None:
        raise RuntimeError("no image part in the response")
    return mask, result


class BareForward:
    """The model's TorchScript forward on a tensor of the crop shape the server feeds it, timed one call at a
    time so that calls can be interleaved with the clicks (machine noise then hits both)."""

    def __init__(self, device: str = "cpu") -> None:
        self.device = device
        config = json.loads((REPO / "models" / MODEL / "config" / "config_aiaa.json").read_text())
        self.size = next(t["args"]["spatial_size"] for t in config["pre_transforms"]
                         if t["name"].endswith("DeepgrowCropd"))
        self.module = torch.jit.load(str(REPO / "models" / MODEL / "models" / "model.ts"), map_location=device).eval()
        self.batch = torch.rand(1, 3, *self.size, device=device)
        # the network as the server runs it (engines: .pt2 first, oneDNN convolutions on the CPU)
        from aiaa_server.engines.torchscript import TorchScriptPool
        from aiaa_server.mmar.loader import find_model_file

        served_file = find_model_file(REPO / "models" / MODEL)
        assert served_file is not None
        self.served = TorchScriptPool().get(served_file, torch.device(device), MODEL)
        self.times: list[float] = []
        self.served_times: list[float] = []
        self.seconds()  # warm-up (TorchScript profiling runs), not recorded
        self.times.clear()
        self.served_times.clear()

    def seconds(self) -> float:
        with torch.inference_mode():
            started = time.perf_counter()
            self.module(self.batch)
            if self.device == "cuda":
                torch.cuda.synchronize()
            elapsed = time.perf_counter() - started
            started = time.perf_counter()
            self.served(self.batch)
            if self.device == "cuda":
                torch.cuda.synchronize()
            self.served_times.append(time.perf_counter() - started)
        self.times.append(elapsed)
        return elapsed


def click_through_organs(client: httpx.Client, session_id: str, phantom: Phantom, count: int,
                         forward: BareForward) -> tuple[list[float], list[int]]:
    """`count` clicks, each timed (HTTP round trip only): a first click per organ, then up to 4 corrections;
    a bare forward runs before each click. Returns the latencies and each click's `crop_passes`."""
    spacing = phantom.spacing
    latencies: list[float] = []
    passes: list[int] = []
    organ_index, clicks, truth = -1, Clicks(), np.zeros(phantom.shape, bool)
    while len(latencies) < count:
        if clicks.count == 0 or clicks.count >= 5:
            organ_index += 1
            truth = phantom.labels == ORGAN_LABELS[ORGANS[organ_index % len(ORGANS)]]
            point = first_click(truth, spacing=spacing)
            clicks = Clicks(foreground=[point], current=point)
        forward.seconds()
        started = time.perf_counter()
        response = client.post("/v1/deepgrow", params={"model": MODEL, "session_id": session_id},
                               data={"params": json.dumps(clicks.params())})
        latencies.append(time.perf_counter() - started)
        response.raise_for_status()
        mask, result = decode(response)
        passes.append(int(result.get("crop_passes", 1)))
        correction = next_click(truth, mask, spacing=spacing)
        if correction is None:
            clicks = Clicks()
            continue
        (clicks.foreground if correction[0] else clicks.background).append(correction[1])
        clicks.current = correction[1]
    return latencies, passes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clicks", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: the server's default)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="the server's --device")
    args = parser.parse_args()
    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)

    rng = np.random.default_rng(args.seed)
    phantom = make_abdomen_phantom(rng, shape=(512, 512, 120), spacing=(0.8, 0.8, 2.5))
    with tempfile.TemporaryDirectory() as tmp:
        image_path = Path(tmp) / "abdomen.nii.gz"
        save_nifti(phantom, image_path)
        with start(Path(tmp) / "workspace", args.threads, args.device) as server, server.client(timeout=120) as client:
            with open(image_path, "rb") as handle:
                created = client.put("/session/", params={"expiry": "600"}, files={"image": (image_path.name, handle)})
            created.raise_for_status()
            forward = BareForward(args.device)
            latencies, passes = click_through_organs(client, created.json()["session_id"], phantom, args.clicks,
                                                     forward)
        server_times = [float(t) for t in re.findall(r"deepgrow \S+ on session \S+ \(.*?\): ([0-9.]+) s",
                                                      server.output())]
    bare = statistics.median(forward.times)
    per_forward = [latency / (count * time) for latency, count, time in zip(latencies, passes, forward.times)]
    ordered = sorted(latencies)
    median = statistics.median(ordered)
    p95 = ordered[min(len(ordered) - 1, int(np.ceil(0.95 * len(ordered))) - 1)]
    print(f"volume 512x512x120 @ 0.8x0.8x2.5 mm, {len(latencies)} DeepGrow 3D clicks via session, "
          f"torch threads {threads}")
    print(f"click latency: median {median * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms, "
          f"min {ordered[0] * 1000:.0f} ms, max {ordered[-1] * 1000:.0f} ms")
    if server_times:
        print(f"server-side (session image → encoded result) median {statistics.median(server_times) * 1000:.0f} ms; "
              "the rest is HTTP, queueing and the response transfer")
    print(f"bare model forward on 1x3x{'x'.join(map(str, forward.size))} (one before each click): "
          f"median {bare * 1000:.0f} ms")
    one_pass = [latency for latency, count in zip(latencies, passes) if count == 1]
    print(f"crop passes per click: {dict(sorted(Counter(passes).items()))}")
    print(f"ratio click median / bare forward median: {median / bare:.2f}x")
    if one_pass:
        print(f"ratio one-pass click median / bare forward median: {statistics.median(one_pass) / bare:.2f}x "
              f"({len(one_pass)} clicks)")
    print(f"median per-click ratio latency / (passes x the forward timed just before it): "
          f"{statistics.median(per_forward):.2f}x")
    served = statistics.median(forward.served_times)
    print(f"the forward as the server runs it ({forward.served.module.__class__.__name__}, oneDNN on the CPU): median "
          f"{served * 1000:.0f} ms = {served / bare:.2f}x the TorchScript forward; one-pass click median / it: "
          f"{statistics.median(one_pass or latencies) / served:.2f}x")


if __name__ == "__main__":
    main()

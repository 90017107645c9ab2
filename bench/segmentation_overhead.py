"""Segmentation over HTTP (a real server process) vs the same pipeline + model called in-process (the floor).

A 512×512×120 CT-like phantom (.nii.gz, int16) and the bundled demo spleen model. HTTP time is the
client's wall time for upload → multipart result; in-process is what the server does with that request, called
directly and interleaved with the HTTP runs: decode the `.nii.gz`, the pipeline (pre-transforms, sliding window,
post-transforms incl. restoring the input grid) and encode the result. Target (issue 21): HTTP ≤ 1.05× that; the
ratio to the pipeline alone (without decode and encode) is printed too.

    python bench/segmentation_overhead.py [--shape 512 512 120] [--repeats 3] [--workers 1]

Also imported by the other bench scripts for the phantom and the server.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx
import nibabel as nib
import numpy as np
import torch

from aiaa_demo.phantoms import Phantom, make_abdomen_phantom
from aiaa_server.engines.torchscript import TorchScriptPool
from aiaa_server.imaging.formats import ImageFormat
from aiaa_server.imaging.io import encode_volume, gzip_compress, read_volume
from aiaa_server.mmar.registry import ModelRegistry
from tests.support.server import LiveServer, start_server

SPLEEN = "demo_spleen_ct_segmentation"
BUNDLE = "spleen_ct_segmentation"


def make_phantom(shape: tuple[int, int, int], seed: int = 0) -> Phantom:
    return make_abdomen_phantom(np.random.default_rng(seed), shape=shape, spacing=(0.8, 0.8, 2.5))


def write_phantom(path: Path, shape: tuple[int, int, int], seed: int = 0, phantom: Phantom | None = None) -> Path:
    """A CT-like int16 .nii.gz (spacing 0.8×0.8×2.5 mm)."""
    phantom = phantom or make_phantom(shape, seed)
    image = nib.Nifti1Image(np.clip(phantom.image, -1024, 3071).astype(np.int16), phantom.affine)
    path.write_bytes(gzip_compress(image.to_bytes(), 1))
    return path


def start(workspace: Path, *args: str) -> LiveServer:
    return start_server(workspace, ["--log_level", "warning", *args], startup_timeout=300)


def bench_model(tmp: Path, bundle: bool) -> tuple[str, Path, list[str]]:
    """(model name, model folder, extra server arguments): the bundled demo spleen MMAR, or (`bundle`) a
    zoo-shaped spleen bundle written under `tmp` and served from `--models`."""
    if not bundle:
        return SPLEEN, ROOT / "models" / SPLEEN, []
    from aiaa_demo.zoo_bundles import write_bundle

    folder = write_bundle(tmp / "bundles" / BUNDLE, BUNDLE, seed=0)
    return BUNDLE, folder, ["--models", str(folder.parent), "--no-bundled_models"]


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def segment_http(client: httpx.Client, path: Path, model: str = SPLEEN) -> float:
    started = time.perf_counter()
    with open(path, "rb") as handle:
        response = client.post("/v1/segmentation", params={"model": model}, data={"params": "{}"},
                               files={"datapoint": (path.name, handle)})
    elapsed = time.perf_counter() - started
    response.raise_for_status()
    return elapsed


class InProcess:
    """The server's own work on one request, called in-process: decode the upload, the pipeline (input tensor
    as the service builds it, pre-transforms, sliding window, post-transforms, restore), encode the result."""

    def __init__(self, folder: Path, threads: int, device: str = "cpu") -> None:
        torch.set_num_threads(threads)
        model = ModelRegistry(TorchScriptPool(), device).load(folder)
        assert model is not None
        self.pipeline = model.pipeline

    def run(self, path: Path) -> dict[str, float]:
        """Seconds per step: decode, pipeline, encode."""
        pipeline = self.pipeline
        started = time.perf_counter()
        volume = read_volume(path, path.name)
        decoded = time.perf_counter()
        data = {pipeline.input_key: pipeline.input_tensor(volume)}
        output = pipeline.run(data)
        ran = time.perf_counter()
        encode_volume(output.image, volume, ImageFormat.NIFTI_GZ, compress=True, gzip_level=1)
        encoded = time.perf_counter()
        return {"decode": decoded - started, "pipeline": ran - decoded, "encode": encoded - ran}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(512, 512, 120))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--bundle", action="store_true", help="a zoo-shaped MONAI bundle instead of the demo MMAR")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="the server's --device")
    args = parser.parse_args()
    threads = max(1, len(os.sched_getaffinity(0)) // args.workers)
    http: list[float] = []
    steps: dict[str, list[float]] = {"decode": [], "pipeline": [], "encode": []}
    with tempfile.TemporaryDirectory(prefix="aiaa-bench-") as tmp:
        path = write_phantom(Path(tmp) / "phantom.nii.gz", tuple(args.shape))
        name, folder, extra = bench_model(Path(tmp), args.bundle)
        print(f"phantom {tuple(args.shape)} int16, {path.stat().st_size / 2**20:.1f} MiB .nii.gz; model {name}")
        local = InProcess(folder, threads, args.device)
        server = start(Path(tmp) / "workspace", "--workers", str(args.workers), "--device", args.device, *extra)
        try:
            with server.client(timeout=600) as client:
                segment_http(client, path, name), local.run(path)  # warm-up (TorchScript's first runs)
                for _ in range(args.repeats):  # interleaved: machine noise hits both sides
                    http.append(segment_http(client, path, name))
                    for key, value in local.run(path).items():
                        steps[key].append(value)
        finally:
            server.stop()
    whole = [sum(values) for values in zip(*steps.values())]
    median = statistics.median
    print(f"in-process, {threads} torch threads: decode {median(steps['decode']):.3f} s, pipeline "
          f"{median(steps['pipeline']):.3f} s, encode .nii.gz {median(steps['encode']):.3f} s; whole {median(whole):.3f} s")
    print(f"HTTP end to end: median {median(http):.3f} s  {[round(t, 3) for t in http]}")
    print(f"ratio HTTP / in-process (decode + pipeline + encode): median {median(http) / median(whole):.3f}, per "
          f"repeat {[round(h / w, 3) for h, w in zip(http, whole)]}  (target <= 1.05)")
    print(f"ratio HTTP / pipeline alone (no decode, no encode): median {median(http) / median(steps['pipeline']):.3f}")


if __name__ == "__main__":
    main()

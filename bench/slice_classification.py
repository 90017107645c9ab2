"""A 2D classifier over a CT volume slice by slice (`meta_data.batch: "slices"`) over HTTP, vs the same slices
classified in-process (the floor), vs one HTTP request per slice (what a client did without slice batches).

The model: MONAI's 2D DenseNet121 (seeded weights, TorchScript), 1 channel in, 2 classes, each slice scaled
[-1000, 1000] HU -> 0..1 and resized to `--size`² (Resized, area), softmax. The volume: a CT-like phantom
(.nii.gz, int16). The three measurements are interleaved, repeat by repeat, against one server process; the
floor runs `pipeline.run` on each already-decoded slice in this process while the server idles.

    python bench/slice_classification.py [--shape 512 512 40] [--size 224] [--repeats 3] [--threads 1]

`--threads` sets the torch threads of both the server (`--torch_threads`) and this process: on a shared machine
one thread each keeps the two from spinning against other people's work (2 threads on 2 busy cores made single
forwards vary 0.3-2 s here).
"""

from __future__ import annotations

import argparse
import json
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
from monai.networks.nets import DenseNet121
from segmentation_overhead import start, write_phantom

from aiaa_server.engines.torchscript import TorchScriptPool
from aiaa_server.imaging.io import read_volume
from aiaa_server.inference.slice_batch import volume_slices
from aiaa_server.inference.tensors import volume_to_tensor
from aiaa_server.mmar.registry import ModelRegistry

MODEL = "bench_slice_classifier"


def write_classifier(folder: Path, size: int, max_slices: int) -> Path:
    """A 2D classification MMAR (DenseNet121, seeded) declaring slice batches of up to `max_slices`."""
    config = {
        "version": "1", "type": "classification", "labels": ["normal", "abnormal"],
        "description": "bench: 2D DenseNet121 over CT slices",
        "pre_transforms": [
            {"name": "LoadImaged", "args": {"keys": "image"}},
            {"name": "EnsureChannelFirstd", "args": {"keys": "image", "channel_dim": "no_channel"}},
            {"name": "ScaleIntensityRanged", "args": {"keys": "image", "a_min": -1000, "a_max": 1000,
                                                      "b_min": 0.0, "b_max": 1.0, "clip": True}},
            {"name": "Resized", "args": {"keys": "image", "spatial_size": [size, size], "mode": "area"}},
        ],
        "inference": {"input": "image", "output": "pred",
                      "meta_data": {"spatial_dims": 2, "batch": "slices", "max_slices": max_slices},
                      "AIAA": {"name": "aiaa.inference.PyTorchInference", "args": {"scanning_window": False}}},
        "post_transforms": [{"name": "Activationsd", "args": {"keys": "pred", "softmax": True}}],
        "writer": {"name": "aiaa.transforms.Writer", "args": {"image": None, "json": "pred"}},
    }
    (folder / "config").mkdir(parents=True)
    (folder / "models").mkdir()
    (folder / "config" / "config_aiaa.json").write_text(json.dumps(config, indent=2))
    torch.manual_seed(0)
    network = DenseNet121(spatial_dims=2, in_channels=1, out_channels=2).eval()
    torch.jit.save(torch.jit.script(network), str(folder / "models" / "model.ts"))
    return folder


def write_slices(path: Path, folder: Path) -> list[Path]:
    """Each slice of the volume at `path` as its own 2D .nii.gz (what a client without slice batches sends)."""
    image = nib.load(path)
    data = np.asanyarray(image.dataobj)
    paths = []
    for k in range(data.shape[-1]):
        target = folder / f"slice_{k:03d}.nii.gz"
        nib.save(nib.Nifti1Image(np.ascontiguousarray(data[..., k]), image.affine), target)
        paths.append(target)
    return paths


def classify_http(client: httpx.Client, path: Path) -> tuple[float, dict]:
    started = time.perf_counter()
    with open(path, "rb") as handle:
        response = client.post("/v1/inference", params={"model": MODEL}, data={"params": "{}"},
                               files={"datapoint": (path.name, handle)})
    elapsed = time.perf_counter() - started
    response.raise_for_status()
    return elapsed, response.json()


def floor(model: object, path: Path) -> float:
    """Decode once (not timed), then `pipeline.run` on every slice: the work the server cannot avoid."""
    volume = read_volume(path, path.name)
    pipeline = model.pipeline  # type: ignore[attr-defined]
    started = time.perf_counter()
    for image in volume_slices(volume):
        pipeline.run({pipeline.input_key: volume_to_tensor(image)})
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(512, 512, 40))
    parser.add_argument("--size", type=int, default=224, help="the side the slices are resized to")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads here and in the server (0: cores)")
    args = parser.parse_args()
    threads = args.threads or max(1, len(os.sched_getaffinity(0)))
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="aiaa-bench-") as tmp:
        root = Path(tmp)
        path = write_phantom(root / "phantom.nii.gz", tuple(args.shape))
        slices = write_slices(path, root)
        folder = write_classifier(root / "models" / MODEL, args.size, max(1, args.shape[2]))
        model = ModelRegistry(TorchScriptPool()).load(folder)
        assert model is not None
        print(f"phantom {tuple(args.shape)} int16 ({path.stat().st_size / 2**20:.1f} MiB .nii.gz); DenseNet121 2D "
              f"at {args.size}²; {threads} torch threads here and in the server")
        server = start(root / "workspace", "--models", str(root / "models"), "--no-bundled_models",
                       "--torch_threads", str(threads))
        results: dict[str, list[float]] = {"floor": [], "batch": [], "per_slice": []}
        try:
            with server.client(timeout=600) as client:
                _, answer = classify_http(client, path)  # warm-up (TorchScript profiling runs)
                floor(model, path)
                assert len(answer["batch"]) == args.shape[2], answer.keys()
                for _ in range(args.repeats):
                    results["floor"].append(floor(model, path))
                    results["batch"].append(classify_http(client, path)[0])
                    results["per_slice"].append(sum(classify_http(client, s)[0] for s in slices))
        finally:
            server.stop()
    report(results, args.shape[2])


def report(results: dict[str, list[float]], count: int) -> None:
    medians = {key: statistics.median(values) for key, values in results.items()}
    for key, label in (("floor", "in-process floor (pipeline.run per slice)"),
                       ("batch", "HTTP, one request, batch \"slices\""),
                       ("per_slice", f"HTTP, {count} requests, one per slice")):
        values = ", ".join(f"{v:.2f}" for v in results[key])
        print(f"{label}: median {medians[key]:.2f} s ({medians[key] / count * 1000:.0f} ms/slice)  [{values}]")
    print(f"ratio batch / floor: median {medians['batch'] / medians['floor']:.3f}")
    print(f"ratio per-slice requests / batch: median {medians['per_slice'] / medians['batch']:.3f}")


if __name__ == "__main__":
    main()

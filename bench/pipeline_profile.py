"""Where the in-process segmentation pipeline spends its time, against the bare sliding-window forward.

Builds the bundled demo spleen model in-process (as `segmentation_overhead.py` does), decodes a CT-like
phantom once, then per repeat, interleaved: the whole pipeline transform by transform (pre-transforms,
network, post-transforms, writer, NIfTI-gz encode), and the bare forward —
`monai.inferers.sliding_window_inference` with the model's roi/overlap/sw_batch_size on the already
preprocessed tensor, calling the loaded engine (for a bundle: its own `inferer`, e.g. a `SlidingWindowInferer`
with the config's roi_size/overlap/sw_batch_size/mode, over the engine). Prints a per-step table (median seconds) and the ratio
pipeline / bare forward (target ≤ 1.5).

    python bench/pipeline_profile.py [--shape 512 512 120] [--repeats 3] [--threads 2] [--bundle]

The reference column is the all-MONAI path in the same run (float32 input, MONAI `Spacingd` and
`AsDiscreted`); `Restored`, `ExtremePointsd`, `BoundingBoxd` are the same code in both. A bundle's
preprocessing and postprocessing `Compose` are timed transform by transform (opened, as `Compose` runs them).
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import torch
from monai.inferers import sliding_window_inference
from segmentation_overhead import bench_model, make_phantom

from aiaa_server.bundles.serving import BundleInference
from aiaa_server.imaging.formats import ImageFormat
from aiaa_server.imaging.io import Volume, encode_volume
from aiaa_server.inference.fast_paths import configured_transforms, opened
from aiaa_server.inference.pipeline import ModelPipeline
from aiaa_server.inference.tensors import volume_to_tensor
from aiaa_server.mmar.registry import ModelRegistry


def _unwrapped(transforms: list) -> list:
    return configured_transforms(transforms)


def timed_steps(pipeline: ModelPipeline, volume: Volume, reference: bool) -> tuple[dict[str, float], torch.Tensor]:
    """Seconds per step of one whole run, and the preprocessed network input (C, *spatial). `reference`: the
    all-MONAI path (float32 input, MONAI's Spacingd and AsDiscreted instead of the fast paths)."""
    times: dict[str, float] = {}
    pre, post = opened(pipeline.pre_transforms), opened(pipeline.post_transforms)
    if reference:
        pre, post = _unwrapped(pre), _unwrapped(post)
    started = time.perf_counter()
    data = {pipeline.input_key: volume_to_tensor(volume) if reference else pipeline.input_tensor(volume)}
    times["pre: input tensor"] = time.perf_counter() - started
    for index, transform in enumerate(pre):
        started = time.perf_counter()
        data = transform(data)
        times[f"pre[{index}] {type(transform).__name__}"] = time.perf_counter() - started
    network_input = data[pipeline.input_key]
    started = time.perf_counter()
    data = pipeline.infer(data)
    times["network (pipeline.infer)"] = time.perf_counter() - started
    for index, transform in enumerate(post):
        started = time.perf_counter()
        data = transform(data)
        times[f"post[{index}] {type(transform).__name__}"] = time.perf_counter() - started
    started = time.perf_counter()
    output = pipeline.writer(data)
    times["writer"] = time.perf_counter() - started
    started = time.perf_counter()
    encode_volume(output.image, volume, ImageFormat.NIFTI_GZ, compress=True, gzip_level=1)
    times["encode .nii.gz"] = time.perf_counter() - started
    return times, network_input


def bare_forward(pipeline: ModelPipeline, network_input: torch.Tensor) -> float:
    """Seconds of MONAI's sliding window over the engine on the preprocessed input: with the MMAR's args, or a
    bundle's own inferer (its config holds the sliding window settings, `pipeline.args` none)."""
    args = pipeline.args
    batch = torch.as_tensor(network_input).as_subclass(torch.Tensor).float()[None]
    started = time.perf_counter()
    with torch.inference_mode():
        if isinstance(pipeline.network, BundleInference):
            pipeline.network.inferer(batch.to(pipeline.network.engine.device), pipeline.network.engine)
        else:
            sliding_window_inference(batch, roi_size=list(args.roi)[-3:], sw_batch_size=args.sw_batch_size,
                                     predictor=pipeline.engine, overlap=args.overlap, mode=args.mode)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(512, 512, 120))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bundle", action="store_true", help="a zoo-shaped MONAI bundle instead of the demo MMAR")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    phantom = make_phantom(tuple(args.shape))
    volume = Volume(array=phantom.image.clip(-1024, 3071).astype("int16"), affine=phantom.affine,
                    format=ImageFormat.NIFTI, name="phantom")
    with tempfile.TemporaryDirectory(prefix="aiaa-bench-") as tmp:
        name, folder, _ = bench_model(Path(tmp), args.bundle)
        model = ModelRegistry(__import__("aiaa_server.engines.torchscript", fromlist=["x"]).TorchScriptPool()).load(
            folder, name)
        assert model is not None
        pipeline = model.pipeline
        steps: dict[str, dict[str, list[float]]] = {"fast": {}, "reference": {}}
        bare: list[float] = []
        for repeat in range(args.repeats + 1):  # repeat 0 warms up
            measured = {path: timed_steps(pipeline, volume, path == "reference") for path in ("fast", "reference")}
            forward = bare_forward(pipeline, measured["fast"][1])
            if repeat == 0:
                continue
            for path, (times, _) in measured.items():
                for key, value in times.items():
                    steps[path].setdefault(key, []).append(value)
            bare.append(forward)
    network_input = measured["fast"][1]
    inferer = pipeline.network.inferer if isinstance(pipeline.network, BundleInference) else None
    if inferer is not None:
        print(f"bundle inferer {type(inferer).__name__}: roi {getattr(inferer, 'roi_size', None)}, overlap "
              f"{getattr(inferer, 'overlap', None)}, sw_batch_size {getattr(inferer, 'sw_batch_size', None)}, "
              f"mode {getattr(inferer, 'mode', None)}")
    print(f"model {name}; phantom {tuple(args.shape)} int16; input to the network {tuple(network_input.shape)}; "
          f"{args.threads} torch threads; median of {args.repeats} (interleaved: fast, reference, bare)")
    _report(steps, bare, args.repeats)


def _report(steps: dict[str, dict[str, list[float]]], bare: list[float], repeats: int) -> None:
    print(f"  {'step (fast)':40s} {'fast':>8s}   {'step (reference)':40s} {'reference':>9s}")
    for fast, reference in itertools.zip_longest(steps["fast"].items(), steps["reference"].items()):
        # a fused pair (Invertd + AsDiscreted) is one step on the fast side and two on the reference side
        left = f"{fast[0]:40s} {statistics.median(fast[1]):8.3f}" if fast else " " * 49
        right = f"{reference[0]:40s} {statistics.median(reference[1]):9.3f}" if reference else ""
        print(f"  {left}   {right}")
    totals = {path: [sum(v[i] for v in steps[path].values()) for i in range(repeats)] for path in steps}
    print(f"  {'pipeline total':45s} {statistics.median(totals['fast']):8.3f} "
          f"{statistics.median(totals['reference']):10.3f}")
    print(f"  {'bare sliding_window_inference':45s} {statistics.median(bare):8.3f}")
    for path in ("fast", "reference"):
        ratios = [t / b for t, b in zip(totals[path], bare)]
        print(f"ratio {path} pipeline / bare forward: median {statistics.median(ratios):.3f}  per repeat "
              f"{', '.join(f'{r:.3f}' for r in ratios)}  (target <= 1.5)")
    overhead = [(t - b) / (r - b) for t, r, b in zip(totals["fast"], totals["reference"], bare)]
    print(f"non-forward time fast / reference: median {statistics.median(overhead):.3f}")


if __name__ == "__main__":
    main()

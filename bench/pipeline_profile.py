"""Where the in-process segmentation pipeline spends its time, against the bare sliding-window forward.

Builds the bundled demo spleen model in-process (as `segmentation_overhead.py` does), decodes a CT-like
phantom once, then per repeat, interleaved: the whole pipeline transform by transform (pre-transforms,
network, post-transforms, writer, NIfTI-gz encode), and the bare forward —
`monai.inferers.sliding_window_inference` with the model's roi/overlap/sw_batch_size on the already
preprocessed tensor, calling the loaded engine. Prints a per-step table (median seconds) and the ratio
pipeline / bare forward (target ≤ 1.5).

    python bench/pipeline_profile.py [--shape 512 512 120] [--repeats 3] [--threads 2] [--bundle]
"""

from __future__ import annotations

import argparse
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

from aiaa_server.imaging.formats import ImageFormat
from aiaa_server.imaging.io import Volume, encode_volume
from aiaa_server.inference.pipeline import ModelPipeline
from aiaa_server.mmar.registry import ModelRegistry


def timed_steps(pipeline: ModelPipeline, volume: Volume) -> tuple[dict[str, float], torch.Tensor]:
    """Seconds per step of one whole run, and the preprocessed network input (C, *spatial)."""
    times: dict[str, float] = {}
    started = time.perf_counter()
    data = {pipeline.input_key: pipeline.input_tensor(volume)}
    times["pre: input_tensor"] = time.perf_counter() - started
    for index, transform in enumerate(pipeline.pre_transforms):
        started = time.perf_counter()
        data = transform(data)
        times[f"pre[{index}] {type(transform).__name__}"] = time.perf_counter() - started
    network_input = data[pipeline.input_key]
    started = time.perf_counter()
    data = pipeline.infer(data)
    times["network (pipeline.infer)"] = time.perf_counter() - started
    for index, transform in enumerate(pipeline.post_transforms):
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
    """Seconds of MONAI's sliding window over the engine on the preprocessed input."""
    args = pipeline.args
    batch = torch.as_tensor(network_input).as_subclass(torch.Tensor).float()[None]
    started = time.perf_counter()
    with torch.inference_mode():
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
        steps: dict[str, list[float]] = {}
        bare: list[float] = []
        for repeat in range(args.repeats + 1):  # repeat 0 warms up
            times, network_input = timed_steps(pipeline, volume)
            forward = bare_forward(pipeline, network_input)
            if repeat == 0:
                continue
            for key, value in times.items():
                steps.setdefault(key, []).append(value)
            bare.append(forward)
    print(f"model {name}; phantom {tuple(args.shape)} int16; input to the network {tuple(network_input.shape)}; "
          f"{args.threads} torch threads; median of {args.repeats}")
    for key, values in steps.items():
        print(f"  {key:45s} {statistics.median(values):7.3f} s")
    totals = [sum(values[i] for values in steps.values()) for i in range(args.repeats)]
    print(f"  {'pipeline total':45s} {statistics.median(totals):7.3f} s")
    print(f"  {'bare sliding_window_inference':45s} {statistics.median(bare):7.3f} s")
    ratios = [t / b for t, b in zip(totals, bare)]
    print(f"ratio pipeline / bare forward: median {statistics.median(ratios):.3f}  per repeat "
          f"{', '.join(f'{r:.3f}' for r in ratios)}  (target <= 1.5)")


if __name__ == "__main__":
    main()

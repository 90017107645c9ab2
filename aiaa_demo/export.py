"""`torch.export` programs of the demo networks: `models/<demo>/models/model.pt2`, what the local engine serves.

Run from the repository root to (re)write a demo's `model.pt2` from the weights of its `models/model.ts` (kept
for Triton, which runs TorchScript only), then check it against the TorchScript file:

    python -m aiaa_demo.export models/demo_deepgrow_3d
    python -m aiaa_demo.export models/demo_deepgrow_3d --out /tmp/model.pt2   # leave the MMAR as it is

(`torch.export.save` files are not byte-for-byte reproducible: a rewrite shows as a change in git.)

The demo UNets (strides 2, 2, 2) take any spatial size divisible by 8, so the program is exported with dynamic
sizes `8 * k` (k >= 1; at least 16 in practice, as for the TorchScript file) and a dynamic batch axis: it serves
whatever crop size, sliding-window ROI or batch a config feeds it. The check runs the config's own input
shape (the `triton_model_config` dims at batch 1 and at `max_batch_size`) and other sizes, on random input.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch

STRIDE = 8  # total stride of the demo UNets: spatial sizes must be multiples of it
MAX_MULTIPLE = 64  # spatial sizes up to STRIDE * MAX_MULTIPLE (512)
MAX_BATCH = 64
TOLERANCE = 1e-4  # largest |pt2 - ts| accepted


def export_program(net: torch.nn.Module, path: Path, channels: int, spatial_dims: int, stride: int = STRIDE) -> None:
    """Export `net` in eval mode with `torch.export` (batch 1..MAX_BATCH, each spatial size a multiple of
    `stride` up to `stride * MAX_MULTIPLE`) and replace `path` atomically (a server may be reading it).

    The example input is small (batch 2, `2 * stride` per side): `torch.export.save` stores it in the file.
    """
    was_training = net.training
    net.eval()
    example = torch.zeros((2, channels, *[2 * stride] * spatial_dims))
    dims: dict[int, object] = {0: torch.export.Dim("batch", min=1, max=MAX_BATCH)}
    for axis in range(spatial_dims):
        dims[2 + axis] = stride * torch.export.Dim(f"size{axis}", min=1, max=MAX_MULTIPLE)
    with torch.no_grad():
        program = torch.export.export(net, (example,), dynamic_shapes=(dims,))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".partial.pt2")
    torch.export.save(program, str(tmp))
    os.replace(tmp, path)
    net.train(was_training)


def check_program(path: Path, reference: Callable[[torch.Tensor], torch.Tensor], shapes: list[tuple[int, ...]],
                  seed: int = 0) -> dict[tuple[int, ...], float]:
    """Reload the `.pt2` file and compare it with `reference` (the eager net or the TorchScript module) on
    random input of each shape.

    Returns:
        The largest absolute output difference per shape (asserted below TOLERANCE, with equal output shapes).
    """
    program = torch.export.load(str(path)).module()
    generator = torch.Generator().manual_seed(seed)
    errors: dict[tuple[int, ...], float] = {}
    for shape in shapes:
        x = torch.randn(shape, generator=generator)
        with torch.inference_mode():
            got, expected = program(x), reference(x)
        assert got.shape == expected.shape, (tuple(got.shape), tuple(expected.shape))
        errors[tuple(shape)] = float((got - expected).abs().max())
        assert errors[tuple(shape)] < TOLERANCE, f"{path} differs from the reference on {shape}: {errors[shape]}"
    return errors


def train_module(mmar: Path) -> ModuleType:
    """The MMAR's `commands/train.py` as a module (its `build_network` builds the eager network)."""
    script = mmar / "commands" / "train.py"
    spec = importlib.util.spec_from_file_location(f"_train_{mmar.name}", script)
    assert spec is not None and spec.loader is not None, script
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def config_shapes(mmar: Path, stride: int = STRIDE) -> list[tuple[int, ...]]:
    """Input shapes to check a demo's program on: the config's declared input (`TRITON.triton_model_config`)
    at batch 1 and at its `max_batch_size`, the config's own spatial size (ROI or crop), and a batch of 2 of
    unequal sizes (multiples of `stride`)."""
    config = json.loads((mmar / "config" / "config_aiaa.json").read_text())
    triton = config["inference"]["TRITON"]["triton_model_config"]
    channels, *spatial = triton["input"][0]["dims"]
    batches = sorted({1, max(1, int(triton.get("max_batch_size", 1)))})
    shapes = [(batch, channels, *spatial) for batch in batches]
    uneven = [stride * (2 + axis) for axis in range(len(spatial))]
    return [*shapes, (2, channels, *uneven)]


def export_demo(mmar: Path, target: Path | None = None) -> dict[tuple[int, ...], float]:
    """Write `mmar/models/model.pt2` (or `target`) from the weights of `mmar/models/model.ts` and check it
    against that file.

    Returns:
        The largest |pt2 - ts| per checked shape.
    """
    torchscript = torch.jit.load(str(mmar / "models" / "model.ts"), map_location="cpu").eval()
    net = train_module(mmar).build_network()
    net.load_state_dict(torchscript.state_dict())
    shapes = config_shapes(mmar)
    channels, spatial_dims = shapes[0][1], len(shapes[0]) - 2
    target = target or mmar / "models" / "model.pt2"
    export_program(net, target, channels, spatial_dims)
    return check_program(target, torchscript, shapes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write each demo MMAR's models/model.pt2 from its model.ts")
    parser.add_argument("mmars", type=Path, nargs="+", help="demo MMAR folders, e.g. models/demo_deepgrow_3d")
    parser.add_argument("--out", type=Path, default=None,
                        help="write here instead of <mmar>/models/model.pt2 (one MMAR only)")
    args = parser.parse_args(argv)
    if args.out is not None and len(args.mmars) != 1:
        parser.error("--out takes one MMAR")
    for mmar in args.mmars:
        target = args.out or mmar / "models" / "model.pt2"
        errors = export_demo(mmar, target)
        checked = ", ".join(f"{list(shape)}: {error:.1e}" for shape, error in errors.items())
        print(f"{target} ({target.stat().st_size / 1e6:.1f} MB); max |pt2 - ts| {checked}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

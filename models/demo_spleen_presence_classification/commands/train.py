#!/usr/bin/env python
"""Train the DEMO spleen-presence classifier on abdominal phantoms (see ``cases.py``).

Each phantom goes through the MMAR's own pre-transforms (built from config/config_aiaa.json by the server's
component loader: EnsureChannelFirst, Orientation RAS, Resize 64x64x32, ScaleIntensityRange), so training sees
exactly what serving sees. ``TinyClassifier`` is trained with Adam and cross-entropy on random batches
(augmented by shifts of up to 4 voxels, intensity scaling by 0.9-1.1 and Gaussian noise), then exported with
``torch.jit.trace`` to ``models/model.ts``.

Then ``python -m aiaa_demo.export models/demo_spleen_presence_classification`` writes the ``models/model.pt2``
the local engine serves (``model.ts`` stays for Triton).

Example (about 5 minutes on one CPU thread)::

    python commands/train.py --num-train 240 --steps 600 --seed 0
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from cases import MMAR_DIR, TinyClassifier, case

from aiaa_demo.training import config_pre_transforms
from aiaa_server.imaging.formats import ImageFormat
from aiaa_server.imaging.io import Volume
from aiaa_server.inference.tensors import volume_to_tensor

INPUT_SHAPE = (1, 1, 64, 64, 32)


def build_network() -> torch.nn.Module:
    """The network (`aiaa_demo.export` rebuilds it to write `models/model.pt2` from `models/model.ts`)."""
    return TinyClassifier()


def preprocessed(seed: int, stream: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 1, 64, 64, 32) inputs and (N,) labels of cases 0..count-1 of `stream`, through the config's transforms."""
    transforms = config_pre_transforms(MMAR_DIR / "config" / "config_aiaa.json")
    images, labels = [], []
    for index in range(count):
        phantom, label = case(seed, stream, index)
        data = {"image": volume_to_tensor(Volume(phantom.image, phantom.affine, ImageFormat.NIFTI_GZ))}
        for transform in transforms:
            data = transform(data)
        images.append(torch.as_tensor(np.asarray(data["image"]), dtype=torch.float32))
        labels.append(label)
    return torch.stack(images), torch.tensor(labels)


def augmented(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """`batch` shifted by up to 4 voxels per axis (wrapping), intensities scaled by 0.9-1.1, plus noise."""
    shifts = [int(v) for v in torch.randint(-4, 5, (3,), generator=generator)]
    moved = torch.roll(batch, shifts=shifts, dims=(2, 3, 4))
    scale = 0.9 + 0.2 * torch.rand((len(batch), 1, 1, 1, 1), generator=generator)
    return moved * scale + 0.02 * torch.randn(batch.shape, generator=generator)


def train(args: argparse.Namespace) -> torch.nn.Module:
    """Train on `args.num_train` phantoms for `args.steps` steps; print the loss and the training accuracy."""
    torch.manual_seed(args.seed)
    started = time.perf_counter()
    images, labels = preprocessed(args.seed, 0, args.num_train)
    print(f"{len(labels)} training phantoms preprocessed in {time.perf_counter() - started:.0f} s", flush=True)
    net = build_network()
    optimizer = torch.optim.Adam(net.parameters(), lr=args.lr)
    generator = torch.Generator().manual_seed(args.seed)
    for step in range(1, args.steps + 1):
        net.train()
        pick = torch.randint(len(labels), (args.batch,), generator=generator)
        batch = augmented(images[pick], generator)
        loss = torch.nn.functional.cross_entropy(net(batch), labels[pick])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 25 == 0 or step == args.steps:
            print(f"step {step}: loss {loss.item():.4f}", flush=True)
    net.eval()
    with torch.no_grad():
        accuracy = (net(images).argmax(1) == labels).float().mean().item()
    print(f"training accuracy {accuracy:.3f} after {time.perf_counter() - started:.0f} s", flush=True)
    return net


def export(net: torch.nn.Module, out: Path) -> None:
    """`torch.jit.trace` to `out` (atomically), checked against the eager network on another batch size."""
    traced = torch.jit.trace(net.eval(), torch.rand(INPUT_SHAPE))
    tmp = out.with_suffix(".tmp")
    torch.jit.save(traced, str(tmp))
    tmp.replace(out)
    check = torch.rand(2, *INPUT_SHAPE[1:])
    with torch.no_grad():
        assert torch.allclose(torch.jit.load(str(out))(check), net(check), atol=1e-5)
    print(f"exported {out} ({out.stat().st_size / 1e6:.2f} MB)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-train", type=int, default=240)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=MMAR_DIR / "models" / "model.ts")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    export(train(args), args.out)


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Train the DEMO spleen CT segmentation model on synthetic abdominal phantoms (aiaa_demo.phantoms).

The phantoms come from ``aiaa_demo.phantoms.make_abdomen_phantom``; they are generated in memory (no
files) and preprocessed once by the MMAR's own pre-transforms, built from config/config_aiaa.json with the
server's component loader (EnsureChannelFirst, Orientation RAS, Spacing, ScaleIntensityRange), so training
sees exactly what serving sees; the spleen label follows the image through the spatial transforms (nearest).
A small 3D UNet is trained on random ROI-sized patches (half centred on spleen voxels) by the shared demo
loop (aiaa_demo.training: a step budget, warm-up then cosine learning rate, checkpoint/resume), and exported
with ``torch.jit.trace`` to ``models/model.ts`` (written atomically, checked against the eager network).

Training phantom ``i`` uses ``np.random.default_rng((seed, 0, i))``; the held-out phantoms of
``evaluate.py`` use ``(seed, 1, i)`` streams, so the two sets never coincide.

Example::

    commands/train.sh --steps 2000 --stop-after 1200 --num-train 60 --seed 0
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

MMAR_DIR = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(MMAR_DIR.parents[1]))

from aiaa_demo.phantoms import ORGAN_LABELS, make_abdomen_phantom
from aiaa_demo.training import Recipe, config_pre_transforms, train_for, training_arguments
from aiaa_server.imaging.formats import ImageFormat
from aiaa_server.imaging.io import Volume
from aiaa_server.inference.tensors import volume_to_tensor
from aiaa_server.mmar.loader import read_config

# The label follows the image through the config's spatial pre-transforms, resampled nearest.
LABEL_FOLLOWS_IMAGE = {
    "EnsureChannelFirstd": {"keys": ["image", "label"]},
    "Orientationd": {"keys": ["image", "label"]},
    "Spacingd": {"keys": ["image", "label"], "mode": ["bilinear", "nearest"]},
}
CHECK_SHAPE = (2, 1, 96, 64, 80)  # the export must also run on other sizes divisible by 8
Patch = tuple[torch.Tensor, torch.Tensor, np.ndarray]  # image (1, X, Y, Z), label (1, X, Y, Z), spleen voxels


def build_network() -> torch.nn.Module:
    from monai.networks.nets import UNet

    return UNet(spatial_dims=3, in_channels=1, out_channels=2, channels=(16, 32, 64, 128), strides=(2, 2, 2),
                num_res_units=2)


def adam(parameters: Iterable[torch.nn.Parameter], lr: float) -> torch.optim.Optimizer:
    return torch.optim.Adam(parameters, lr=lr, weight_decay=1e-5)


class PatchPool:
    """Preprocessed phantoms in memory and a sampler of ROI-sized patches (a fraction centred on spleen)."""

    def __init__(self, transforms: list[Any], roi: list[int], seed: int, rng: np.random.Generator) -> None:
        from monai.transforms import SpatialPad

        self.transforms = transforms
        self.roi = np.array(roi)
        self.pad = SpatialPad(spatial_size=roi)  # constant 0, like sliding-window padding
        self.seed = seed
        self.rng = rng
        self.items: list[Patch] = []
        self.next_index = 0

    def make(self) -> Patch:
        """The next training phantom (stream ``(seed, 0, i)``), preprocessed and padded to at least the ROI."""
        phantom = make_abdomen_phantom(np.random.default_rng((self.seed, 0, self.next_index)))
        self.next_index += 1
        spleen = (phantom.labels == ORGAN_LABELS["spleen"]).astype(np.float32)
        data: dict[str, Any] = {
            "image": volume_to_tensor(Volume(phantom.image, phantom.affine, ImageFormat.NIFTI_GZ)),
            "label": volume_to_tensor(Volume(spleen, phantom.affine, ImageFormat.NIFTI_GZ)),
        }
        for transform in self.transforms:
            data = transform(data)
        image = self.pad(torch.as_tensor(data["image"]).as_subclass(torch.Tensor)).float().contiguous()
        label = self.pad(torch.as_tensor(data["label"]).as_subclass(torch.Tensor)).round().to(torch.uint8)
        return image, label.contiguous(), torch.nonzero(label[0]).numpy()

    def fill(self, count: int) -> None:
        self.items.extend(self.make() for _ in range(count))

    def refresh_one(self) -> None:
        self.items[int(self.rng.integers(len(self.items)))] = self.make()

    def sample(self, batch: int, pos_frac: float) -> tuple[torch.Tensor, torch.Tensor]:
        """`batch` random patches: images `(B, 1, *roi)` float32 and labels `(B, 1, *roi)` uint8."""
        images, labels = [], []
        for _ in range(batch):
            image, label, spleen = self.items[int(self.rng.integers(len(self.items)))]
            shape = np.array(image.shape[1:])
            if len(spleen) and self.rng.random() < pos_frac:
                centre = spleen[int(self.rng.integers(len(spleen)))]
            else:
                centre = np.array([self.rng.integers(s) for s in shape])
            start = np.clip(centre - self.roi // 2, 0, shape - self.roi)
            box = (slice(None),) + tuple(slice(int(s), int(s + k)) for s, k in zip(start, self.roi))
            images.append(image[box])
            labels.append(label[box])
        return torch.stack(images), torch.stack(labels)


def parse_arguments() -> argparse.Namespace:
    parser = training_arguments(__doc__.split("\n")[0], MMAR_DIR, batch=4, minutes=None, steps=2400)
    parser.add_argument("--epochs", dest="steps", type=int, default=argparse.SUPPRESS, help=argparse.SUPPRESS)  # old name
    parser.add_argument("--num-train", type=int, default=60, help="phantoms kept in memory")
    parser.add_argument("--refresh-every", type=int, default=40,
                        help="replace one phantom by a new one every N steps (0: never)")
    parser.add_argument("--pos-frac", type=float, default=0.5, help="fraction of patches centred on spleen voxels")
    # the shipped model's recipe: 50 warm-up steps, cosine down to 2 % of the peak, 2 threads
    parser.set_defaults(warmup=50, lr_floor=4e-5, threads=2)
    return parser.parse_args()


def main() -> None:
    from monai.losses import DiceCELoss

    args = parse_arguments()
    roi = read_config(args.config).inference.args.roi
    pool = PatchPool(config_pre_transforms(args.config, LABEL_FOLLOWS_IMAGE), roi, args.seed,
                     np.random.default_rng((args.seed, 2)))

    def step_batch(step: int, net: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor, str]:
        if step == 0:
            pool.fill(args.num_train)
            print(f"generated and preprocessed {args.num_train} phantoms", flush=True)
        elif args.refresh_every and step % args.refresh_every == 0:
            pool.refresh_one()
        images, labels = pool.sample(args.batch, args.pos_frac)
        return images, labels, f"phantoms used {pool.next_index}"

    recipe = Recipe(loss=DiceCELoss(to_onehot_y=True, softmax=True), optimizer=adam, check_shape=CHECK_SHAPE)
    train_for(build_network, args, step_batch, (1, 1, *roi), recipe)


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Train the DEMO DeepGrow 3D model on synthetic shapes (aiaa_demo.synthetic_shapes).

Every training sample goes through the MMAR's own pre-transforms, built from config/config_aiaa.json with
the server's component loader (only the crop size is smaller: 64³ instead of 96³, the network is fully
convolutional), so training sees exactly what serving sees:

1. a random scene (train shape families only: ellipsoid, blob, tube, box; the torus family is held out),
   random spacing and RAS/LPS layout; a random object of it;
2. the first click at the object's most interior voxels (distance transform, jittered);
3. DeepgrowCropd + ScaleIntensityRanged from the config; the label is sampled on the same crop grid;
4. 0–4 rounds of simulated corrections with the current network (DeepGrow training): predict, then click
   the most interior voxel of the largest error region (fg click in a false negative, bg click in a false
   positive); then a training step (Dice + BCE) with the final clicks.

Each scene yields two samples (two objects);
scene ``i`` of step ``s`` uses ``np.random.default_rng((seed, 0, s, i))``; evaluation uses ``(seed, 1, i)``.
The network is a MONAI UNet (16-32-64-128, 3 strided levels, 1 residual unit, ~0.6 M parameters), exported
with torch.jit.trace to models/model.ts (written atomically, also every --export-every seconds).

Example: commands/train.sh --minutes 35 --seed 0
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

MMAR_DIR = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(MMAR_DIR.parents[1]))

from aiaa_demo.synthetic_shapes import Scene, first_click
from aiaa_demo.training import (
    config_pre_transforms,
    deepgrow_batch,
    scene_objects,
    split_guidance,
    train_for,
    training_arguments,
)
from aiaa_server.imaging.formats import ImageFormat
from aiaa_server.imaging.io import Volume
from aiaa_server.inference.click_transforms import GEOMETRY_KEY, GUIDANCE_KEY, sample_grid
from aiaa_server.inference.tensors import volume_to_tensor

MIN_OBJECT_MM3 = 2000.0
Sample = list[Any]  # [image crop (1, S, S, S), truth crop, fg clicks, bg clicks] in crop voxel coordinates


def build_network() -> torch.nn.Module:
    from monai.networks.nets import UNet

    return UNet(spatial_dims=3, in_channels=3, out_channels=1, channels=(16, 32, 64, 128), strides=(2, 2, 2),
                num_res_units=1)


def make_samples(rng: np.random.Generator, transforms: list[Any], count: int = 2) -> list[Sample]:
    """`count` samples (random objects) from one random scene."""
    scene, labels = scene_objects(rng, count, MIN_OBJECT_MM3)
    return [make_sample(rng, transforms, scene, scene.mask(label)) for label in labels]


def make_sample(rng: np.random.Generator, transforms: list[Any], scene: Scene, mask: np.ndarray) -> Sample:
    click = first_click(mask, rng, jitter=0.4, spacing=scene.spacing)
    data: dict[str, Any] = {
        "image": volume_to_tensor(Volume(scene.image, scene.affine, ImageFormat.NIFTI_GZ)),
        "foreground": [click], "background": [], "current_point": [click],
    }
    for transform in transforms:
        data = transform(data)
    geometry = data[GEOMETRY_KEY]
    truth = sample_grid(torch.from_numpy(mask.astype(np.float32))[None], geometry.matrix, geometry.grid_shape)[0]
    image = torch.as_tensor(data["image"]).float().as_subclass(torch.Tensor)
    return [image, (truth >= 0.5).numpy(), list(data[GUIDANCE_KEY]["foreground"]), []]


def main() -> None:
    parser = training_arguments(__doc__.split("\n")[0], MMAR_DIR, batch=4)
    parser.add_argument("--size", type=int, default=64, help="training crop size (voxels per side)")
    args = parser.parse_args()
    crop = {"DeepgrowCropd": {"spatial_size": [args.size] * 3}}
    transforms, guidance = split_guidance(config_pre_transforms(args.config, crop))

    def step_batch(step: int, net: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor, str]:
        rngs = [np.random.default_rng((args.seed, 0, step, i)) for i in range(args.batch // 2)]
        samples = [sample for rng in rngs for sample in make_samples(rng, transforms)]
        return deepgrow_batch(net, samples, rngs[0], guidance.sigma)

    train_for(build_network, args, step_batch, (1, 3, args.size, args.size, args.size))


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Train the DeepGrow 2D model on SynthSeg-style scenes painted from real label maps (and synthetic shapes).

Every training sample goes through the MMAR's own pre-transforms (DeepgrowSliced 128² at 1.5 mm, the
intensity normalisation), built from config/config_aiaa.json with the server's component loader, so
training sees exactly what serving sees:

1. a scene (aiaa_demo.synthseg.mixed_scene): 75 % painted from a real label map (AAL on Colin27 without the
   held-out regions, abdominal phantoms) at a random pose, scale and voxel grid with random tissue
   intensities, texture, blur, bias field, gamma and noise; 25 % the project's synthetic shapes;
2. four random axial slices (array axis 2) through its target, the first click at the target's most interior
   pixels of that slice (2D distance transform, jittered);
3. DeepgrowSliced + the intensity normalisation from the config (the painted scenes need a per-image one,
   ScaleIntensityRangePercentilesd: see docs/Readme.md); the label slice is sampled on the same grid;
4. 0–4 rounds of simulated corrections with the current network (DeepGrow training): predict, then click
   the most interior voxel of the largest error region (fg click in a false negative, bg click in a false
   positive); then a training step (Dice + BCE) with the final clicks.

Scene ``i`` of step ``s`` uses ``np.random.default_rng((seed, 0, s, i))``. The network is a 2D MONAI UNet
(16-32-64-128, 3 strided levels, 1 residual unit, ~0.2 M parameters), exported with torch.jit.trace to
models/model.ts (written atomically, also every --export-every seconds). --init starts from a previous
model.ts (same network); --ckpt keeps the weights, the step and the time spent, so a run continues where it
stopped (the committed commands/checkpoint.pt).

Example: commands/train.sh --minutes 40 --lr 1e-3 --init models/model.ts --ckpt commands/checkpoint.pt
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
from aiaa_demo.synthseg import LabelMap, mixed_scene, training_bank
from aiaa_demo.training import (
    config_pre_transforms,
    deepgrow_batch,
    split_guidance,
    train_for,
    training_arguments,
)
from aiaa_server.imaging.formats import ImageFormat
from aiaa_server.imaging.io import Volume
from aiaa_server.inference.click_transforms import GEOMETRY_KEY, GUIDANCE_KEY, sample_grid
from aiaa_server.inference.tensors import volume_to_tensor

MIN_OBJECT_MM3 = 30.0
Sample = list[Any]  # [image slice crop (1, S, S), truth crop, fg clicks, bg clicks] in crop pixel coordinates


def build_network() -> torch.nn.Module:
    from monai.networks.nets import UNet

    return UNet(spatial_dims=2, in_channels=3, out_channels=1, channels=(16, 32, 64, 128), strides=(2, 2, 2),
                num_res_units=1)


def make_samples(rng: np.random.Generator, transforms: list[Any], bank: list[LabelMap], count: int = 4
                 ) -> list[Sample]:
    """`count` samples (random slices of one target) from one scene."""
    scene, mask = mixed_scene(rng, bank, min_mm3=MIN_OBJECT_MM3)
    return [make_sample(rng, transforms, scene, mask) for _ in range(count)]


def make_sample(rng: np.random.Generator, transforms: list[Any], scene: Scene, mask: np.ndarray) -> Sample:
    areas = mask.sum(axis=(0, 1))
    slices = np.nonzero(areas >= max(min(8, areas.max()), 0.2 * areas.max()))[0]
    z = int(rng.choice(slices))
    x, y = first_click(mask[..., z], rng, jitter=0.4, spacing=scene.spacing[:2])
    click = [x, y, z]
    data: dict[str, Any] = {
        "image": volume_to_tensor(Volume(scene.image, scene.affine, ImageFormat.NIFTI_GZ)),
        "foreground": [click], "background": [], "current_point": [click],
    }
    for transform in transforms:
        data = transform(data)
    geometry = data[GEOMETRY_KEY]
    source = torch.from_numpy(mask[..., z].astype(np.float32))[None]
    truth = sample_grid(source, geometry.matrix, geometry.grid_shape)[0]
    image = torch.as_tensor(data["image"]).float().as_subclass(torch.Tensor)
    return [image, (truth >= 0.5).numpy(), list(data[GUIDANCE_KEY]["foreground"]), []]


def main() -> None:
    parser = training_arguments(__doc__.split("\n")[0], MMAR_DIR, batch=16)
    parser.add_argument("--size", type=int, default=0, help="training crop size (pixels per side; 0: the config's)")
    args = parser.parse_args()
    crop = {"DeepgrowSliced": {"spatial_size": [args.size] * 2}} if args.size else None
    transforms, guidance = split_guidance(config_pre_transforms(args.config, crop))
    bank = training_bank(np.random.default_rng((args.seed, 2)))

    def step_batch(step: int, net: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor, str]:
        rngs = [np.random.default_rng((args.seed, 0, step, i)) for i in range(args.batch // 4)]
        samples = [sample for rng in rngs for sample in make_samples(rng, transforms, bank)]
        return deepgrow_batch(net, samples, rngs[0], guidance.sigma)

    size = args.size or 128
    train_for(build_network, args, step_batch, (1, 3, size, size))


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Train the DExtr3D annotation model on SynthSeg-style scenes painted from real label maps (and synthetic shapes).

Every training sample goes through the MMAR's own pre-transforms, built from config/config_aiaa.json with
the server's component loader, so training sees exactly what serving sees:

1. a scene (aiaa_demo.synthseg.mixed_scene): 75 % painted from a real label map (AAL on Colin27 without the
   held-out regions, abdominal phantoms) at a random pose, scale and voxel grid with random tissue
   intensities, texture, blur, bias field, gamma and noise; 25 % the project's synthetic shapes;
2. the target's six extreme points (one on each bounding-box face, nearest the face centre), jittered by up
   to 2 voxels like a user's clicks;
3. with probability 0.3 the client-side crop of protocol 7.2 mode 1 first (points' box + 20 mm, resampled
   to 128³, points scaled), as the Python client / Slicer without session upload it;
4. ExtremePointsCropd (box + 20 mm → 64³) + ScaleIntensityRangePercentilesd + AddGuidanceChannelsd (points
   heat-map, σ 1.5 voxels of the 64³ grid = 3 voxels of a 128³ roi, rescaled to [-1, 1]); the label is
   sampled on the same grid; Dice + BCE loss.

Scene ``i`` of step ``s`` uses ``np.random.default_rng((seed, 0, s, i))``. The network is a MONAI UNet
(16-32-64-128, 3 strided levels, 1 residual unit, ~0.6 M parameters), exported with torch.jit.trace to
models/model.ts (written atomically, also every --export-every seconds). --init starts from the previous
model.ts (same network); --ckpt keeps the weights, the step and the time spent, so a run continues where it
stopped (the committed commands/checkpoint.pt).

Example: commands/train.sh --minutes 50 --init models/model.ts --ckpt commands/checkpoint.pt
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

MMAR_DIR = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(MMAR_DIR.parents[1]))

from aiaa_demo.synthetic_shapes import Scene, extreme_points
from aiaa_demo.synthseg import mixed_scene, training_bank
from aiaa_demo.training import config_pre_transforms, targets, train_for, training_arguments
from aiaa_server.imaging.formats import ImageFormat
from aiaa_server.imaging.io import Volume
from aiaa_server.inference.click_transforms import (
    GEOMETRY_KEY,
    box_matrix,
    dextr_box,
    sample_grid,
    spacing_of,
)
from aiaa_server.inference.tensors import volume_to_tensor

CLIENT_ROI = 128
CLIENT_PAD_MM = 20.0
NETWORK_SIZE = 64


def build_network() -> torch.nn.Module:
    from monai.networks.nets import UNet

    return UNet(spatial_dims=3, in_channels=2, out_channels=1, channels=(16, 32, 64, 128), strides=(2, 2, 2),
                num_res_units=1)


def client_crop(scene: Scene, mask: np.ndarray, points: list[list[int]]) -> tuple[Scene, np.ndarray, list[list[int]]]:
    """What a DExtr3D client does before uploading (protocol 7.2 mode 1): points' box + 20 mm → 128³."""
    lo, hi = dextr_box(np.asarray(points, dtype=np.float64), spacing_of(scene.affine), scene.image.shape,
                       CLIENT_PAD_MM)
    matrix = box_matrix(lo, hi, (CLIENT_ROI,) * 3)
    image = sample_grid(torch.from_numpy(scene.image)[None], matrix, (CLIENT_ROI,) * 3)[0].numpy()
    cropped = sample_grid(torch.from_numpy(mask.astype(np.float32))[None], matrix, (CLIENT_ROI,) * 3)[0].numpy()
    inverse = np.linalg.inv(matrix)
    scaled = [[round(v) for v in inverse[:3, :3] @ np.asarray(p, dtype=np.float64) + inverse[:3, 3]]
              for p in points]
    crop_scene = Scene(image=image, labels=(cropped >= 0.5).astype(np.int16), affine=scene.affine @ matrix,
                       families=scene.families[:1])
    return crop_scene, cropped >= 0.5, [[int(np.clip(v, 0, CLIENT_ROI - 1)) for v in p] for p in scaled]


def make_sample(rng: np.random.Generator, transforms: list[Any], scene: Scene, mask: np.ndarray,
                client_cropped: float = 0.3) -> tuple[torch.Tensor, np.ndarray]:
    """(network input (2, 64, 64, 64), truth on the same grid)."""
    points = extreme_points(mask, rng, jitter=2)
    if rng.random() < client_cropped:
        scene, mask, points = client_crop(scene, mask, points)
    data: dict[str, Any] = {
        "image": volume_to_tensor(Volume(scene.image, scene.affine, ImageFormat.NIFTI_GZ)), "points": points,
    }
    for transform in transforms:
        data = transform(data)
    geometry = data[GEOMETRY_KEY]
    truth = sample_grid(torch.from_numpy(mask.astype(np.float32))[None], geometry.matrix, geometry.grid_shape)[0]
    return torch.as_tensor(data["image"]).float().as_subclass(torch.Tensor), (truth >= 0.5).numpy()


def main() -> None:
    args = training_arguments(__doc__.split("\n")[0], MMAR_DIR, batch=4).parse_args()
    transforms = config_pre_transforms(args.config)
    bank = training_bank(np.random.default_rng((args.seed, 2)))

    def step_batch(step: int, net: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor, str]:
        rngs = [np.random.default_rng((args.seed, 0, step, i)) for i in range(args.batch)]
        samples = [make_sample(rng, transforms, *mixed_scene(rng, bank, min_mm3=60.0)) for rng in rngs]
        return torch.stack([s[0] for s in samples]), targets(samples), ""

    train_for(build_network, args, step_batch, (1, 2, NETWORK_SIZE, NETWORK_SIZE, NETWORK_SIZE))


if __name__ == "__main__":
    main()

"""MONAI bundles and CT-like images for the bundle tests, built in temp dirs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage

from aiaa_demo.zoo_bundles import monai_bundle_output, write_bundle
from tests.support.volumes import lps_affine, save_nifti

__all__ = ["ct_like_image", "edit_config", "monai_mask", "write_bundle", "write_train_config"]


def ct_like_image(path: Path, shape: tuple[int, int, int] = (70, 60, 30), seed: int = 0) -> Path:
    """Smooth random HU-like int16 values on an LPS grid with anisotropic voxels (0.8 × 0.75 × 2.5 mm), so that
    a bundle's Orientationd, Spacingd and Invertd all do real work."""
    noise = np.random.default_rng(seed).normal(0.0, 1.0, shape)
    values = ndimage.gaussian_filter(noise, 3.0) * 3000.0
    return save_nifti(path, values.astype(np.int16), lps_affine((0.8, 0.75, 2.5)))


def monai_mask(bundle: Path, image: Path, work: Path) -> np.ndarray:
    """The mask MONAI's own bundle run writes for `image`, as an (X, Y, Z) array."""
    return np.asarray(nib.load(monai_bundle_output(bundle, image, work)).dataobj).squeeze()


def edit_config(bundle: Path, edit: Any) -> None:
    """Rewrite the bundle's configs/inference.json through `edit(config) -> config`."""
    path = bundle / "configs" / "inference.json"
    path.write_text(json.dumps(edit(json.loads(path.read_text())), indent=2))


def write_train_config(bundle: Path, patch: int = 32, learning_rate: float = 1e-3) -> Path:
    """A `configs/train.json` in the model zoo's spleen shape for a bundle written by `write_bundle`: cached
    deterministic transforms (the inference ones on image and label), random crops and flips, Dice + CE, Adam,
    and the parts a server never builds (a glob over a data folder, a data loader, a trainer)."""
    keys = ["image", "label"]
    deterministic = [
        {"_target_": "LoadImaged", "keys": keys}, {"_target_": "EnsureChannelFirstd", "keys": keys},
        {"_target_": "Orientationd", "keys": keys, "axcodes": "RAS"},
        {"_target_": "Spacingd", "keys": keys, "pixdim": [1.5, 1.5, 2.0], "mode": ["bilinear", "nearest"]},
        {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": -57, "a_max": 164, "b_min": 0.0,
         "b_max": 1.0, "clip": True},
        {"_target_": "EnsureTyped", "keys": keys},
    ]
    random = [
        {"_target_": "RandCropByPosNegLabeld", "keys": keys, "label_key": "label", "spatial_size": [patch] * 3,
         "pos": 1, "neg": 1, "num_samples": 2, "image_key": "image", "image_threshold": 0},
        {"_target_": "RandFlipd", "keys": keys, "prob": 0.5, "spatial_axis": 0},
    ]
    config = {
        "imports": ["$import glob", "$import os"], "bundle_root": ".", "ckpt_dir": "$@bundle_root + '/models'",
        "dataset_dir": "/workspace/data/Task09_Spleen",
        "images": "$list(sorted(glob.glob(@dataset_dir + '/imagesTr/*.nii.gz')))",
        "labels": "$list(sorted(glob.glob(@dataset_dir + '/labelsTr/*.nii.gz')))",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "network_def": json.loads((bundle / "configs" / "inference.json").read_text())["network_def"],
        "network": "$@network_def.to(@device)",
        "loss": {"_target_": "DiceCELoss", "to_onehot_y": True, "softmax": True, "squared_pred": True, "batch": True},
        "optimizer": {"_target_": "torch.optim.Adam", "params": "$@network.parameters()", "lr": learning_rate},
        "train": {
            "deterministic_transforms": deterministic, "random_transforms": random,
            "preprocessing": {"_target_": "Compose",
                              "transforms": "$@train#deterministic_transforms + @train#random_transforms"},
            "dataset": {"_target_": "CacheDataset", "transform": "@train#preprocessing",
                        "data": "$[{'image': i, 'label': l} for i, l in zip(@images, @labels)]"},
            "dataloader": {"_target_": "DataLoader", "dataset": "@train#dataset", "batch_size": 2},
            "trainer": {"_target_": "SupervisedTrainer", "max_epochs": 100, "device": "@device",
                        "train_data_loader": "@train#dataloader", "network": "@network", "loss_function": "@loss",
                        "optimizer": "@optimizer"},
        },
        "validate": {
            "preprocessing": {"_target_": "Compose", "transforms": "%train#deterministic_transforms"},
            "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [patch] * 3, "sw_batch_size": 2,
                        "overlap": 0.25},
        },
        "run": ["$@train#trainer.run()"],
    }
    path = bundle / "configs" / "train.json"
    path.write_text(json.dumps(config, indent=2))
    return path

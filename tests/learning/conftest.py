"""Training fixtures: a small trainable segmentation MMAR with deliberately weakened weights, synthetic volumes
with a bright sphere labelled 1, and job specs over them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from aiaa_server.engines.torchscript import TorchScriptPool
from aiaa_server.imaging.io import read_volume
from aiaa_server.inference.tensors import volume_to_tensor
from aiaa_server.learning.spec import TrainItem, TrainSpec
from aiaa_server.mmar.folders import load_model_folder
from tests.support.mmars import segmentation_config, write_mmar
from tests.support.volumes import dice, lps_affine, save_nifti

CASE_SHAPE = (48, 48, 32)
CASE_SPACING = (2.0, 2.0, 2.0)  # the config's Spacingd resamples to 2 mm: same grid, LPS flipped to RAS


class TinySegNet(torch.nn.Module):
    """Two 3×3×3 convolutions and a 1×1×1 head giving 2-channel logits (background, foreground)."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Conv3d(1, width, 3, padding=1), torch.nn.ReLU(),
                                        torch.nn.Conv3d(width, width, 3, padding=1), torch.nn.ReLU())
        self.head = torch.nn.Conv3d(width, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def weakened_net(seed: int = 0) -> TinySegNet:
    """A TinySegNet whose head is zeroed with a background bias: it answers background everywhere (Dice 0)."""
    torch.manual_seed(seed)
    network = TinySegNet()
    with torch.no_grad():
        network.head.weight.zero_()
        network.head.bias.copy_(torch.tensor([1.0, -1.0]))
    return network


def write_training_mmar(folder: Path, **config: Any) -> Path:
    """A segmentation MMAR (Orientationd, Spacingd 2 mm, ScaleIntensityRanged; sliding window roi 32³) serving
    the weakened TinySegNet as models/model.ts, and a file outside config/ and models/ (kept in the output)."""
    write_mmar(folder, segmentation_config(roi=[32, 32, 32], **config), weakened_net())
    (folder / "docs").mkdir()
    (folder / "docs" / "README.md").write_text("test model\n")
    return folder


def sphere_case(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """int16 HU volume (CASE_SHAPE): noisy air around a noisy bright sphere at a random place, and its mask."""
    grid = np.indices(CASE_SHAPE)
    centre = [rng.integers(12, 36), rng.integers(12, 36), rng.integers(10, 22)]
    radius = int(rng.integers(5, 9))
    mask = (sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)) <= radius**2).astype(np.uint8)
    image = rng.normal(-800, 30, CASE_SHAPE)
    image[mask == 1] = rng.normal(200, 30, int(mask.sum()))
    return image.astype(np.int16), mask


def write_cases(folder: Path, count: int, seed: int = 0, corrupt: bool = False) -> list[TrainItem]:
    """`count` sphere cases as NIfTI image + label files; `corrupt`: labels are random noise instead."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    items = []
    for index in range(count):
        image, mask = sphere_case(rng)
        if corrupt:
            mask = (rng.random(CASE_SHAPE) < 0.2).astype(np.uint8)
        affine = lps_affine(CASE_SPACING)
        image_path = save_nifti(folder / f"case{index}.nii.gz", image, affine)
        label_path = save_nifti(folder / f"case{index}_label.nii.gz", mask, affine)
        items.append(TrainItem(id=f"case{index}", image=image_path, label=label_path))
    return items


def make_spec(root: Path, items: list[TrainItem], val_count: int = 2, **overrides: Any) -> TrainSpec:
    """A spec training the MMAR in `root/model` on all but the last `val_count` items."""
    fields: dict[str, Any] = {
        "model_name": "tiny", "model_dir": root / "model", "output_dir": root / "candidate",
        "status_path": root / "status.json", "train": items[:-val_count], "val": items[-val_count:],
        "max_epochs": 6, "time_budget_s": 40.0, "learning_rate": 0.01, "seed": 0, "threads": 1,
        "max_voxels": 200_000, "patch": None,
    }
    return TrainSpec.model_validate({**fields, **overrides})


def served_dice(model_dir: Path, image: Path, label: Path) -> float:
    """Dice of the mask the server's own pipeline answers for `image` with the model (MMAR or bundle) in `model_dir`."""
    pipeline = load_model_folder(model_dir, TorchScriptPool()).pipeline
    data = pipeline.preprocess_image({"image": volume_to_tensor(read_volume(image, image.name))})
    mask = np.asarray(pipeline.run_request(data).image)
    return dice(mask > 0, np.asarray(read_volume(label, label.name).array) > 0)


def write_spec(spec: TrainSpec, path: Path) -> Path:
    path.write_text(json.dumps(spec.model_dump(mode="json")))
    return path


@pytest.fixture
def training_root(tmp_path: Path) -> Path:
    """`tmp_path` with `model/`: the weakened training MMAR."""
    write_training_mmar(tmp_path / "model")
    return tmp_path


@pytest.fixture
def torch_threads() -> Iterator[None]:
    """Restores torch's thread count after a test that runs a job in this process (the job sets its own)."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)

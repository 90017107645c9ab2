"""Which training config a job uses: an MMAR's `config/config_train.json` (or the inference-derived recipe, and why),
and a MONAI bundle's `configs/train.json`, trained end to end in a job."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from monai.losses import DiceCELoss, DiceLoss

from aiaa_server.errors import BadRequest, InvalidModel
from aiaa_server.learning.job import EXIT_OK, run_job
from aiaa_server.learning.recipes import build_recipe
from aiaa_server.learning.spec import read_status
from aiaa_server.learning.train_config import read_train_config
from aiaa_server.learning.trainer import PatchSampler, TransformSampler
from tests.learning.conftest import make_spec, served_dice, write_cases
from tests.support.bundles import write_bundle, write_train_config

CPU = torch.device("cpu")
KEYS = ["image", "label"]


def clara_train_config(**changes: Any) -> dict[str, Any]:
    """A Clara Train 4 style `config_train.json`: `{learning_rate}` referenced, cached transforms, random crops."""
    config: dict[str, Any] = {
        "epochs": 1000, "learning_rate": 0.02, "multi_gpu": False,
        "train": {
            "loss": {"name": "DiceLoss", "args": {"to_onehot_y": True, "softmax": True}},
            "optimizer": {"name": "SGD", "args": {"lr": "{learning_rate}", "momentum": 0.9}},
            "pre_transforms": [
                {"name": "LoadImaged", "args": {"keys": KEYS}},
                {"name": "EnsureChannelFirstd", "args": {"keys": KEYS}},
                {"name": "Orientationd", "args": {"keys": KEYS, "axcodes": "RAS"}},
                {"name": "Spacingd", "args": {"keys": KEYS, "pixdim": [2.0, 2.0, 2.0], "mode": ["bilinear", "nearest"]}},
                {"name": "ScaleIntensityRanged", "args": {"keys": "image", "a_min": -500, "a_max": 500,
                                                          "b_min": 0.0, "b_max": 1.0, "clip": True}},
                {"name": "RandCropByPosNegLabeld", "args": {"keys": KEYS, "label_key": "label",
                                                            "spatial_size": [16, 16, 16], "pos": 1, "neg": 1,
                                                            "num_samples": 3}},
                {"name": "RandFlipd", "args": {"keys": KEYS, "prob": 0.5, "spatial_axis": 0}},
            ],
            "dataset": {"name": "CacheDataset", "data_list_file_path": "{DATASET_JSON}"},
        },
    }
    config["train"].update(changes)
    return config


def _write_train_config(model: Path, config: dict[str, Any]) -> None:
    (model / "config" / "config_train.json").write_text(json.dumps(config))


def test_mmar_config_train_sets_transforms_loss_and_optimiser(training_root: Path) -> None:
    _write_train_config(training_root / "model", clara_train_config())
    spec = make_spec(training_root, write_cases(training_root / "cases", 4), learning_rate=None)
    recipe = build_recipe(spec, CPU)
    assert recipe.source == "config/config_train.json"
    assert isinstance(recipe.trainer.sampler, TransformSampler)
    assert isinstance(recipe.trainer.loss, DiceLoss)
    optimizer = recipe.trainer.optimizer
    assert isinstance(optimizer, torch.optim.SGD)
    assert optimizer.param_groups[0]["lr"] == 0.02 and optimizer.param_groups[0]["momentum"] == 0.9
    images, labels = recipe.trainer.sampler.batch(recipe.train[0])
    assert images.shape == (3, 1, 16, 16, 16) and labels.shape == (3, 1, 16, 16, 16)
    assert set(torch.unique(labels).tolist()) <= {0, 1}
    # the cached part is the deterministic one: whole volumes on the 2 mm grid, the validation items as served
    assert recipe.train[0].image.shape[1:] == recipe.val[0].image.shape[1:] == (48, 48, 32)


def test_request_learning_rate_overrides_the_config(training_root: Path) -> None:
    _write_train_config(training_root / "model", clara_train_config())
    recipe = build_recipe(make_spec(training_root, write_cases(training_root / "cases", 4), learning_rate=0.005), CPU)
    assert recipe.trainer.optimizer.param_groups[0]["lr"] == 0.005


def test_clara3_tensorflow_config_is_reported_and_the_derived_recipe_used(training_root: Path) -> None:
    tf_transforms = [{"name": "LoadNifti", "args": {"fields": KEYS}},
                     {"name": "ConvertToChannelsFirst", "args": {"fields": KEYS}}]
    _write_train_config(training_root / "model", clara_train_config(pre_transforms=tf_transforms))
    recipe = build_recipe(make_spec(training_root, write_cases(training_root / "cases", 4)), CPU)
    assert recipe.source.startswith("derived from config/config_aiaa.json (config/config_train.json not used")
    assert "LoadNifti" in recipe.source
    assert isinstance(recipe.trainer.sampler, PatchSampler) and isinstance(recipe.trainer.loss, DiceCELoss)


def test_without_config_train_the_recipe_says_so(training_root: Path) -> None:
    recipe = build_recipe(make_spec(training_root, write_cases(training_root / "cases", 4)), CPU)
    assert recipe.source == "derived from config/config_aiaa.json (no config/config_train.json)"


@pytest.mark.parametrize("component", [
    {"name": "Lambdad", "args": {"keys": "image", "func": "$lambda x: __import__('os').system('id')"}},
    {"name": "LoadImaged", "args": {"keys": KEYS, "reader": "os.system"}},
    {"name": "RandFlipd", "args": {"keys": KEYS, "prob": "$__import__('os')"}},
])
def test_uploaded_config_train_is_held_to_the_allow_list(training_root: Path, component: dict[str, Any]) -> None:
    config = clara_train_config()
    config["train"]["pre_transforms"].insert(2, component)
    _write_train_config(training_root / "model", config)
    with pytest.raises(InvalidModel, match="uploads may not run code"):
        read_train_config(training_root / "model", trusted=False)
    recipe = build_recipe(make_spec(training_root, write_cases(training_root / "cases", 4), trusted=False), CPU)
    assert "config/config_train.json not used" in recipe.source


def test_uploaded_config_train_may_use_random_augmentations(training_root: Path) -> None:
    _write_train_config(training_root / "model", clara_train_config())
    assert read_train_config(training_root / "model", trusted=False) is not None
    _write_train_config(training_root / "model", clara_train_config(loss={"name": "torch.nn.MSELoss"}))
    with pytest.raises(InvalidModel, match="train.loss"):
        read_train_config(training_root / "model", trusted=False)


def test_mmar_job_trains_with_config_train(training_root: Path, torch_threads: None) -> None:
    _write_train_config(training_root / "model", clara_train_config(
        optimizer={"name": "Adam", "args": {"lr": "{learning_rate}"}}))
    spec = make_spec(training_root, write_cases(training_root / "cases", 6), learning_rate=None, max_epochs=4)
    assert run_job(spec) == EXIT_OK
    status = read_status(spec.status_path)
    assert status is not None and status.state == "done", status
    assert status.training_config == "config/config_train.json"
    assert status.best_dice is not None and status.baseline_dice is not None
    assert status.best_dice > status.baseline_dice
    metrics = json.loads((spec.output_dir / "metrics.json").read_text())
    assert metrics["training_config"] == "config/config_train.json"


# ---- bundles --------------------------------------------------------------------------------------------------


@pytest.fixture
def bundle_root(tmp_path: Path) -> Path:
    write_bundle(tmp_path / "model", "spleen_ct_segmentation", small=True, seed=3)
    return tmp_path


def test_bundle_without_train_config_is_refused(bundle_root: Path) -> None:
    spec = make_spec(bundle_root, write_cases(bundle_root / "cases", 3, seed=1), val_count=1)
    with pytest.raises(BadRequest, match="configs/train.json"):
        build_recipe(spec, CPU)


def test_bundle_recipe_reads_train_json_without_building_its_data_parts(bundle_root: Path) -> None:
    write_train_config(bundle_root / "model", patch=24, learning_rate=0.003)
    spec = make_spec(bundle_root, write_cases(bundle_root / "cases", 3, seed=1), val_count=1, learning_rate=None)
    recipe = build_recipe(spec, CPU)
    assert recipe.source == "configs/train.json"
    assert isinstance(recipe.trainer.loss, DiceCELoss)
    assert isinstance(recipe.trainer.optimizer, torch.optim.Adam)
    assert recipe.trainer.optimizer.param_groups[0]["lr"] == 0.003
    images, labels = recipe.trainer.sampler.batch(recipe.train[0])
    assert images.shape == (2, 1, 24, 24, 24) and labels.shape == (2, 1, 24, 24, 24)
    # Spacingd to 1.5 x 1.5 x 2 mm from the cases' 2 mm grid: 48 x 48 x 32 voxels become 64 x 64 x 32
    assert tuple(recipe.val[0].image.shape[1:]) == (64, 64, 32)


def test_bundle_job_writes_a_servable_candidate_with_new_weights(bundle_root: Path, torch_threads: None) -> None:
    write_train_config(bundle_root / "model", patch=32, learning_rate=0.01)
    items = write_cases(bundle_root / "cases", 6, seed=2)
    spec = make_spec(bundle_root, items, learning_rate=None, max_epochs=5, max_voxels=400_000)
    assert run_job(spec) == EXIT_OK
    status = read_status(spec.status_path)
    assert status is not None and status.state == "done", status
    assert status.training_config == "configs/train.json"
    assert status.best_dice is not None and status.baseline_dice is not None
    assert status.best_dice > status.baseline_dice
    before = torch.load(bundle_root / "model" / "models" / "model.pt", weights_only=True)
    after = torch.load(spec.output_dir / "models" / "model.pt", weights_only=True)
    assert before.keys() == after.keys() and any(not torch.equal(before[k], after[k]) for k in before)
    assert (spec.output_dir / "configs" / "train.json").is_file()
    served = [served_dice(folder, items[-1].image, items[-1].label)
              for folder in (bundle_root / "model", spec.output_dir)]
    assert served[1] > served[0]

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from aiaa_server.engines.torchscript import TorchScriptPool
from aiaa_server.errors import BadRequest, InvalidParams
from aiaa_server.imaging.io import read_volume
from aiaa_server.inference.tensors import plain_tensor, volume_to_tensor
from aiaa_server.learning.data import (
    LABEL_KEY,
    PreparedItem,
    load_training_config,
    prepare_item,
    training_transforms,
)
from aiaa_server.learning.spec import TrainItem
from aiaa_server.mmar.loader import load_mmar
from tests.support.mmars import SEGMENTATION_PRE, segmentation_config, write_mmar, write_threshold_mmar
from tests.support.volumes import cube_volume, dice, lps_affine, save_nifti

SHAPE = (40, 30, 12)
SPACING = (1.0, 1.5, 3.0)  # resampled to the config's 2 mm, and LPS flipped to RAS
BOX = (slice(8, 20), slice(6, 16), slice(3, 8))


def _case(folder: Path, label: np.ndarray | None = None, label_affine: np.ndarray | None = None) -> TrainItem:
    image, mask = cube_volume(SHAPE, BOX)
    affine = lps_affine(SPACING)
    save_nifti(folder / "image.nii.gz", image, affine)
    save_nifti(folder / "label.nii.gz", mask if label is None else label,
               affine if label_affine is None else label_affine)
    return TrainItem(id="case", image=folder / "image.nii.gz", label=folder / "label.nii.gz")


def _prepare(mmar: Path, item: TrainItem, max_voxels: int = 10**6) -> PreparedItem:
    config, custom = load_training_config(mmar)
    return prepare_item(training_transforms(config, custom), config, item, max_voxels)


def test_label_lands_where_the_image_box_lands_after_orientation_and_spacing(tmp_path: Path) -> None:
    mmar = write_threshold_mmar(tmp_path / "model")
    item = _case(tmp_path)
    prepared = _prepare(mmar, item)
    assert prepared.label.dtype == torch.uint8 and prepared.image.dtype == torch.float32
    assert prepared.label.shape == prepared.image.shape and prepared.label.shape[0] == 1
    assert set(prepared.label.unique().tolist()) == {0, 1}
    bright = prepared.image[0].numpy() > 0.4  # the box at 300 HU scales to 0.8, the air to 0: half-way
    labelled = prepared.label[0].numpy() == 1
    assert dice(labelled, bright) > 0.9
    assert np.allclose(np.argwhere(labelled).mean(0), np.argwhere(bright).mean(0), atol=1.0)


def test_image_is_exactly_what_inference_feeds_the_network(tmp_path: Path) -> None:
    mmar = write_threshold_mmar(tmp_path / "model")
    item = _case(tmp_path)
    pipeline = load_mmar(mmar, TorchScriptPool()).pipeline
    served = pipeline.preprocess_image({"image": volume_to_tensor(read_volume(item.image, item.image.name))})
    served = pipeline.preprocess_request(served)
    assert torch.equal(_prepare(mmar, item).image, plain_tensor(served["image"]).float())


def test_several_labels_keep_their_indices(tmp_path: Path) -> None:
    mmar = write_threshold_mmar(tmp_path / "model", labels=["bright", "corner"])
    label = cube_volume(SHAPE, BOX)[1]
    label[30:38, 20:28, 2:10] = 2
    prepared = _prepare(mmar, _case(tmp_path, label=label))
    assert set(prepared.label.unique().tolist()) == {0, 1, 2}


def test_spatial_transforms_carry_the_label_nearest_and_intensity_ones_skip_it(tmp_path: Path) -> None:
    pre: list[dict[str, Any]] = copy.deepcopy(SEGMENTATION_PRE)
    pre += [{"name": "SpatialPadd", "args": {"keys": "image", "spatial_size": [64, 64, 64], "mode": "edge"}},
            {"name": "CastToTyped", "args": {"keys": "image", "dtype": "float32"}}]
    mmar = write_threshold_mmar(tmp_path / "model", pre=pre)
    config, custom = load_training_config(mmar)
    configured = [getattr(t, "wrapped", t) for t in training_transforms(config, custom)]  # fast paths wrap MONAI
    built = {type(t).__name__: t for t in configured}
    assert built["Spacingd"].keys == ("image", LABEL_KEY)
    assert tuple(built["Spacingd"].mode) == ("bilinear", "nearest")
    assert built["Orientationd"].keys == ("image", LABEL_KEY)
    assert built["EnsureChannelFirstd"].keys == ("image", LABEL_KEY)  # the config's AddChanneld, translated
    assert tuple(built["SpatialPadd"].mode) == ("edge", "constant")  # the label is padded with background
    assert built["ScaleIntensityRanged"].keys == ("image",)
    assert built["CastToTyped"].keys == ("image",)
    prepared = prepare_item(list(built.values()), config, _case(tmp_path), 10**6)
    assert prepared.label.shape == (1, 64, 64, 64) and set(prepared.label.unique().tolist()) == {0, 1}


@pytest.mark.parametrize(("label", "affine", "match"), [
    (np.zeros((40, 30, 11), np.uint8), None, "shape"),
    (None, lps_affine(SPACING, origin=(80.0, 110.0, -40.0)), "not on its image's grid"),
    (None, lps_affine((1.0, 1.5, 2.0)), "not on its image's grid"),
    (np.full(SHAPE, 2, np.uint8), None, "class indices 0..1"),
    (np.full(SHAPE, 0.5, np.float32), None, "class indices 0..1"),
])
def test_a_label_off_the_grid_or_out_of_range_is_refused(
        tmp_path: Path, label: np.ndarray | None, affine: np.ndarray | None, match: str) -> None:
    mmar = write_threshold_mmar(tmp_path / "model")
    with pytest.raises(InvalidParams, match=match):
        _prepare(mmar, _case(tmp_path, label=label, label_affine=affine))


def test_a_volume_over_max_voxels_is_refused(tmp_path: Path) -> None:
    mmar = write_threshold_mmar(tmp_path / "model")
    with pytest.raises(BadRequest, match="over the job's limit"):
        _prepare(mmar, _case(tmp_path), max_voxels=1000)


@pytest.mark.parametrize("kind", ["annotation", "deepgrow", "classification"])
def test_only_segmentation_models_train(tmp_path: Path, kind: str) -> None:
    mmar = write_mmar(tmp_path / "model", segmentation_config(type=kind))
    with pytest.raises(BadRequest, match="only segmentation models"):
        load_training_config(mmar)


def test_a_pre_transform_of_unknown_kind_on_the_image_is_refused(tmp_path: Path) -> None:
    mmar = write_threshold_mmar(tmp_path / "model", pre=[
        *copy.deepcopy(SEGMENTATION_PRE), {"name": "custom.Shift", "args": {"keys": "image"}}])
    (mmar / "custom").mkdir()
    (mmar / "custom" / "__init__.py").write_text(
        "class Shift:\n    def __init__(self, keys):\n        self.keys = keys\n"
        "    def __call__(self, data):\n        return data\n")
    config, custom = load_training_config(mmar)
    with pytest.raises(BadRequest, match="custom.Shift"):
        training_transforms(config, custom)

"""Building transforms by name: MONAI short and dotted names, Clara aliases, custom/ code, compat."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from aiaa_server.errors import InvalidModel
from aiaa_server.inference import transforms as aiaa_transforms
from aiaa_server.mmar.components import CustomCode, build_component
from aiaa_server.mmar.config import ComponentConfig


def build(name: str, custom: CustomCode | None = None, **args: object) -> object:
    return build_component(ComponentConfig(name=name, args=args), custom)


def test_short_and_dotted_monai_names_build_the_same_class() -> None:
    short = build("Spacingd", keys="image", pixdim=[1.0, 1.0, 1.0])
    dotted = build("monai.transforms.Spacingd", keys="image", pixdim=[1.0, 1.0, 1.0])
    assert type(short) is type(dotted)
    assert type(short).__name__ == "Spacingd"


def test_aiaa_names_map_to_our_implementations() -> None:
    assert isinstance(build("aiaa.transforms.Restored", keys="pred", ref_image="image"), aiaa_transforms.Restored)
    assert isinstance(build("aiaa.transforms.Writer", image="pred", json="result"), aiaa_transforms.Writer)
    assert isinstance(build("monai.transforms.LoadImaged", keys="image"), aiaa_transforms.LoadImaged)


def test_add_channel_is_translated_and_behaves_like_it() -> None:
    transform = build("monai.transforms.AddChanneld", keys="image")
    data = transform({"image": MetaTensor(torch.zeros(5, 6, 7))})
    assert tuple(data["image"].shape) == (1, 5, 6, 7)


def test_as_channel_first_moves_the_last_axis() -> None:
    transform = build("AsChannelFirstd", keys="image")
    data = transform({"image": MetaTensor(torch.zeros(5, 6, 3))})
    assert tuple(data["image"].shape) == (3, 5, 6)


def test_as_discrete_threshold_values_is_translated() -> None:
    transform = build("AsDiscreted", keys="pred", threshold_values=True, logit_thresh=0.3)
    data = transform({"pred": torch.tensor([[0.1, 0.35, 0.9]])})
    assert data["pred"].tolist() == [[0.0, 1.0, 1.0]]


def test_custom_folder_classes_resolve_in_every_naming_style(tmp_path: Path) -> None:
    custom = tmp_path / "custom"
    custom.mkdir()
    (custom / "my_transforms.py").write_text(
        "from .helpers import FACTOR\n"
        "class Scaled:\n"
        "    def __init__(self, keys, factor=FACTOR):\n"
        "        self.keys, self.factor = keys, factor\n"
        "    def __call__(self, data):\n"
        "        return {**data, self.keys: data[self.keys] * self.factor}\n"
    )
    (custom / "helpers.py").write_text("FACTOR = 3\n")
    code = CustomCode(tmp_path)
    for name in ("custom.Scaled", "custom.my_transforms.Scaled", "my_transforms.Scaled"):
        transform = build(name, code, keys="x")
        assert transform({"x": 2})["x"] == 6, name


def test_two_mmars_with_same_module_name_do_not_clash(tmp_path: Path) -> None:
    for value in (1, 2):
        folder = tmp_path / f"m{value}" / "custom"
        folder.mkdir(parents=True)
        (folder / "mine.py").write_text(f"class Value:\n    def __init__(self):\n        self.v = {value}\n")
    first = build("mine.Value", CustomCode(tmp_path / "m1"))
    second = build("mine.Value", CustomCode(tmp_path / "m2"))
    assert (first.v, second.v) == (1, 2)


def test_unknown_name_and_bad_args_are_invalid_model() -> None:
    with pytest.raises(InvalidModel, match="unknown component 'NoSuchTransformd'"):
        build("NoSuchTransformd", keys="image")
    with pytest.raises(InvalidModel, match="cannot build 'Spacingd'"):
        build("Spacingd", keys="image", no_such_argument=1)
    with pytest.raises(InvalidModel, match="unknown component"):
        build("custom.Missing", CustomCode(Path("/nonexistent")))


def test_restored_undoes_spacing_and_orientation() -> None:
    affine = np.diag([-0.8, -0.9, 2.5, 1.0])
    affine[:3, 3] = [50.0, 60.0, -20.0]
    from aiaa_server.imaging.formats import ImageFormat
    from aiaa_server.imaging.io import Volume
    from aiaa_server.inference.tensors import volume_to_tensor

    array = np.zeros((60, 50, 20), dtype=np.float32)
    array[20:40, 10:30, 5:15] = 1
    data = {"image": volume_to_tensor(Volume(array, affine, ImageFormat.NIFTI_GZ))}
    for name, args in (("EnsureChannelFirstd", {}), ("Orientationd", {"axcodes": "RAS"}),
                       ("Spacingd", {"pixdim": [1.5, 1.5, 1.5], "mode": "nearest"})):
        data = build(name, keys="image", **args)(data)
    assert tuple(data["image"].shape[1:]) != array.shape
    data["pred"] = data["image"].as_tensor().clone()
    restored = build("Restored", keys="pred", ref_image="image")(data)["pred"]
    assert restored.shape == (1, *array.shape)
    overlap = np.logical_and(restored[0] > 0, array > 0).sum() * 2 / ((restored[0] > 0).sum() + array.sum())
    assert overlap > 0.9


def test_orientation_builds_without_monai_future_warnings() -> None:
    """The bundled spleen config uses Orientationd: building it must not print MONAI's FutureWarning at start."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        transform = build_component(ComponentConfig(name="Orientationd", args={"keys": "image", "axcodes": "RAS"}))
    assert transform.ornt_transform.labels == (("L", "R"), ("P", "A"), ("I", "S"))
    explicit = build_component(ComponentConfig(name="Orientationd",
                                               args={"keys": "image", "axcodes": "RAS", "labels": None}))
    assert explicit.ornt_transform.labels is None  # a config's own value wins

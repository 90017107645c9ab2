"""DeepGrow 3D crop growth (`inference.crop_growth`) through the server's own pipeline (`load_mmar` +
`pipeline.run`, as HTTP requests run it), with a real TorchScript network whose output is a fixed function of
the image: logits = 10 * (image channel - 0.5), so the result is the bright structure the crop sees."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from aiaa_server.engines.torchscript import TorchScriptPool
from aiaa_server.errors import InvalidModel
from aiaa_server.imaging.formats import ImageFormat
from aiaa_server.imaging.io import Volume
from aiaa_server.imaging.masks import dice
from aiaa_server.inference.crop_growth import PASSES_KEY
from aiaa_server.inference.interactive import prepare_params
from aiaa_server.inference.tensors import volume_to_tensor
from aiaa_server.inference.transforms import WriterOutput
from aiaa_server.mmar.loader import LoadedModel, load_mmar, parse_config
from tests.support.mmars import write_mmar
from tests.support.volumes import lps_affine

SPACING = 3.0  # mm, isotropic input voxels
CLICK = [64, 64, 64]
GROWTH = {"max_passes": 3, "zoom": 2.0, "border_voxels": 2}

PRE = [
    {"name": "LoadImaged", "args": {"keys": "image"}},
    {"name": "EnsureChannelFirstd", "args": {"keys": "image", "channel_dim": "no_channel"}},
    {"name": "aiaa.transforms.DeepgrowCropd",  # 96 voxels at 2 mm: a 192 mm crop
     "args": {"keys": "image", "spatial_size": [96, 96, 96], "pixdim": [2.0, 2.0, 2.0]}},
    {"name": "ScaleIntensityRanged", "args": {"keys": "image", "a_min": 0, "a_max": 1, "b_min": 0.0, "b_max": 1.0}},
    {"name": "aiaa.transforms.AddGuidanceChannelsd", "args": {"keys": "image", "sigma": 2.0}},
]
POST = [
    {"name": "Activationsd", "args": {"keys": "pred", "sigmoid": True}},
    {"name": "aiaa.transforms.KeepClickedComponentsd", "args": {"keys": "pred", "threshold": 0.5}},
    {"name": "aiaa.transforms.PasteCropd", "args": {"keys": "pred", "threshold": 0.5, "result": "result"}},
]


class IntensityNet(torch.nn.Module):
    """(1, 3, X, Y, Z) image + guidance → (1, 1, X, Y, Z) logits of the image channel above 0.5."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 10.0 * (x[:, :1] - 0.5)


def deepgrow_config(growth: dict[str, Any] | None = None, post: list[dict[str, Any]] | None = None,
                    model_type: str = "deepgrow", deepgrow: str = "3D", size: int = 96) -> dict[str, Any]:
    inference: dict[str, Any] = {
        "input": "image", "output": "pred", "meta_data": {"deepgrow": deepgrow},
        "AIAA": {"name": "aiaa.inference.PyTorchInference", "args": {"scanning_window": False}},
    }
    if growth is not None:
        inference["crop_growth"] = growth
    pre = copy.deepcopy(PRE)
    pre[2]["args"].update(spatial_size=[size] * 3, pixdim=[192.0 / size] * 3)
    return {"version": "1", "type": model_type, "labels": [], "description": "test: bright voxels",
            "pre_transforms": pre, "inference": inference,
            "post_transforms": copy.deepcopy(POST if post is None else post),
            "writer": {"name": "aiaa.transforms.Writer", "args": {"image": "pred", "json": "result"}}}


def load_model(folder: Path, growth: dict[str, Any] | None = None, **config: Any) -> LoadedModel:
    write_mmar(folder, deepgrow_config(growth, **config))
    (folder / "models").mkdir(exist_ok=True)
    traced = torch.jit.trace(IntensityNet().eval(), torch.zeros(1, 3, 8, 8, 8))
    torch.jit.save(traced, str(folder / "models" / "model.ts"))
    return load_mmar(folder, TorchScriptPool())


def click(model: LoadedModel, image: np.ndarray, affine: np.ndarray, point: list[int] = CLICK) -> WriterOutput:
    params = prepare_params(model.config, {"foreground": [point], "current_point": point})
    return model.pipeline.run({**params, "image": volume_to_tensor(Volume(image, affine, ImageFormat.NIFTI_GZ))})


def oblique_affine() -> np.ndarray:
    """3 mm voxels whose axes are turned 25° about z, then 10° about x, off the RAS axes."""
    a, b = np.radians(25.0), np.radians(10.0)
    turn_z = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    turn_x = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    affine = np.eye(4)
    affine[:3, :3] = turn_x @ turn_z * SPACING
    affine[:3, 3] = (-100.0, 20.0, 35.0)
    return affine


def offsets_mm(affine: np.ndarray, shape: tuple[int, int, int], centre: list[int] = CLICK) -> np.ndarray:
    """(3, X, Y, Z) world offsets in mm of each voxel from the voxel `centre`."""
    index = np.indices(shape, dtype=np.float32).reshape(3, -1) - np.asarray(centre, np.float32)[:, None]
    return (affine[:3, :3].astype(np.float32) @ index).reshape(3, *shape)


def ellipsoid(affine: np.ndarray, shape: tuple[int, int, int], radii_mm: tuple[float, float, float]) -> np.ndarray:
    x, y, z = offsets_mm(affine, shape)
    return (x / radii_mm[0]) ** 2 + (y / radii_mm[1]) ** 2 + (z / radii_mm[2]) ** 2 <= 1.0


def box_of(mask: np.ndarray) -> list[list[int]]:
    present = [np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)]
    return [[int(p[0]), int(p[-1]) + 1] for p in present]


@pytest.mark.parametrize("affine", [lps_affine((SPACING,) * 3), oblique_affine()], ids=["lps", "oblique"])
def test_a_structure_larger_than_the_crop_comes_back_whole(tmp_path: Path, affine: np.ndarray) -> None:
    shape = (128, 128, 128)  # 384 mm
    truth = ellipsoid(affine, shape, (150.0, 140.0, 130.0))  # 300 × 280 × 260 mm, the crop is 192 mm
    image = truth.astype(np.float32)

    cut = click(load_model(tmp_path / "single"), image, affine)
    (x0, x1), (y0, y1), (z0, z1) = crop = cut.json["crop"]
    assert all(0 < lo and hi < size for (lo, hi), size in zip(crop, shape))  # the crop lies inside the volume
    outside = np.ones(shape, bool)
    outside[x0:x1, y0:y1, z0:z1] = False
    assert not cut.image[outside].any() and (truth & (cut.image == 0)).sum() > 0.3 * truth.sum()
    assert PASSES_KEY not in cut.json and dice(cut.image, truth) < 0.8

    grown = click(load_model(tmp_path / "growing", GROWTH), image, affine)
    assert grown.image.shape == shape and set(np.unique(grown.image)) <= {0, 1}
    assert grown.json[PASSES_KEY] == 2
    assert dice(grown.image, truth) > 0.95
    assert np.abs(np.subtract(box_of(grown.image), box_of(truth))).max() <= 1
    assert (cut.image > grown.image).sum() < 1e-4 * cut.image.sum()  # the first pass's result is kept (up to
    # a few surface voxels just outside its grid, where the coarser pass decides)
    (gx0, gx1), (gy0, gy1), (gz0, gz1) = grown.json["crop"]  # the box both passes cover holds the result
    assert grown.image.sum() == grown.image[gx0:gx1, gy0:gy1, gz0:gz1].sum()


def test_a_small_structure_takes_one_pass_and_the_result_of_a_single_crop(tmp_path: Path) -> None:
    affine = lps_affine((SPACING,) * 3)
    truth = ellipsoid(affine, (128, 128, 128), (30.0, 30.0, 30.0))
    image = truth.astype(np.float32)
    single = click(load_model(tmp_path / "single"), image, affine)
    grown = click(load_model(tmp_path / "growing", GROWTH), image, affine)
    assert grown.json == {**single.json, PASSES_KEY: 1}
    np.testing.assert_array_equal(grown.image, single.image)
    assert dice(grown.image, truth) > 0.95


@pytest.mark.parametrize("max_passes", [1, 2, 3])
def test_a_volume_filling_structure_stops_at_max_passes(tmp_path: Path, max_passes: int) -> None:
    shape = (160, 160, 160)  # 480 mm: the 2nd pass (384 mm) still ends inside it, the 3rd (768 mm) does not
    image = np.ones(shape, np.float32)
    model = load_model(tmp_path / "growing", {**GROWTH, "max_passes": max_passes})
    grown = click(model, image, lps_affine((SPACING,) * 3), point=[80, 80, 80])
    assert grown.json[PASSES_KEY] == max_passes
    extent = {1: 64, 2: 128, 3: 160}[max_passes]  # voxels: 192 mm, 384 mm, the whole volume
    assert all(abs((hi - lo) - extent) <= 1 for lo, hi in grown.json["crop"])
    (x0, x1), (y0, y1), (z0, z1) = filled = box_of(grown.image)  # all of it up to the crop's rim, no seam
    assert np.abs(np.subtract(filled, grown.json["crop"])).max() <= 1
    assert grown.image[x0:x1, y0:y1, z0:z1].all() and grown.image.sum() == (x1 - x0) * (y1 - y0) * (z1 - z0)


def test_the_clicked_component_rule_holds_on_the_combined_result(tmp_path: Path) -> None:
    """A (clicked) ends 81 mm from the click, a 3 mm gap, then B (unclicked) from 87 to 138 mm on both sides.
    The 2 mm crop sees the gap and drops B; the 4 mm pass samples at ±82 and ±86 mm, misses the gap and keeps
    B; the part of B only that pass covers must still go, as it touches no click once the passes combine."""
    affine = lps_affine((SPACING,) * 3)
    shape = (128, 128, 128)
    k = [np.abs(np.arange(n) - c).reshape([-1 if a == axis else 1 for a in range(3)])  # |voxel offset|
         for axis, (n, c) in enumerate(zip(shape, CLICK))]
    a_part = (k[0] <= 27) & (k[1] <= 46) & (k[2] <= 46)
    b_part = (k[0] >= 29) & (k[0] <= 46) & (k[1] <= 10) & (k[2] <= 10)
    image = (a_part | b_part).astype(np.float32)
    model = load_model(tmp_path / "growing", GROWTH)
    grown = click(model, image, affine)
    assert grown.json[PASSES_KEY] == 2
    assert not grown.image[np.broadcast_to(k[0] >= 29, shape)].any()
    assert dice(grown.image, a_part) > 0.95

    model.pipeline.growth = dataclasses.replace(model.pipeline.growth, keep=None)
    unkept = click(model, image, affine)  # without the rule on the combined mask, B's far part stays
    assert unkept.image[np.broadcast_to(k[0] >= 32, shape) & b_part].all()


def test_a_part_that_joins_the_clicked_structure_outside_the_first_crop_is_kept(tmp_path: Path) -> None:
    """A U: the clicked arm and the other arm run side by side through the 192 mm crop (80 mm apart) and meet
    only at 120-150 mm, outside it.  The first pass alone would drop the other arm as unclicked; combined with
    the coarser pass, which sees the bend, the whole U comes back."""
    affine = lps_affine((SPACING,) * 3)
    shape = (128, 128, 128)
    x, y, z = offsets_mm(np.diag([SPACING] * 3 + [1.0]), shape)  # mm from the click along the index axes
    arms = (x >= -60) & (x <= 150) & (np.abs(np.abs(y) - 40) <= 15) & (np.abs(z) <= 15)
    bend = (x >= 120) & (x <= 150) & (np.abs(y) <= 55) & (np.abs(z) <= 15)
    u_shape = arms | bend
    image = u_shape.astype(np.float32)
    click_at = [64, 64 - 13, 64]  # in the arm at y = -39 mm
    single = click(load_model(tmp_path / "single"), image, affine, point=click_at)
    assert not single.image[u_shape & (y > 0)].any()  # one crop: only the clicked arm
    grown = click(load_model(tmp_path / "growing", GROWTH), image, affine, point=click_at)
    assert grown.json[PASSES_KEY] == 2
    assert dice(grown.image, u_shape) > 0.95


@pytest.mark.parametrize(("growth", "problem"), [
    ({"max_passes": 0}, "max_passes"), ({"max_passes": 6}, "max_passes"), ({"max_passes": 2.5}, "max_passes"),
    ({"zoom": 1.0}, "zoom"), ({"zoom": 0.5}, "zoom"), ({"zoom": 5.0}, "zoom"), ({"zoom": "inf"}, "zoom"),
    ({"border_voxels": 0}, "border_voxels"), ({"border_voxels": 17}, "border_voxels"),
    ({"max_pass": 2}, "max_pass"), ([3, 2.0], "crop_growth"),
])
def test_bad_crop_growth_values_are_refused_with_the_field(growth: Any, problem: str) -> None:
    with pytest.raises(InvalidModel) as caught:
        parse_config(deepgrow_config(growth))
    assert caught.value.status == 422 and problem in str(caught.value)


@pytest.mark.parametrize("config", [
    deepgrow_config(GROWTH, model_type="segmentation"), deepgrow_config(GROWTH, deepgrow="2D"),
])
def test_crop_growth_is_for_deepgrow_3d_only(config: dict[str, Any]) -> None:
    with pytest.raises(InvalidModel, match="DeepGrow 3D models only"):
        parse_config(config)


@pytest.mark.parametrize(("config", "problem"), [
    ({"growth": {"border_voxels": 12}, "size": 24}, "less than half"),
    ({"growth": GROWTH, "post": POST[:2]}, "exactly one PasteCropd"),
])
def test_crop_growth_the_transforms_cannot_serve_is_refused_at_load(tmp_path: Path, config: dict[str, Any],
                                                                   problem: str) -> None:
    with pytest.raises(InvalidModel, match=problem):
        load_model(tmp_path / "bad", **config)

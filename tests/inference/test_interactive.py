"""Click params and the click-model transforms (DeepGrow 2D/3D, DExtr3D), checked without a network where the
geometry is what matters (an "oracle" that samples the true mask on the network grid must round-trip)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from monai.transforms import EnsureChannelFirstd, Orientationd, Spacingd

from aiaa_demo.synthetic_shapes import dice, extreme_points, first_click, make_scene, pick_object
from aiaa_server.engines.torchscript import TorchScriptPool
from aiaa_server.errors import InvalidParams
from aiaa_server.imaging.formats import ImageFormat
from aiaa_server.imaging.io import Volume
from aiaa_server.inference.click_transforms import (
    GEOMETRY_KEY,
    GUIDANCE_KEY,
    AddGuidanceChannelsd,
    CropGeometry,
    DeepgrowCropd,
    DeepgrowSliced,
    ExtremePointsCropd,
    KeepClickedComponentsd,
    PasteCropd,
    gaussian_heatmap,
    guidance_channel,
    paste_to_input,
    sample_grid,
)
from aiaa_server.inference.interactive import (
    CLICKS_KEY,
    MAX_COORDINATE,
    DeepgrowClicks,
    ExtremePoints,
    parse_points,
    prepare_params,
)
from aiaa_server.inference.tensors import volume_to_tensor
from aiaa_server.mmar.components import resolve_component
from aiaa_server.mmar.loader import load_mmar, parse_config

MODELS = Path(__file__).resolve().parents[2] / "models"
DEEPGROW = parse_config({"type": "deepgrow", "inference": {"meta_data": {"deepgrow": "3D"}}})
DEXTR = parse_config({"type": "annotation"})


# ------------------------------------------------------------------ params


@pytest.mark.parametrize("current", [[5, 6, 7], [[5, 6, 7]], [[1, 1, 1], [5, 6, 7]]])
def test_current_point_flat_or_nested_becomes_one_point(current: Any) -> None:
    params = prepare_params(DEEPGROW, {"foreground": [[5, 6, 7]], "current_point": current})
    assert params["current_point"] == [[5, 6, 7]]


def test_absent_current_point_and_missing_lists_default_to_empty() -> None:
    params = prepare_params(DEEPGROW, {"foreground": [[1, 2, 3]]})
    assert params["current_point"] == [] and params["background"] == []
    params = prepare_params(DEEPGROW, {"background": [[1, 2, 3]], "current_point": [1, 2, 3]})
    assert params["foreground"] == [] and params["background"] == [[1, 2, 3]]


def test_deepgrow_without_any_click_is_refused() -> None:
    with pytest.raises(InvalidParams, match="at least one click"):
        prepare_params(DEEPGROW, {})


def test_dextr3d_needs_six_points() -> None:
    with pytest.raises(InvalidParams, match="at least 6"):
        prepare_params(DEXTR, {"points": [[1, 2, 3]] * 5})
    assert len(prepare_params(DEXTR, {"points": [[1, 2, 3]] * 6})["points"]) == 6


def test_click_count_is_checked_before_any_point_is_converted() -> None:
    with pytest.raises(InvalidParams, match=r"foreground has 11 points; at most 10 .*--max_clicks"):
        parse_points([["not", "a", "point"]] * 11, "foreground", max_points=10)
    assert parse_points([1, 2, 3], "current_point", max_points=1) == [[1, 2, 3]]  # one flat point


@pytest.mark.parametrize("coordinate", [float("nan"), float("inf"), float("-inf"), MAX_COORDINATE + 1, -1e300, True])
def test_coordinates_must_be_finite_bounded_numbers(coordinate: Any) -> None:
    with pytest.raises(InvalidParams, match="foreground"):
        parse_points([[1, coordinate, 3]], "foreground")


def test_two_or_three_coordinates_per_point() -> None:
    assert parse_points([[1, 2]], "foreground") == [[1, 2]]
    with pytest.raises(InvalidParams, match=r"\[x, y, z\]"):
        parse_points([[1, 2, 3, 4]], "foreground")
    with pytest.raises(InvalidParams, match=r"\[x, y, z\]"):
        parse_points([[1]], "foreground")


def test_all_clicks_of_a_request_share_the_limit() -> None:
    within = prepare_params(DEEPGROW, {"foreground": [[1, 2, 3]] * 5, "background": [[1, 2, 3]] * 5}, max_clicks=10)
    assert len(within["foreground"]) + len(within["background"]) == 10
    with pytest.raises(InvalidParams, match="11 points together; at most 10"):
        prepare_params(DEEPGROW, {"foreground": [[1, 2, 3]] * 6, "background": [[1, 2, 3]] * 5}, max_clicks=10)
    with pytest.raises(InvalidParams, match="points has 11 points"):
        prepare_params(DEXTR, {"points": [[1, 2, 3]] * 11}, max_clicks=10)


def test_components_resolve_by_short_and_aiaa_names() -> None:
    for name in ("DeepgrowCropd", "aiaa.transforms.DeepgrowCropd", "aiaa.transforms.PasteCropd",
                 "ExtremePointsCropd", "AddGuidanceChannelsd", "DeepgrowSliced"):
        cls, _ = resolve_component(name, {})
        assert cls.__name__ == name.rsplit(".", 1)[-1]


# ------------------------------------------------------------------ geometry


@pytest.fixture(scope="module")
def scene_and_mask():
    rng = np.random.default_rng(11)
    scene = make_scene(rng, shape=(150, 140, 48), spacing=(0.9, 1.0, 2.5), lps=True)
    label = pick_object(rng, scene, min_voxels=1500)
    return scene, scene.mask(label)


def _data(scene, **params: Any) -> dict[str, Any]:
    image = volume_to_tensor(Volume(scene.image, scene.affine, ImageFormat.NIFTI_GZ))
    return EnsureChannelFirstd("image", channel_dim="no_channel")({"image": image, **params})


def _oracle_paste(data: dict[str, Any], mask: np.ndarray) -> dict[str, Any]:
    """Sample the true mask on the network grid (a perfect network) and paste it back."""
    geometry = data[GEOMETRY_KEY]
    source = torch.from_numpy(mask.astype(np.float32))[None]
    if geometry.slice_index is not None:
        source = source[..., geometry.slice_index]
    data["pred"] = sample_grid(source, geometry.matrix, geometry.grid_shape)
    return PasteCropd("pred")(data)


@pytest.mark.parametrize("resample_first", [False, True])
def test_deepgrow_3d_crop_maps_clicks_and_pastes_back_on_the_input_grid(scene_and_mask, resample_first) -> None:
    scene, mask = scene_and_mask
    click = first_click(mask)
    data = _data(scene, foreground=[click], background=[], current_point=[click])
    if resample_first:  # Orientationd/Spacingd before the crop: points still map through the affines
        data = Spacingd("image", pixdim=(1.5, 1.5, 1.5))(Orientationd("image", axcodes="RAS")(data))
    data = DeepgrowCropd("image", spatial_size=(64, 64, 64), pixdim=(2.0, 2.0, 2.0))(data)
    assert tuple(data["image"].shape) == (1, 64, 64, 64)
    np.testing.assert_allclose(data[GUIDANCE_KEY]["foreground"], [[31.5, 31.5, 31.5]], atol=1e-6)
    np.testing.assert_allclose(np.diag(np.asarray(data["image"].affine))[:3], [2.0, 2.0, 2.0])
    centre_value = float(data["image"][0, 31:33, 31:33, 31:33].mean())
    assert abs(centre_value - float(scene.image[tuple(click)])) < 80  # the crop really is around the click
    out = _oracle_paste(data, mask)
    assert out["pred"].shape == mask.shape and out["pred"].dtype == np.uint8
    assert dice(out["pred"], mask) > 0.9
    (x0, x1), _, (z0, z1) = out["result"]["crop"]
    assert 0 <= x0 <= click[0] < x1 <= mask.shape[0] and 0 <= z0 <= click[2] < z1 <= mask.shape[2]
    assert not out["pred"][:x0].any() and not out["pred"][x1:].any()


def test_deepgrow_2d_fills_only_the_clicked_slice(scene_and_mask) -> None:
    scene, mask = scene_and_mask
    click = first_click(mask)
    other = [click[0], click[1], click[2] + 1]
    data = _data(scene, foreground=[click, other], background=[], current_point=[click])
    data = DeepgrowSliced("image", spatial_size=(96, 96), pixdim=(1.5, 1.5))(data)
    assert tuple(data["image"].shape) == (1, 96, 96)
    assert len(data[GUIDANCE_KEY]["foreground"]) == 1  # the click on another slice is ignored
    out = _oracle_paste(data, mask)
    filled = np.nonzero(out["pred"].any(axis=(0, 1)))[0]
    assert filled.tolist() == [click[2]]
    assert dice(out["pred"][..., click[2]], mask[..., click[2]]) > 0.9
    assert out["result"]["crop"][2] == [click[2], click[2] + 1]


def test_dextr3d_crop_pads_in_mm_and_pastes_back(scene_and_mask) -> None:
    scene, mask = scene_and_mask
    points = extreme_points(mask)
    data = ExtremePointsCropd("image", pad_mm=20.0, spatial_size=(48, 48, 48))(_data(scene, points=points))
    geometry = data[GEOMETRY_KEY]
    lo, _ = geometry.footprint()
    low = np.min(points, axis=0)
    expected_pad = np.ceil(20.0 / np.array(scene.spacing))
    assert np.all(lo == np.maximum(low - expected_pad, 0))
    grid_points = data[GUIDANCE_KEY]["points"]
    assert grid_points.shape == (6, 3) and grid_points.min() >= 0 and grid_points.max() <= 47
    out = _oracle_paste(data, mask)
    assert dice(out["pred"], mask) > 0.95


def test_points_outside_the_image_are_named(scene_and_mask) -> None:
    scene, mask = scene_and_mask
    points = extreme_points(mask)[:5] + [[scene.image.shape[0], 3, 3]]
    with pytest.raises(InvalidParams, match=rf"\[{scene.image.shape[0]}, 3, 3\] is outside the image"):
        ExtremePointsCropd("image")(_data(scene, points=points))
    with pytest.raises(InvalidParams, match=r"\[-1, 0, 0\]"):
        DeepgrowCropd("image")(_data(scene, foreground=[[-1, 0, 0]], background=[], current_point=[]))


def test_crops_without_any_click_are_refused(scene_and_mask) -> None:
    scene, _ = scene_and_mask
    with pytest.raises(InvalidParams, match="at least one click"):
        DeepgrowClicks([], [], [])
    for crop in (DeepgrowCropd("image"), DeepgrowSliced("image")):
        with pytest.raises(InvalidParams, match="at least one click"):
            crop(_data(scene, foreground=[], background=[]))


def test_crops_read_the_parsed_clicks_unless_configured_with_other_keys(scene_and_mask) -> None:
    scene, mask = scene_and_mask
    click = first_click(mask)
    parsed = _data(scene, **{CLICKS_KEY: DeepgrowClicks([click], [], [click])})  # no lists under the keys
    out = DeepgrowCropd("image", spatial_size=(32, 32, 32))(parsed)
    np.testing.assert_allclose(out[GUIDANCE_KEY]["foreground"], [[15.5, 15.5, 15.5]], atol=1e-6)
    renamed = DeepgrowCropd("image", spatial_size=(32, 32, 32), foreground="fg", background="bg",
                            current_point="cp")
    with pytest.raises(InvalidParams, match="at least one click"):
        renamed(parsed)
    out = renamed({**parsed, "fg": [click]})
    np.testing.assert_allclose(out[GUIDANCE_KEY]["foreground"], [[15.5, 15.5, 15.5]], atol=1e-6)
    points = extreme_points(mask)
    out = ExtremePointsCropd("image", spatial_size=(16, 16, 16))(_data(scene, **{CLICKS_KEY: ExtremePoints(points)}))
    assert out[GUIDANCE_KEY]["points"].shape == (6, 3)


def test_guidance_heatmaps() -> None:
    heat = gaussian_heatmap(np.array([[5.0, 5.0, 5.0]]), (11, 11, 11), sigma=2.0)
    assert heat[5, 5, 5] == pytest.approx(1.0) and heat[5, 5, 7] == pytest.approx(np.exp(-0.5), rel=1e-5)
    rescaled = guidance_channel(np.array([[2.0, 2.0, 2.0], [8.0, 8.0, 8.0]]), (11, 11, 11), 1.5, (-1.0, 1.0))
    assert rescaled.min() == pytest.approx(-1.0) and rescaled.max() == pytest.approx(1.0)
    assert guidance_channel(np.zeros((0, 3)), (4, 4, 4), 2.0).max() == 0.0
    data = {"image": torch.zeros(1, 8, 8, 8), GUIDANCE_KEY: {"foreground": np.array([[4.0, 4.0, 4.0]]),
                                                             "background": np.zeros((0, 3))}}
    out = AddGuidanceChannelsd("image")(data)
    assert tuple(out["image"].shape) == (3, 8, 8, 8) and float(out["image"][1, 4, 4, 4]) == 1.0
    assert float(out["image"][2].abs().max()) == 0.0


def test_keep_clicked_components_drops_unclicked_islands() -> None:
    mask = np.zeros((20, 20, 20), np.uint8)
    mask[2:6, 2:6, 2:6] = 1
    mask[12:18, 12:18, 12:18] = 1
    out = KeepClickedComponentsd("pred")({"pred": mask, "foreground": [[14, 14, 14]]})["pred"]
    assert out[14, 14, 14] == 1 and out[3, 3, 3] == 0
    untouched = KeepClickedComponentsd("pred")({"pred": mask, "foreground": [[9, 9, 9]]})["pred"]
    assert untouched.sum() == mask.sum()


def test_keep_clicked_components_on_the_network_grid_zeroes_unclicked_probabilities() -> None:
    probability = torch.zeros((1, 16, 16, 16))
    probability[0, 1:5, 1:5, 1:5] = 0.9
    probability[0, 9:14, 9:14, 9:14] = 0.8
    probability[0, 7, 7, 7] = 0.3  # below the threshold: not a component, left alone
    geometry = CropGeometry(np.eye(4), (16, 16, 16), (40, 40, 40))
    data = {"pred": probability, GEOMETRY_KEY: geometry, GUIDANCE_KEY: {"foreground": np.array([[10.2, 11.0, 9.6]])}}
    out = KeepClickedComponentsd("pred")(data)["pred"]
    assert float(out[0, 10, 11, 10]) == pytest.approx(0.8) and float(out[0, 2, 2, 2]) == 0.0
    assert float(out[0, 7, 7, 7]) == pytest.approx(0.3)
    assert float(probability[0, 2, 2, 2]) == pytest.approx(0.9)  # the input is not modified
    data[GUIDANCE_KEY] = {"foreground": np.zeros((0, 3))}
    assert KeepClickedComponentsd("pred")(data)["pred"] is probability


@pytest.mark.parametrize("matrix", [
    np.array([[2.5, 0, 0, 3.0], [0, -2.5, 0, 70.0], [0, 0, 0.8, 1.5], [0, 0, 0, 1]]),
    np.array([[1.6, 0.4, 0, 4.0], [-0.4, 1.6, 0, 30.0], [0, 0, 1.1, 2.0], [0, 0, 0, 1]]),  # oblique
], ids=["axis-aligned", "oblique"])
def test_paste_samples_only_where_the_threshold_can_be_reached(matrix: np.ndarray) -> None:
    """The paste skips the voxels no probability ≥ threshold can reach: same mask as sampling the whole box."""
    rng = np.random.default_rng(3)
    probability = torch.zeros((1, 24, 24, 24))
    probability[0, 6:15, 8:13, 5:20] = torch.from_numpy(rng.uniform(0.2, 1.0, (9, 5, 15)).astype(np.float32))
    geometry = CropGeometry(matrix, (24, 24, 24), (80, 75, 40))
    mask, crop = paste_to_input(probability, geometry)
    assert mask.flags.f_contiguous and mask.dtype == np.uint8
    lo, hi = geometry.footprint()
    to_box = np.eye(4)
    to_box[:3, 3] = lo
    whole = sample_grid(probability, np.linalg.inv(matrix) @ to_box, tuple(hi - lo), padding_mode="zeros")[0]
    expected = np.zeros(geometry.input_shape, np.uint8)
    expected[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = (whole >= 0.5).numpy()
    assert expected.sum() > 100
    np.testing.assert_array_equal(mask, expected)
    assert crop == [[int(a), int(b)] for a, b in zip(lo, hi)]
    empty, crop_of_empty = paste_to_input(torch.full((1, 24, 24, 24), 0.1), geometry)
    assert not empty.any() and crop_of_empty == crop


# ------------------------------------------------------------------ bundled MMARs


@pytest.mark.parametrize(("name", "params"), [
    ("demo_deepgrow_3d", lambda m: {"foreground": [first_click(m)], "current_point": first_click(m)}),
    ("demo_deepgrow_2d", lambda m: {"foreground": [first_click(m)], "current_point": [first_click(m)]}),
    ("demo_dextr3d_annotation", lambda m: {"points": extreme_points(m)}),
])
def test_bundled_click_models_return_masks_on_the_input_grid(scene_and_mask, name, params) -> None:
    scene, mask = scene_and_mask
    model = load_mmar(MODELS / name, TorchScriptPool())
    prepared = prepare_params(model.config, params(mask))
    output = model.pipeline.run({**prepared, "image": volume_to_tensor(Volume(scene.image, scene.affine,
                                                                              ImageFormat.NIFTI_GZ))})
    assert output.image.shape == mask.shape
    assert set(np.unique(output.image)) <= {0, 1}
    if name == "demo_deepgrow_2d":
        assert np.nonzero(output.image.any(axis=(0, 1)))[0].tolist() in ([], [first_click(mask)[2]])
    assert "DEMO" in model.config.description

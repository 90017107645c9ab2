"""The weight-free DeepGrow network `RegionGrowd` and the bundled `classical_region_grow` model, through the
server's own pipeline (`load_mmar` + `pipeline.run`, as HTTP requests run it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from monai.transforms import EnsureChannelFirstd, Spacingd

from aiaa_demo.phantoms import ORGAN_LABELS, make_abdomen_phantom
from aiaa_server.engines.torchscript import TorchScriptPool
from aiaa_server.errors import InvalidModel, InvalidParams, ModelError
from aiaa_server.imaging.formats import ImageFormat
from aiaa_server.imaging.io import Volume
from aiaa_server.imaging.masks import dice
from aiaa_server.inference.classical_transforms import RegionGrowd
from aiaa_server.inference.interactive import prepare_params
from aiaa_server.inference.tensors import volume_to_tensor
from aiaa_server.mmar.components import resolve_component
from aiaa_server.mmar.loader import build_network, load_mmar, parse_config
from tests.support.volumes import interior_click, lps_affine

MODEL = Path(__file__).resolve().parents[2] / "models" / "classical_region_grow"
DEEPGROW = parse_config({"type": "deepgrow", "inference": {"meta_data": {"deepgrow": "3D"}}})
AFFINE = lps_affine((0.9, 0.8, 2.0))


def box_scene() -> tuple[np.ndarray, np.ndarray]:
    """A noisy 60 HU box in fat (CT-like), on an LPS grid of anisotropic spacing."""
    rng = np.random.default_rng(5)
    image = np.full((70, 60, 30), -90.0, np.float32)
    truth = np.zeros(image.shape, bool)
    truth[20:50, 15:45, 8:22] = True
    image[truth] = 60.0
    image += rng.normal(0.0, 8.0, image.shape).astype(np.float32)
    return image, truth


def run(transform: RegionGrowd, image: np.ndarray, params: dict[str, Any], affine: np.ndarray = AFFINE
        ) -> dict[str, Any]:
    data = {**prepare_params(DEEPGROW, params), "image": volume_to_tensor(Volume(image, affine, ImageFormat.NIFTI_GZ))}
    return transform(data)


def test_region_growd_writes_a_mask_on_the_input_grid_and_the_roi() -> None:
    image, truth = box_scene()
    out = run(RegionGrowd(), image, {"foreground": [[35, 30, 15]], "background": [], "current_point": [35, 30, 15]})
    mask = out["pred"]
    assert mask.shape == image.shape and mask.dtype == np.uint8
    assert dice(mask, truth) > 0.9
    (x0, x1), (y0, y1), (z0, z1) = out["result"]["crop"]
    assert 0 <= x0 <= 35 < x1 <= 70 and 0 <= y0 <= 30 < y1 <= 60 and 0 <= z0 <= 15 < z1 <= 30


def test_region_growd_accepts_a_channel_first_image() -> None:
    image, truth = box_scene()
    data = {**prepare_params(DEEPGROW, {"foreground": [[35, 30, 15]]}),
            "image": volume_to_tensor(Volume(image, AFFINE, ImageFormat.NIFTI_GZ))}
    data = EnsureChannelFirstd(keys="image", channel_dim="no_channel")(data)
    assert dice(RegionGrowd()(data)["pred"], truth) > 0.9


def test_current_point_alone_is_a_foreground_click_unless_it_is_a_background_one() -> None:
    image, truth = box_scene()
    alone = run(RegionGrowd(), image, {"current_point": [35, 30, 15]})["pred"]
    assert dice(alone, truth) > 0.9
    background = run(RegionGrowd(), image, {"background": [[35, 30, 15]], "current_point": [35, 30, 15]})["pred"]
    assert not background.any() and background.shape == image.shape


@pytest.mark.parametrize("params", [
    {"foreground": [[70, 30, 15]]},
    {"foreground": [[35, 30, 15]], "background": [[5, -1, 3]]},
    {"current_point": [35, 30, 30]},
])
def test_clicks_outside_the_image_are_400(params: dict[str, Any]) -> None:
    image, _ = box_scene()
    with pytest.raises(InvalidParams, match="outside the image"):
        run(RegionGrowd(), image, params)


def test_clicks_spanning_more_than_the_roi_allows_are_400() -> None:
    image, _ = box_scene()
    with pytest.raises(InvalidParams, match="max_roi_voxels"):
        run(RegionGrowd(max_roi_voxels=1000), image, {"foreground": [[0, 0, 0], [69, 59, 29]]})


def test_a_resampled_image_is_refused() -> None:
    image, _ = box_scene()
    data = {**prepare_params(DEEPGROW, {"foreground": [[10, 10, 5]]}),
            "image": volume_to_tensor(Volume(image, AFFINE, ImageFormat.NIFTI_GZ))}
    data = Spacingd(keys="image", pixdim=(2.0, 2.0, 2.0))(EnsureChannelFirstd(keys="image", channel_dim="no_channel")(data))
    with pytest.raises(ModelError, match="input grid"):
        RegionGrowd()(data)


@pytest.mark.parametrize("bad", [{"k": -1}, {"iterations": 10**9}, {"roi_mm": float("inf")},
                                 {"max_roi_voxels": 10**12}, {"smoothing_mm": "1"}])
def test_hostile_arguments_do_not_build(bad: dict[str, Any]) -> None:
    with pytest.raises((ValueError, TypeError)):
        RegionGrowd(**bad)
    config = parse_config({"type": "deepgrow", "inference": {"network": {"name": "RegionGrowd", "args": bad}}})
    with pytest.raises(InvalidModel, match="RegionGrowd"):
        build_network(config)


def test_configs_find_it_by_short_and_aiaa_name() -> None:
    assert resolve_component("RegionGrowd", {})[0] is RegionGrowd
    assert resolve_component("aiaa.transforms.RegionGrowd", {})[0] is RegionGrowd
    config = parse_config({"type": "deepgrow", "inference": {"input": "img", "output": "mask",
                                                             "network": {"name": "RegionGrowd", "args": {"k": 2.0}}}})
    network = build_network(config)
    assert isinstance(network, RegionGrowd)
    assert list(network.keys) == ["img"] and network.output == "mask" and network.params.k == 2.0


# ------------------------------------------------------------------ the bundled model


@pytest.fixture(scope="module")
def model() -> Any:
    return load_mmar(MODEL, TorchScriptPool())


def test_the_bundled_model_has_no_weights_and_lists_as_deepgrow_3d(model: Any) -> None:
    assert model.pipeline.engine is None and model.model_file is None
    assert isinstance(model.pipeline.network, RegionGrowd)
    info = model.info.model_dump()
    assert info["type"] == "deepgrow" and info["deepgrow"] == "3D" and model.config.spatial_dims == 3
    assert model.pipeline.cache_index == len(model.config.pre_transforms)  # the session caches the loaded image


@pytest.mark.parametrize(("seed", "organ"), [(0, "spleen"), (0, "liver"), (0, "left_kidney"), (1, "aorta")])
def test_the_bundled_model_segments_phantom_organs_from_one_click(model: Any, seed: int, organ: str) -> None:
    phantom = make_abdomen_phantom(np.random.default_rng(seed))
    truth = phantom.labels == ORGAN_LABELS[organ]
    click = interior_click(phantom.image, truth, phantom.spacing)
    data = {**prepare_params(model.config, {"foreground": [click], "background": [], "current_point": [click]}),
            "image": volume_to_tensor(Volume(phantom.image, phantom.affine, ImageFormat.NIFTI_GZ))}
    output = model.pipeline.run(data)
    assert output.image.shape == truth.shape
    assert set(np.unique(output.image)) <= {0, 1}
    assert dice(output.image, truth) > 0.88, organ
    assert len(output.json["crop"]) == 3


"""Loading MONAI bundles: the bundle's own pipeline on the server's decoded image, equal to MONAI's own run;
weights loaded without pickle code; untrusted bundles refused; results always on the input grid."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml

from aiaa_demo.zoo_bundles import monai_interactive_output
from aiaa_server.bundles.loader import load_bundle, serving_config
from aiaa_server.bundles.serving import ClicksAsGuidance
from aiaa_server.engines.torchscript import TorchScriptPool
from aiaa_server.errors import InvalidModel
from aiaa_server.imaging.io import read_volume
from aiaa_server.inference.interactive import DeepgrowClicks, prepare_params
from aiaa_server.inference.tensors import volume_to_tensor
from aiaa_server.mmar.folders import is_model_folder, load_model_folder
from aiaa_server.mmar.validation import validate_mmar
from tests.support.bundles import ct_like_image, edit_config, monai_mask, write_bundle


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ct_like_image(tmp_path_factory.mktemp("img") / "ct.nii.gz")


def _served_mask(bundle: Path, image: Path, **kwargs: Any) -> np.ndarray:
    model = load_bundle(bundle, TorchScriptPool(), **kwargs)
    output = model.pipeline.run({"image": volume_to_tensor(read_volume(image))})
    assert output.image is not None
    return output.image


def test_serving_config_swaps_the_loader_and_drops_writers() -> None:
    raw = {"pre": {"_target_": "Compose", "transforms": [{"_target_": "monai.transforms.LoadImaged", "keys": "image",
                                                           "reader": "ITKReader"}, {"_target_": "EnsureTyped"}]},
           "post": [{"_target_": "AsDiscreted"}, {"_target_": "SaveImaged", "output_dir": "/tmp/x"},
                    {"_target_": "monai.transforms.SaveImage"}], "keep": "$@pre"}
    served = serving_config(raw)
    assert served["pre"]["transforms"][0] == {"_target_": "aiaa_server.inference.transforms.LoadImaged",
                                              "keys": "image", "reader": "ITKReader"}
    assert served["post"] == [{"_target_": "AsDiscreted"}]
    assert served["keep"] == "$@pre"
    assert raw["post"][1]["_target_"] == "SaveImaged"  # the input is left as it was


@pytest.mark.parametrize("name", ["spleen_ct_segmentation", "wholeBody_ct_segmentation"])
def test_served_mask_equals_monais_own_bundle_run(tmp_path: Path, image: Path, name: str) -> None:
    bundle = write_bundle(tmp_path / name, name, small=True, seed=3)
    expected = monai_mask(bundle, image, tmp_path / "monai")
    served = _served_mask(bundle, image)
    assert served.shape == expected.shape == read_volume(image).spatial_shape
    assert len(np.unique(expected)) > 1  # random weights still give more than one class here
    assert np.mean(served == expected) >= 0.999


def test_model_info_comes_from_the_metadata(tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path / "spleen", "spleen_ct_segmentation", small=True)
    assert is_model_folder(bundle)
    model = load_model_folder(bundle, TorchScriptPool(), name="spleen_bundle")
    info = model.info
    assert (info.name, info.type, info.labels, info.version) == ("spleen_bundle", "segmentation", ["spleen"], "0.1.0")
    assert "random weights" in info.description
    assert model.model_file == bundle / "models" / "model.pt"


def test_yaml_config_and_no_invertd_still_land_on_the_input_grid(tmp_path: Path, image: Path) -> None:
    bundle = write_bundle(tmp_path / "spleen", "spleen_ct_segmentation", small=True)
    config_path = bundle / "configs" / "inference.json"
    config = yaml.safe_load(config_path.read_text())
    config["postprocessing"]["transforms"] = [t for t in config["postprocessing"]["transforms"]
                                              if t["_target_"] != "Invertd"]
    (bundle / "configs" / "inference.yaml").write_text(yaml.safe_dump(config))
    config_path.unlink()
    served = _served_mask(bundle, image)
    assert served.shape == read_volume(image).spatial_shape


def test_uploaded_bundle_is_refused_without_allowed_code(tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path / "b", "spleen_ct_segmentation", small=True)
    marker = tmp_path / "ran"
    edit_config(bundle, lambda c: {**c, "preprocessing": f"$open({str(marker)!r}, 'w')"})
    with pytest.raises(InvalidModel, match="--allow_uploaded_code"):
        load_bundle(bundle, TorchScriptPool(), trusted=False)
    assert not marker.exists()


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return os.system, (f"touch {self.marker}",)


def test_pickled_code_in_the_weights_never_runs(tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path / "b", "spleen_ct_segmentation", small=True)
    marker = tmp_path / "pwned"
    with open(bundle / "models" / "model.pt", "wb") as f:
        pickle.dump({"model": _Exploit(marker)}, f)
    with pytest.raises(InvalidModel, match="weights_only"):
        load_bundle(bundle, TorchScriptPool())
    assert not marker.exists()


def test_weights_of_another_network_are_refused(tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path / "b", "spleen_ct_segmentation", small=True)
    torch.save(torch.nn.Conv3d(1, 2, 3).state_dict(), bundle / "models" / "model.pt")
    with pytest.raises(InvalidModel, match="does not fit network_def"):
        load_bundle(bundle, TorchScriptPool())


def test_a_part_that_cannot_be_built_is_named(tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path / "b", "spleen_ct_segmentation", small=True)
    edit_config(bundle, lambda c: {**c, "inferer": {"_target_": "NoSuchInferer"}})
    with pytest.raises(InvalidModel, match="'inferer'"):
        load_bundle(bundle, TorchScriptPool())


def test_torchscript_network_without_state_dict(tmp_path: Path, image: Path) -> None:
    """A bundle that ships only models/model.ts runs it through the engines, with the same result."""
    bundle = write_bundle(tmp_path / "b", "spleen_ct_segmentation", small=True, seed=5)
    expected = _served_mask(bundle, image)
    model = load_bundle(bundle, TorchScriptPool())
    network = model.pipeline.network.engine.module  # type: ignore[union-attr]
    torch.jit.save(torch.jit.trace(network, torch.zeros(1, 1, 96, 96, 96)), str(bundle / "models" / "model.ts"))
    (bundle / "models" / "model.pt").unlink()
    assert load_bundle(bundle, TorchScriptPool()).model_file == bundle / "models" / "model.ts"
    assert np.mean(_served_mask(bundle, image) == expected) >= 0.999


def test_no_network_at_all_is_refused(tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path / "b", "spleen_ct_segmentation", small=True)
    (bundle / "models" / "model.pt").unlink()
    with pytest.raises(InvalidModel, match="no network"):
        load_bundle(bundle, TorchScriptPool())


def test_clicks_become_deepedit_guidance() -> None:
    clicks = DeepgrowClicks(((1, 2, 3), (4, 5, 6)), ((7, 8, 9),), ())
    data = ClicksAsGuidance(["spleen"])({"aiaa_clicks": clicks, "image": 0})
    assert data["spleen"] == [[1, 2, 3], [4, 5, 6]]
    assert data["background"] == [[7, 8, 9]]


def test_upload_validation_dry_runs_the_declared_patch(tmp_path: Path) -> None:
    """The metadata's input patch goes through the network; an output that differs from the declared
    channels refuses the bundle."""
    bundle = write_bundle(tmp_path / "b", "spleen_ct_segmentation", small=True)
    model = validate_mmar(bundle, "b", allow_code=True, default_device="cpu")
    assert model.config.inference.AIAA.triton_model_config.input[0].dims == [1, 96, 96, 96]
    meta_path = bundle / "configs" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["network_data_format"]["outputs"]["pred"]["num_channels"] = 3
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(InvalidModel, match="differs from the declared"):
        validate_mmar(bundle, "b", allow_code=True, default_device="cpu")


def test_interactive_bundle_takes_clicks_like_monai_label_feeds_it(tmp_path: Path, image: Path) -> None:
    """A DeepEdit-shaped bundle (guidance channels) is a deepgrow model; the clicks of a request reach its own
    guidance transforms, and the mask equals the bundle's pipeline run by MONAI with the same clicks."""
    bundle = write_bundle(tmp_path / "de", "spleen_deepedit_annotation", small=True, seed=4)
    model = load_bundle(bundle, TorchScriptPool())
    assert (model.info.type, model.info.labels, model.config.spatial_dims) == ("deepgrow", ["spleen"], 3)
    foreground, background = [[30, 25, 12], [40, 30, 15]], [[10, 10, 5]]
    params = prepare_params(model.config, {"foreground": foreground, "background": background})
    served = model.pipeline.run({**params, "image": volume_to_tensor(read_volume(image))}).image
    expected_file = monai_interactive_output(bundle, image, {"spleen": foreground, "background": background},
                                             tmp_path / "monai")
    expected = np.asarray(nib.load(expected_file).dataobj).squeeze()
    assert served is not None and served.shape == expected.shape
    assert np.mean(served == expected) >= 0.999
    without = model.pipeline.run({**prepare_params(model.config, {"foreground": [[5, 5, 2]], "background": []}),
                                  "image": volume_to_tensor(read_volume(image))}).image
    assert not np.array_equal(without, served)  # the clicks change the network's input

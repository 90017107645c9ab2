"""The upload allow-list (`mmar.safety`): every known code-execution vector, and the generic rule that
no argument may name importable code, checked before anything is imported or built."""

from __future__ import annotations

import builtins
import json
from pathlib import Path
from typing import Any

import pytest

from aiaa_server.engines.torchscript import TorchScriptPool
from aiaa_server.errors import InvalidModel
from aiaa_server.mmar.config import AIAAConfig
from aiaa_server.mmar.loader import load_mmar
from aiaa_server.mmar.safety import HARMLESS_BUILTINS, check_upload_config, string_names_code
from tests.support.mmars import ThresholdNet, segmentation_config, write_mmar

BUNDLED = sorted(Path(__file__).resolve().parents[2].glob("models/*/config/config_aiaa.json"))


def config_with(component: dict[str, Any]) -> AIAAConfig:
    return AIAAConfig.model_validate(segmentation_config(pre=[*segmentation_config()["pre_transforms"], component]))


def refused(component: dict[str, Any]) -> str:
    with pytest.raises(InvalidModel, match="--allow_uploaded_code") as caught:
        check_upload_config(config_with(component))
    return caught.value.message


@pytest.mark.parametrize("path", BUNDLED, ids=[p.parent.parent.name for p in BUNDLED])
def test_bundled_and_test_configs_pass(path: Path) -> None:
    check_upload_config(AIAAConfig.model_validate(json.loads(path.read_text())))
    check_upload_config(AIAAConfig.model_validate(segmentation_config()))


@pytest.mark.parametrize("component", [
    {"name": "LoadImage", "args": {"reader": "os.system", "command": "touch /tmp/x"}},
    {"name": "monai.transforms.io.dictionary.LoadImageD", "args": {"keys": "image", "reader": "subprocess.Popen"}},
    {"name": "monai.transforms.LoadImaged", "args": {"keys": "image", "reader": "os.system"}},
    {"name": "LoadImaged", "args": {"keys": "image", "reader": "builtins.exec"}},
    {"name": "SaveImaged", "args": {"keys": "image", "output_dir": "/tmp/elsewhere"}},
    {"name": "monai.transforms.SaveImage", "args": {}},
    {"name": "Lambdad", "args": {"keys": "image", "func": "print"}},
    {"name": "os.makedirs", "args": {"name": "/tmp/x"}},
    {"name": "aiaa.transforms.Something", "args": {}},
    {"name": "custom.transforms.Identityd", "args": {}},
    {"name": "ScaleIntensityRanged", "args": {"keys": "image", "dtype": "os.system"}},
    {"name": "CastToTyped", "args": {"keys": "image", "dtype": "torch.load"}},
    {"name": "ScaleIntensityRanged", "args": {"keys": "image", "a_min": "$__import__('os').system('id')"}},
    {"name": "ScaleIntensityRanged", "args": {"keys": "image", "extra": {"_target_": "os.system"}}},
    {"name": "ScaleIntensityRanged", "args": {"keys": "@network_def"}},
    {"name": "ScaleIntensityRanged", "args": {"keys": "%configs/other.json#x"}},
    {"name": "ScaleIntensityRanged", "args": {"keys": "eval"}},
    {"name": "ScaleIntensityRanged", "args": {"keys": ["image", "__class__"]}},
    {"name": "ScaleIntensityRanged", "args": {"keys": "image", "meta_keys": "/etc/passwd"}},
    {"name": "ScaleIntensityRanged", "args": {"keys": "image", "meta_keys": "../../outside"}},
    {"name": "ScaleIntensityRanged", "args": {"keys": "image", "cache_dir": "here"}},
], ids=lambda c: f"{c['name']}:{','.join(map(str, c['args'].values()))}"[:60])
def test_known_vectors_refused(component: dict[str, Any]) -> None:
    refused(component)


def _importable_callables() -> list[str]:
    names = [f"os.{n}" for n in ("system", "popen", "execv", "remove", "makedirs", "fork", "kill")]
    names += [f"subprocess.{n}" for n in ("Popen", "run", "check_output", "call")]
    names += [f"shutil.{n}" for n in ("rmtree", "copyfile", "move")]
    names += ["builtins.eval", "builtins.exec", "builtins.open", "importlib.import_module", "pickle.loads",
              "torch.load", "numpy.load", "monai.data.ITKReader", "monai.bundle.ConfigParser", "pathlib.Path",
              "pydoc.locate", "ctypes.CDLL", "code.interact", "runpy.run_path", "webbrowser.open"]
    names += [n for n in dir(builtins) if callable(getattr(builtins, n)) and n not in HARMLESS_BUILTINS
              and not n.startswith("_") and not n[0].isupper()]
    return names


@pytest.mark.parametrize("value", _importable_callables())
def test_any_argument_naming_an_importable_callable_refused(value: str) -> None:
    """Generic: whatever transform and argument name, a string naming importable code is refused."""
    assert string_names_code(value) is not None
    refused({"name": "NormalizeIntensityd", "args": {"keys": "image", "anything": value}})
    refused({"name": "aiaa.transforms.Restored", "args": {"keys": "pred", "nested": [{"deep": [value]}]}})


@pytest.mark.parametrize("value", ["image", "label", "pred", "bilinear", "nearest", "constant", "RAS", "sum",
                                   "float32", ".nii.gz", "nii.gz", "image_meta_dict", "spleen", "0.5"])
def test_plain_data_strings_allowed(value: str) -> None:
    assert string_names_code(value) is None


def test_unknown_dotted_names_that_are_not_modules_are_data() -> None:
    assert string_names_code("no_such_module_anywhere.thing") is None
    assert string_names_code("os.path.join") is not None


def test_inference_backend_and_device_checked() -> None:
    raw = segmentation_config()
    raw["inference"]["AIAA"]["name"] = "os.system"
    with pytest.raises(InvalidModel, match="aiaa.inference"):
        check_upload_config(AIAAConfig.model_validate(raw))
    raw = segmentation_config()
    raw["inference"]["AIAA"]["args"]["device"] = "nonsense:99"
    with pytest.raises(ValueError, match="device"):
        AIAAConfig.model_validate(raw)


def test_untrusted_load_checks_before_building(tmp_path: Path) -> None:
    """A model already in the uploads folder (e.g. installed by an older version) is checked at every load."""
    marker = tmp_path / "ran"
    config = segmentation_config(pre=[{"name": "LoadImage", "args": {"reader": "os.system",
                                                                      "command": f"touch {marker}"}}])
    mmar = write_mmar(tmp_path / "evil", config, ThresholdNet())
    with pytest.raises(InvalidModel, match="not allowed"):
        load_mmar(mmar, TorchScriptPool(), trusted=False)
    assert not marker.exists()


def test_control_the_vector_is_real_when_trusted(tmp_path: Path) -> None:
    """Why the check matters: MONAI itself runs `reader="os.system"` (operator folders are trusted)."""
    marker = tmp_path / "ran"
    config = segmentation_config(pre=[{"name": "LoadImage", "args": {"reader": "os.system",
                                                                      "command": f"touch {marker}"}}])
    mmar = write_mmar(tmp_path / "evil", config, ThresholdNet())
    try:
        load_mmar(mmar, TorchScriptPool(), trusted=True)
    except InvalidModel:
        pass  # building fails after the reader ran
    assert marker.exists()


# ------------------------------------------------------------------ weight-free networks (inference.network)


def network_config(name: str = "aiaa.transforms.RegionGrowd", args: dict[str, Any] | None = None) -> AIAAConfig:
    return AIAAConfig.model_validate({
        "type": "deepgrow", "pre_transforms": [{"name": "LoadImaged", "args": {"keys": "image"}}],
        "inference": {"input": "image", "output": "pred", "meta_data": {"deepgrow": "3D"},
                      "network": {"name": name, "args": args or {"k": 2.0}}},
    })


@pytest.mark.parametrize("name", ["aiaa.transforms.RegionGrowd", "RegionGrowd"])
def test_the_region_growing_network_is_allowed(name: str) -> None:
    check_upload_config(network_config(name))


@pytest.mark.parametrize("name", [
    "ScaleIntensityRanged", "aiaa.transforms.DeepgrowCropd", "aiaa.transforms.Writer", "os.system",
    "custom.RegionGrowd", "monai.transforms.RegionGrowd", "aiaa_server.inference.classical_transforms.RegionGrowd",
    "aiaa.apps.RegionGrowd", "aiaa.transforms.grow_region",
])
def test_other_networks_are_refused(name: str) -> None:
    with pytest.raises(InvalidModel, match="inference.network"):
        check_upload_config(network_config(name))


@pytest.mark.parametrize("args", [{"k": "$__import__('os').system('id')"}, {"output": "os.system"},
                                  {"extra": {"_target_": "os.system"}}, {"result_file": "x"}])
def test_network_arguments_are_checked(args: dict[str, Any]) -> None:
    with pytest.raises(InvalidModel, match="--allow_uploaded_code"):
        check_upload_config(network_config(args=args))

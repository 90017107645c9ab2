"""Loading an MMAR whose network is a torch.export program (`models/model.pt2`), alone or beside TorchScript."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from aiaa_server.engines.exported import ExportedEngine
from aiaa_server.engines.torchscript import TorchScriptEngine, TorchScriptPool
from aiaa_server.errors import InvalidModel
from aiaa_server.imaging.formats import ImageFormat
from aiaa_server.imaging.io import Volume
from aiaa_server.inference.tensors import volume_to_tensor
from aiaa_server.mmar.loader import find_model_file, load_mmar
from tests.support.mmars import ThresholdNet, segmentation_config, write_mmar
from tests.support.programs import add_program
from tests.support.volumes import cube_volume, lps_affine

NATIVE_PRE = [  # as conftest's test_threshold_native: -500..500 HU to 0..1, no resampling
    {"name": "LoadImaged", "args": {"keys": "image"}},
    {"name": "EnsureChannelFirstd", "args": {"keys": "image"}},
    {"name": "ScaleIntensityRanged",
     "args": {"keys": "image", "a_min": -500, "a_max": 500, "b_min": 0.0, "b_max": 1.0, "clip": True}},
]


def _config(scanning_window: bool) -> dict:
    return segmentation_config(pre=NATIVE_PRE, scanning_window=scanning_window, roi=[16, 16, 16])


def _segment(folder: Path) -> tuple[np.ndarray, np.ndarray, object]:
    image, mask = cube_volume()
    model = load_mmar(folder, TorchScriptPool())
    volume = Volume(image, lps_affine((0.8, 0.9, 2.5)), ImageFormat.NIFTI_GZ)
    output = model.pipeline.run({"image": volume_to_tensor(volume)})
    return output.image, mask, model


@pytest.mark.parametrize("scanning_window", [False, True])
def test_a_program_only_mmar_is_served_end_to_end(tmp_path: Path, scanning_window: bool) -> None:
    folder = write_mmar(tmp_path / "pt2_only", _config(scanning_window))  # config only
    add_program(folder, ThresholdNet())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result, mask, model = _segment(folder)
    assert model.model_file == folder / "models" / "model.pt2"
    assert isinstance(model.pipeline.engine, ExportedEngine)
    assert result.shape == mask.shape and np.array_equal(result > 0, mask)
    assert not [w for w in caught if "torch.jit" in str(w.message) or "/torch/jit/" in w.filename]


def test_the_program_is_preferred_over_torchscript(tmp_path: Path) -> None:
    folder = write_mmar(tmp_path / "both", _config(False), ThresholdNet(threshold=10.0))  # ts: all background
    add_program(folder, ThresholdNet())  # pt2: the box
    assert find_model_file(folder) == folder / "models" / "model.pt2"
    result, mask, model = _segment(folder)
    assert isinstance(model.pipeline.engine, ExportedEngine) and np.array_equal(result > 0, mask)
    (folder / "models" / "model.pt2").unlink()
    result, _, model = _segment(folder)
    assert model.model_file == folder / "models" / "model.ts"
    assert isinstance(model.pipeline.engine, TorchScriptEngine) and not result.any()


def test_a_corrupt_program_is_an_invalid_model(tmp_path: Path) -> None:
    folder = write_mmar(tmp_path / "corrupt", _config(False), ThresholdNet())
    (folder / "models" / "model.pt2").write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(InvalidModel, match=r"model\.pt2 is not a loadable torch\.export program"):
        load_mmar(folder, TorchScriptPool())


def test_no_network_names_both_files(tmp_path: Path) -> None:
    folder = write_mmar(tmp_path / "none", _config(False))
    with pytest.raises(InvalidModel, match=r"models/model\.pt2 \(torch\.export\) or models/model\.ts"):
        load_mmar(folder, TorchScriptPool())


def test_untrusted_loads_refuse_a_program_before_loading_it(tmp_path: Path, monkeypatch) -> None:
    folder = write_mmar(tmp_path / "uploaded", _config(False), ThresholdNet())
    add_program(folder, ThresholdNet())
    loads: list[object] = []
    monkeypatch.setattr(torch.export, "load", lambda *a, **k: loads.append(a))
    with pytest.raises(InvalidModel, match=r"models/model\.pt2.*--allow_uploaded_code"):
        load_mmar(folder, TorchScriptPool(), trusted=False)
    assert loads == []

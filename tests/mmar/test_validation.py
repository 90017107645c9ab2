"""Upload validation: assembling the uploaded parts, refusing pickles and disallowed code, the dry run."""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path

import pytest
import torch

from aiaa_server.errors import BadRequest, InvalidModel
from aiaa_server.mmar.archives import ArchiveLimits
from aiaa_server.mmar.validation import assemble_mmar, precheck_mmar, validate_mmar
from tests.mmar.test_store import EvilPickle
from tests.support.mmars import ThresholdNet, segmentation_config, write_mmar, write_threshold_mmar


def _parts(tmp_path: Path, config: dict | None, data: bytes | None) -> tuple[Path | None, Path | None]:
    config_part = data_part = None
    if config is not None:
        config_part = tmp_path / "config.part"
        config_part.write_text(json.dumps(config))
    if data is not None:
        data_part = tmp_path / "data.part"
        data_part.write_bytes(data)
    return config_part, data_part


def test_pickle_payloads_refused_without_unpickling(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    buffer = io.BytesIO()
    pickle.dump(EvilPickle(marker), buffer)
    for index, payload in enumerate([buffer.getvalue(), _torch_save_bytes(EvilPickle(marker))]):
        staging = tmp_path / f"s{index}"
        staging.mkdir()
        config_part, data_part = _parts(staging, segmentation_config(), payload)
        with pytest.raises(InvalidModel):
            mmar = assemble_mmar(staging, config_part, data_part, ArchiveLimits())
            validate_mmar(mmar, "evil", allow_code=False, default_device="cpu")
    assert not marker.exists()


def _torch_save_bytes(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save({"model": obj}, buffer)
    return buffer.getvalue()


def test_torchscript_without_config_asks_for_config(tmp_path: Path) -> None:
    mmar = write_threshold_mmar(tmp_path / "src")
    _, data_part = _parts(tmp_path, None, (mmar / "models" / "model.ts").read_bytes())
    with pytest.raises(BadRequest, match="send its config_aiaa.json"):
        assemble_mmar(tmp_path, None, data_part, ArchiveLimits())


def test_disallowed_component_refused_before_it_runs(tmp_path: Path) -> None:
    marker = tmp_path / "made-by-config"
    config = segmentation_config(pre=[{"name": "os.makedirs", "args": {"name": str(marker)}}])
    staging = tmp_path / "s"
    staging.mkdir()
    mmar = write_mmar(staging / "mmar", config, ThresholdNet())
    with pytest.raises(InvalidModel, match="not allowed"):
        validate_mmar(mmar, "evil", allow_code=False, default_device="cpu")
    assert not marker.exists()


def test_dry_run_refuses_network_that_mismatches_declared_shape(tmp_path: Path) -> None:
    config = segmentation_config(roi=[16, 16, 16])
    config["inference"]["TRITON"] = {
        "name": "aiaa.inference.TritonInference",
        "triton_model_config": {
            "max_batch_size": 1,
            "input": [{"name": "INPUT__0", "dims": [1, 16, 16, 16]}],
            "output": [{"name": "OUTPUT__0", "dims": [3, 16, 16, 16]}],  # ThresholdNet gives 2 channels
        },
    }
    mmar = write_mmar(tmp_path / "m", config, ThresholdNet())
    with pytest.raises(InvalidModel, match=r"output shape \[1, 2, 16, 16, 16\]"):
        validate_mmar(mmar, "m", allow_code=False, default_device="cpu")
    config["inference"]["TRITON"]["triton_model_config"]["output"][0]["dims"] = [2, 16, 16, 16]
    write_mmar(mmar, config)
    assert validate_mmar(mmar, "m", allow_code=False, default_device="cpu").name == "m"


def test_dry_run_refuses_network_that_rejects_declared_input(tmp_path: Path) -> None:
    class TwoChannel(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv3d(2, 2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x)

    mmar = write_mmar(tmp_path / "m", segmentation_config(roi=[8, 8, 8]), TwoChannel())
    with pytest.raises(InvalidModel, match=r"dry run failed.*\[1, 1, 8, 8, 8\]"):
        validate_mmar(mmar, "m", allow_code=False, default_device="cpu")



def test_custom_code_needs_allow_uploaded_code(tmp_path: Path) -> None:
    pre = [*segmentation_config()["pre_transforms"], {"name": "custom.transforms.Identityd", "args": {}}]
    mmar = write_mmar(tmp_path / "m", segmentation_config(pre=pre, roi=[16, 16, 16]), ThresholdNet())
    (mmar / "custom").mkdir()
    (mmar / "custom" / "transforms.py").write_text(
        "class Identityd:\n    def __call__(self, data):\n        return data\n"
    )
    with pytest.raises(InvalidModel, match="--allow_uploaded_code"):
        validate_mmar(mmar, "m", allow_code=False, default_device="cpu")
    assert validate_mmar(mmar, "m", allow_code=True, default_device="cpu").name == "m"


def _weight_free_mmar(folder: Path, args: dict) -> Path:
    config = {"type": "deepgrow", "pre_transforms": [{"name": "LoadImaged", "args": {"keys": "image"}}],
              "inference": {"output": "pred", "meta_data": {"deepgrow": "3D"},
                            "network": {"name": "aiaa.transforms.RegionGrowd", "args": args}}}
    (folder / "config").mkdir(parents=True)
    (folder / "config" / "config_aiaa.json").write_text(json.dumps(config))
    return folder


def test_a_weight_free_network_needs_no_model_file(tmp_path: Path) -> None:
    mmar = _weight_free_mmar(tmp_path / "grow", {"k": 2.0, "roi_mm": 128.0})
    assert precheck_mmar(mmar, allow_code=False).inference.network is not None
    model = validate_mmar(mmar, "grow", allow_code=False, default_device="cpu")
    assert model.pipeline.engine is None and model.model_file is None and model.pipeline.network is not None


@pytest.mark.parametrize("args", [{"k": 1e9}, {"iterations": 10**9}, {"max_roi_voxels": 2**40}, {"roi_mm": -1},
                                  {"fill_holes": "no"}, {"no_such_argument": 1}])
def test_a_weight_free_network_with_hostile_arguments_is_refused(tmp_path: Path, args: dict) -> None:
    mmar = _weight_free_mmar(tmp_path / "grow", args)
    with pytest.raises(InvalidModel, match="RegionGrowd"):
        validate_mmar(mmar, "grow", allow_code=False, default_device="cpu")


# ------------------------------------------------------------------ torch.export programs (models/model.pt2)


def _zip_folder(folder: Path, target: Path) -> Path:
    import zipfile

    with zipfile.ZipFile(target, "w") as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(folder).as_posix())
    return target


def _program_mmar(folder: Path, torchscript: bool, output_channels: int = 2) -> Path:
    """A threshold MMAR with `models/model.pt2` (and `model.ts` if asked) and a declared shape for the dry run."""
    from tests.support.programs import add_program

    config = segmentation_config(roi=[16, 16, 16])
    config["inference"]["TRITON"] = {"name": "aiaa.inference.TritonInference", "triton_model_config": {
        "max_batch_size": 1, "input": [{"name": "INPUT__0", "dims": [1, 16, 16, 16]}],
        "output": [{"name": "OUTPUT__0", "dims": [output_channels, 16, 16, 16]}]}}
    write_mmar(folder, config, ThresholdNet() if torchscript else None)
    add_program(folder, ThresholdNet())
    return folder


def _upload_zip(tmp_path: Path, source: Path) -> Path:
    staging = tmp_path / "staging"
    staging.mkdir()
    data_part = _zip_folder(source, staging / "data.part")
    return assemble_mmar(staging, None, data_part, ArchiveLimits())


def test_zipped_mmar_with_a_program_is_dry_run_with_allow_uploaded_code(tmp_path: Path) -> None:
    from aiaa_server.engines.exported import ExportedEngine

    mmar = _upload_zip(tmp_path, _program_mmar(tmp_path / "src", torchscript=False))
    model = validate_mmar(mmar, "m", allow_code=True, default_device="cpu")
    assert model.model_file == mmar / "models" / "model.pt2" and isinstance(model.pipeline.engine, ExportedEngine)
    wrong = _program_mmar(tmp_path / "wrong", torchscript=False, output_channels=3)
    with pytest.raises(InvalidModel, match=r"output shape \[1, 2, 16, 16, 16\]"):  # the dry run ran the program
        validate_mmar(wrong, "wrong", allow_code=True, default_device="cpu")


def test_uploaded_program_is_never_loaded_without_allow_uploaded_code(tmp_path: Path, monkeypatch) -> None:
    loads: list[object] = []
    monkeypatch.setattr(torch.export, "load", lambda *a, **k: loads.append(a))
    mmar = _upload_zip(tmp_path, _program_mmar(tmp_path / "src", torchscript=False))
    with pytest.raises(InvalidModel, match=r"models/model\.pt2.*--allow_uploaded_code"):
        validate_mmar(mmar, "m", allow_code=False, default_device="cpu")
    assert loads == []


def test_upload_with_both_files_is_served_from_torchscript_without_allow_uploaded_code(tmp_path: Path) -> None:
    mmar = _upload_zip(tmp_path, _program_mmar(tmp_path / "src", torchscript=True))
    model = validate_mmar(mmar, "m", allow_code=False, default_device="cpu")
    assert model.model_file == mmar / "models" / "model.ts"
    assert not (mmar / "models" / "model.pt2").exists()  # dropped: a later trusted load cannot pick it up


def test_a_bare_program_beside_its_config_is_stored_as_model_pt2(tmp_path: Path) -> None:
    from tests.support.programs import save_program

    program = save_program(ThresholdNet(), tmp_path / "net.pt2").read_bytes()
    staging = tmp_path / "s"
    staging.mkdir()
    config_part, data_part = _parts(staging, segmentation_config(roi=[16, 16, 16]), program)
    mmar = assemble_mmar(staging, config_part, data_part, ArchiveLimits())
    assert (mmar / "models" / "model.pt2").read_bytes() == program and not (mmar / "models" / "model.ts").exists()
    assert validate_mmar(mmar, "m", allow_code=True, default_device="cpu").model_file == mmar / "models" / "model.pt2"
    alone = tmp_path / "alone"
    alone.mkdir()
    _, data_part = _parts(alone, None, program)
    with pytest.raises(BadRequest, match="send its config_aiaa.json"):
        assemble_mmar(alone, None, data_part, ArchiveLimits())

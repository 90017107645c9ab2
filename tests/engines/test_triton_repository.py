"""Which file a Triton repository entry gets: TorchScript only, the `model.ts` beside a `model.pt2` (no Triton
server needed: the factory's load request goes to a closed port and only delays the load)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from aiaa_server.engines.factory import EngineFactory, TritonSetup
from aiaa_server.engines.torchscript import TorchScriptPool
from aiaa_server.engines.triton import TritonEngine, TritonOptions
from aiaa_server.engines.triton_repository import triton_model_file, write_model
from aiaa_server.errors import InvalidModel
from aiaa_server.mmar.loader import load_mmar, parse_config
from tests.support.mmars import ThresholdNet, segmentation_config, write_threshold_mmar
from tests.support.programs import add_program


def _triton_config() -> dict:
    config = segmentation_config(scanning_window=False)
    config["inference"]["engine"] = "triton"
    return config


def _mmar(folder: Path, torchscript: bool = True) -> Path:
    write_threshold_mmar(folder)
    (folder / "config" / "config_aiaa.json").write_text(json.dumps(_triton_config()))
    add_program(folder, ThresholdNet())
    if not torchscript:
        (folder / "models" / "model.ts").unlink()
    return folder


def _factory(tmp_path: Path) -> EngineFactory:
    setup = TritonSetup(TritonOptions("127.0.0.1:1", protocol="http", timeout=2.0), tmp_path / "repo", "pytorch")
    return EngineFactory(TorchScriptPool(), triton=setup)


def test_a_program_alone_cannot_go_to_triton(tmp_path: Path) -> None:
    mmar = _mmar(tmp_path / "only_pt2", torchscript=False)
    with pytest.raises(InvalidModel, match=r"torch\.export program.*Triton needs the TorchScript network as "
                                           r"models/model\.ts next to it"):
        triton_model_file("only_pt2", mmar / "models" / "model.pt2")
    with pytest.raises(InvalidModel, match=r"Triton needs the TorchScript network as models/model\.ts"):
        load_mmar(mmar, _factory(tmp_path))
    assert not (tmp_path / "repo" / "only_pt2").exists()
    with pytest.raises(InvalidModel, match="Triton runs TorchScript only"):
        write_model(tmp_path / "repo", "x", mmar / "models" / "model.pt2", parse_config(_triton_config()), "python")


def test_triton_gets_the_torchscript_beside_the_program(tmp_path: Path) -> None:
    mmar = _mmar(tmp_path / "both")
    program, torchscript = mmar / "models" / "model.pt2", mmar / "models" / "model.ts"
    assert triton_model_file("both", program) == torchscript
    assert triton_model_file("both", torchscript) == torchscript
    factory = _factory(tmp_path)
    model = load_mmar(mmar, factory)
    assert model.model_file == program  # what the local engine would run
    assert isinstance(model.pipeline.engine, TritonEngine)
    assert (tmp_path / "repo" / "both" / "1" / "model.pt").read_bytes() == torchscript.read_bytes()
    factory.evict(program)  # the file the loader found forgets the Triton model too
    assert not (tmp_path / "repo" / "both").exists()


def test_model_pt_is_the_fallback_torchscript(tmp_path: Path) -> None:
    mmar = _mmar(tmp_path / "pt")
    shutil.move(mmar / "models" / "model.ts", mmar / "models" / "model.pt")
    assert triton_model_file("pt", mmar / "models" / "model.pt2") == mmar / "models" / "model.pt"

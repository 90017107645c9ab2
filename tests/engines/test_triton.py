"""The Triton engine against a real Triton Inference Server (CPU, Python backend from the nvidia-pytriton wheel).

Needs `.venv-triton` (built by .ci/triton-venv.sh); without it these tests fail with that instruction.
Each Triton model's twin forces the local engine (`inference.engine: "local"`) in the same aiaa-server, so
the comparison "Triton gives the same mask as the local engine" runs the very same files and config.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch

from aiaa_server.engines.factory import EngineFactory, TritonSetup, engine_kind
from aiaa_server.engines.torchscript import TorchScriptPool
from aiaa_server.engines.triton import TritonOptions
from aiaa_server.engines.triton_repository import write_model
from aiaa_server.errors import InvalidModel
from aiaa_server.imaging.formats import ImageFormat
from aiaa_server.imaging.io import decode_result
from aiaa_server.mmar.loader import parse_config
from aiaa_server.settings import settings_from_cli
from tests.support.mmars import ThresholdNet, segmentation_config, write_threshold_mmar
from tests.support.server import LiveServer, start_server
from tests.support.triton import TritonInstall, TritonNotInstalled, TritonServer, find_triton, start_triton
from tests.support.volumes import cube_volume, lps_affine, save_nifti

SW_TRITON = {  # Clara 4.x style: declared config, batches of at most 2 while the pipeline sends 3 patches
    "name": "aiaa.inference.TritonInference",
    "triton_model_config": {
        "platform": "pytorch_libtorch",
        "max_batch_size": 2,
        "input": [{"name": "INPUT__0", "data_type": "TYPE_FP32", "dims": [1, 32, 32, 32]}],
        "output": [{"name": "OUTPUT__0", "data_type": "TYPE_FP32", "dims": [2, 32, 32, 32]}],
    },
}
NATIVE_PRE = [
    {"name": "LoadImaged", "args": {"keys": "image"}},
    {"name": "EnsureChannelFirstd", "args": {"keys": "image"}},
    {"name": "ScaleIntensityRanged",
     "args": {"keys": "image", "a_min": -500, "a_max": 500, "b_min": 0.0, "b_max": 1.0, "clip": True}},
]


def _sliding_window_config(engine: str | None = None) -> dict[str, Any]:
    config = segmentation_config(scanning_window=True, roi=[32, 32, 32])
    config["inference"]["AIAA"]["args"]["sw_batch_size"] = 3
    config["inference"]["TRITON"] = SW_TRITON
    if engine:
        config["inference"]["engine"] = engine
    return config


def _write(folder: Path, config: dict[str, Any]) -> Path:
    write_threshold_mmar(folder)
    (folder / "config" / "config_aiaa.json").write_text(json.dumps(config))
    return folder


def _native_config(engine: str | None = None) -> dict[str, Any]:
    config = segmentation_config(pre=NATIVE_PRE, scanning_window=False)
    if engine:
        config["inference"]["engine"] = engine
    return config


# ------------------------------------------------------------------ no Triton needed


def test_engine_names_are_case_insensitive_with_clara_aliases() -> None:
    assert [engine_kind(v) for v in ("local", "AIAA", "aiaa", "triton", "TRITON", " Triton ")] == [
        "local", "local", "local", "triton", "triton", "triton"]
    with pytest.raises(ValueError, match="unknown engine"):
        engine_kind("onnx")
    settings = settings_from_cli(["--engine", "TRITON", "--triton_url", "triton:8001", "--triton_backend", "Python"])
    assert (settings.engine, settings.triton_url, settings.triton_protocol, settings.triton_backend) == (
        "triton", "triton:8001", "grpc", "python")
    assert settings_from_cli(["--engine", "AIAA"]).engine == "local"
    assert settings.triton_models_dir == settings.workspace / "triton_models"


def test_inference_engine_key_overrides_the_server_default(tmp_path: Path) -> None:
    setup = TritonSetup(TritonOptions("127.0.0.1:1"), tmp_path / "repo")
    factory = EngineFactory(TorchScriptPool(), default_engine="triton", triton=setup)
    assert factory.kind_for(parse_config(_native_config())) == "triton"
    assert factory.kind_for(parse_config(_native_config("AIAA"))) == "local"
    assert EngineFactory(TorchScriptPool(), triton=setup).kind_for(parse_config(_native_config("TRITON"))) == "triton"
    with pytest.raises(InvalidModel, match="inference.engine"):
        factory.kind_for(parse_config(_native_config("onnx")))
    # Without a Triton setup (upload validation) everything runs locally.
    assert EngineFactory(TorchScriptPool()).kind_for(parse_config(_native_config("triton"))) == "local"


def test_pytorch_repository_for_production(tmp_path: Path) -> None:
    mmar = _write(tmp_path / "sw", _sliding_window_config())
    spec = write_model(tmp_path / "repo", "sw", mmar / "models" / "model.ts",
                       parse_config(_sliding_window_config()), "pytorch")
    text = (tmp_path / "repo" / "sw" / "config.pbtxt").read_text()
    assert 'platform: "pytorch_libtorch"' in text and "backend" not in text
    assert 'name: "sw"' in text and "max_batch_size: 2" in text and "data_type: TYPE_FP32" in text
    assert (tmp_path / "repo" / "sw" / "1" / "model.pt").read_bytes() == (mmar / "models" / "model.ts").read_bytes()
    assert not (tmp_path / "repo" / "sw" / "1" / "model.py").exists()
    assert (spec.max_batch_size, spec.input_name, spec.output_name) == (2, "INPUT__0", "OUTPUT__0")


def test_derived_config_has_variable_dims_and_refuses_other_platforms(tmp_path: Path) -> None:
    mmar = _write(tmp_path / "n", _native_config())
    write_model(tmp_path / "repo", "n", mmar / "models" / "model.ts", parse_config(_native_config()), "python")
    text = (tmp_path / "repo" / "n" / "config.pbtxt").read_text()
    assert 'backend: "python"' in text and "platform" not in text
    assert text.count("dims: -1") == 8  # input and output: channels + 3 spatial, batch implicit
    assert (tmp_path / "repo" / "n" / "1" / "model.py").is_file()
    onnx = _sliding_window_config()
    onnx["inference"]["TRITON"] = {"triton_model_config": {**SW_TRITON["triton_model_config"],
                                                           "platform": "onnxruntime_onnx"}}
    with pytest.raises(InvalidModel, match="onnxruntime_onnx"):
        write_model(tmp_path / "repo", "x", mmar / "models" / "model.ts", parse_config(onnx), "pytorch")


# ------------------------------------------------------------------ real Triton


@pytest.fixture(scope="module")
def triton_install() -> TritonInstall:
    try:
        return find_triton()
    except TritonNotInstalled as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("triton_mmars")
    _write(root / "sw", _sliding_window_config())
    _write(root / "sw_local", _sliding_window_config(engine="local"))
    _write(root / "native", _native_config())
    _write(root / "native_local", _native_config(engine="AIAA"))
    broken = _write(root / "broken", _native_config())
    (broken / "models" / "model.ts").write_bytes(b"this is not TorchScript")
    return root


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, triton_install: TritonInstall, models_dir: Path
) -> Iterator[tuple[TritonServer, LiveServer]]:
    """Triton serving `<workspace>/triton_models`, and an aiaa-server started with `--engine TRITON`."""
    root = tmp_path_factory.mktemp("triton_stack")
    workspace = root / "workspace"
    triton = start_triton(triton_install, workspace / "triton_models", root / "triton")
    try:
        server = start_server(workspace, ["--models", str(models_dir), "--no-bundled_models", "--engine", "TRITON",
                                          "--triton_url", triton.grpc_url, "--triton_backend", "python"],
                              startup_timeout=300)
    except Exception:
        triton.stop()
        raise
    yield triton, server
    server.stop()
    triton.stop()


@pytest.fixture(scope="module")
def cube(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    image, mask = cube_volume()
    path = save_nifti(tmp_path_factory.mktemp("cube") / "cube.nii.gz", image, lps_affine((0.8, 0.9, 2.5)))
    return path, mask


def _segment(server: LiveServer, model: str, image: Path) -> httpx.Response:
    with server.client() as client, open(image, "rb") as handle:
        return client.post("/v1/segmentation", params={"model": model, "output": "image"}, data={"params": "{}"},
                           files={"datapoint": (image.name, handle)})


def _mask(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return decode_result(response.content, ImageFormat.NIFTI_GZ)[0]


def _stats(triton: TritonServer, model: str) -> dict[str, Any]:
    return httpx.get(f"http://{triton.http_url}/v2/models/{model}/stats", timeout=10).json()["model_stats"][0]


def test_ready_reports_each_model_and_a_failed_model_spares_the_others(stack) -> None:
    _, server = stack
    body = httpx.get(server.url("/ready"), timeout=60).json()
    assert body["ready"] is True
    assert body["models"] == {name: "ready" for name in ("native", "native_local", "sw", "sw_local")}
    assert "broken" in body["failed"] and "Triton could not load" in body["failed"]["broken"]


def test_repository_is_written_into_the_workspace(stack) -> None:
    triton, server = stack
    repository = server.workspace / "triton_models"
    assert triton.repository == repository
    for name in ("sw", "native"):
        assert (repository / name / "config.pbtxt").is_file()
        assert (repository / name / "1" / "model.pt").is_file()
        assert (repository / name / "1" / "model.py").is_file()
    assert not (repository / "sw_local").exists() and not (repository / "native_local").exists()


@pytest.mark.parametrize("model", ["sw", "native"])
def test_segmentation_on_triton_matches_local_engine(stack, cube, model: str) -> None:
    triton, server = stack
    image, truth = cube
    before = _stats(triton, model)["inference_count"]
    on_triton = _mask(_segment(server, model, image))
    local = _mask(_segment(server, f"{model}_local", image))
    np.testing.assert_array_equal(on_triton, local)
    assert on_triton.sum() > 0.9 * truth.sum()
    assert _stats(triton, model)["inference_count"] > before  # the network really ran in Triton


def test_sliding_window_patches_go_in_batches_within_max_batch_size(stack, cube) -> None:
    triton, server = stack
    _mask(_segment(server, "sw", cube[0]))
    sizes = {int(entry["batch_size"]) for entry in _stats(triton, "sw")["batch_stats"]}
    assert sizes and max(sizes) == 2  # sw_batch_size 3 → batches of 2 and 1 (max_batch_size 2)


def test_http_protocol_engine_splits_batches(stack, models_dir: Path, tmp_path: Path) -> None:
    triton, _ = stack
    setup = TritonSetup(TritonOptions(triton.http_url, "http"), triton.repository, "python")
    factory = EngineFactory(TorchScriptPool(), default_engine="triton", triton=setup)
    engine = factory.create("sw", models_dir / "sw" / "models" / "model.ts",
                            parse_config(_sliding_window_config()))
    batch = torch.rand(5, 1, 32, 32, 32)
    output = engine(batch)
    assert output.shape == (5, 2, 32, 32, 32)
    torch.testing.assert_close(output, torch.cat([0.5 - batch, batch - 0.5], dim=1))


def test_grpc_carries_volumes_over_64_mib(stack, models_dir: Path) -> None:
    triton, _ = stack  # recent Triton refuses HTTP bodies over 64 MiB; gRPC (the default) takes them
    setup = TritonSetup(TritonOptions(triton.grpc_url), triton.repository, "python")
    factory = EngineFactory(TorchScriptPool(), default_engine="triton", triton=setup)
    engine = factory.create("native", models_dir / "native" / "models" / "model.ts", parse_config(_native_config()))
    volume = torch.rand(1, 1, 272, 256, 256)  # 68 MiB in, 136 MiB out
    assert volume.numel() * 4 > 64 * 2**20
    output = engine(volume)
    assert output.shape == (1, 2, 272, 256, 256)
    torch.testing.assert_close(output[:, 1:], volume - 0.5)


def test_recreating_a_model_reloads_changed_files_into_triton(stack, tmp_path: Path) -> None:
    triton, _ = stack  # e.g. aiaa-server restarted with a retrained model while Triton kept the old one
    setup = TritonSetup(TritonOptions(triton.grpc_url), triton.repository, "python")
    mmar = _write(tmp_path / "swap", _native_config())
    model_file, config = mmar / "models" / "model.ts", parse_config(_native_config())
    volume = torch.full((1, 1, 8, 8, 8), 0.3)
    first = EngineFactory(TorchScriptPool(), default_engine="triton", triton=setup).create("swap", model_file, config)
    assert (first(volume).argmax(1) == 0).all()
    retrained = tmp_path / "retrained.ts"
    torch.jit.save(torch.jit.script(ThresholdNet(threshold=0.1)), str(retrained))
    retrained.replace(model_file)
    second = EngineFactory(TorchScriptPool(), default_engine="triton", triton=setup).create("swap", model_file, config)
    assert (second(volume).argmax(1) == 1).all()


def test_triton_going_away_gives_503_and_the_models_come_back(stack, cube) -> None:
    triton, server = stack
    image, _ = cube
    expected = _mask(_segment(server, "sw", image))
    triton.stop()
    refused = _segment(server, "sw", image)
    assert refused.status_code == 503, refused.text
    assert refused.headers["retry-after"].isdigit()
    assert refused.json()["code"] == "unavailable" and "Triton" in refused.json()["detail"]
    down = httpx.get(server.url("/ready"), timeout=60).json()
    assert down["models"]["sw"].startswith("unavailable") and down["models"]["sw_local"] == "ready"
    assert _mask(_segment(server, "native_local", image)).any()  # local models keep working
    triton.restart()  # explicit mode: the new Triton starts with no model loaded
    np.testing.assert_array_equal(_mask(_segment(server, "sw", image)), expected)  # reloaded on demand
    up = httpx.get(server.url("/ready"), timeout=120).json()  # the probe reloads the others
    assert up["models"] == {name: "ready" for name in ("native", "native_local", "sw", "sw_local")}
    np.testing.assert_array_equal(_mask(_segment(server, "native", image)),
                                  _mask(_segment(server, "native_local", image)))


def test_triton_started_after_aiaa_server(triton_install: TritonInstall, tmp_path: Path, cube) -> None:
    """docker-compose order is not guaranteed: models wait for Triton instead of failing to load."""
    models = tmp_path / "models"
    _write(models / "native", _native_config())
    workspace = tmp_path / "workspace"
    triton = TritonServer(install=triton_install, repository=workspace / "triton_models", workdir=tmp_path / "triton")
    server = start_server(workspace, ["--models", str(models), "--no-bundled_models", "--engine", "triton",
                                      "--triton_url", triton.grpc_url, "--triton_backend", "python"],
                          wait_ready=False)
    try:
        waiting = httpx.get(server.url("/ready"), timeout=60).json()
        assert waiting["ready"] is False and waiting["models"]["native"].startswith("unavailable")
        assert waiting["failed"] == {}
        triton.start()
        assert httpx.get(server.url("/ready"), timeout=120).json()["models"] == {"native": "ready"}
        np.testing.assert_array_equal(_mask(_segment(server, "native", cube[0])), cube[1])
    finally:
        server.stop()
        triton.stop()

"""One real aiaa-server for the client tests: test MMARs of every interactive type and an admin token."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from aiaa_client import AIAAClient

from tests.support.mmars import MeanClassNet, ThresholdNet, classification_config, segmentation_config, write_mmar
from tests.support.server import LiveServer, start_server
from tests.support.volumes import cube_volume, lps_affine, save_nifti

ADMIN_TOKEN = "client-tests-token"

# No resampling, whole-volume inference: the returned mask is exactly `image > 0 HU` on the input grid.
NATIVE_PRE = [
    {"name": "LoadImaged", "args": {"keys": "image"}},
    {"name": "EnsureChannelFirstd", "args": {"keys": "image"}},
    {"name": "ScaleIntensityRanged",
     "args": {"keys": "image", "a_min": -500, "a_max": 500, "b_min": 0.0, "b_max": 1.0, "clip": True}},
]

SEG_MODEL = "client_seg"
DEXTR3D_MODEL = "client_dextr3d"
DEEPGROW_MODEL = "client_deepgrow"
CLASSIFIER_MODEL = "client_classifier"  # answers JSON only (no image)


def native_config(model_type: str = "segmentation", **meta: object) -> dict[str, object]:
    config = segmentation_config(labels=["bright"], pre=copy.deepcopy(NATIVE_PRE), scanning_window=False)
    config["type"] = model_type
    config["description"] = f"client test {model_type} model: voxels brighter than 0 HU"
    if meta:
        config["inference"]["meta_data"] = dict(meta)  # type: ignore[index]
    return config


def write_native_mmar(folder: Path, model_type: str = "segmentation", **meta: object) -> Path:
    return write_mmar(folder, native_config(model_type, **meta), ThresholdNet())


@pytest.fixture(scope="session")
def client_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("client-mmars")
    write_native_mmar(root / SEG_MODEL)
    write_native_mmar(root / DEXTR3D_MODEL, "annotation")
    write_native_mmar(root / DEEPGROW_MODEL, "deepgrow", deepgrow="3D")
    write_mmar(root / CLASSIFIER_MODEL, classification_config(["dim", "lit"]), MeanClassNet())
    return root


@pytest.fixture(scope="session")
def mmar_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MMAR folder (not served) for the admin upload tests."""
    return write_native_mmar(tmp_path_factory.mktemp("upload") / "uploaded_mmar")


@pytest.fixture(scope="session")
def live(tmp_path_factory: pytest.TempPathFactory, client_models_dir: Path) -> Iterator[LiveServer]:
    # The token goes through the environment (AIAA_ADMIN_TOKEN), which the server's settings read.
    server = start_server(
        tmp_path_factory.mktemp("client-server") / "workspace",
        ["--models", str(client_models_dir)],
        env={"AIAA_ADMIN_TOKEN": ADMIN_TOKEN, "AIAA_BUNDLED_MODELS": "false"},
    )
    yield server
    server.stop()


@pytest.fixture()
def client(live: LiveServer) -> AIAAClient:
    return AIAAClient(live.base_url, timeout=120.0)


@pytest.fixture()
def admin(live: LiveServer) -> AIAAClient:
    return AIAAClient(live.base_url, timeout=120.0, admin_token=ADMIN_TOKEN)


@pytest.fixture()
def cube(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """(path of a .nii.gz with one bright box, the box mask, the LPS-style anisotropic affine)."""
    image, mask = cube_volume()
    affine = lps_affine((0.8, 0.9, 2.5))
    return save_nifti(tmp_path / "cube.nii.gz", image, affine), mask, affine


def run_cli(*args: str, server: str | None = None, env: dict[str, str] | None = None,
            timeout: float = 180.0) -> subprocess.CompletedProcess[str]:
    """`python -m aiaa_client ARGS` as a subprocess (the same entry point as the `aiaa` script)."""
    command = [sys.executable, "-m", "aiaa_client"]
    if server is not None:
        command += ["--server", server]
    full_env = {key: value for key, value in os.environ.items() if not key.startswith("AIAA_")}
    full_env.update(env or {})
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=timeout, env=full_env,
                          check=False)


def cli_json(result: subprocess.CompletedProcess[str]) -> object:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    return json.loads(result.stdout)

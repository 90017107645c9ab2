"""Code execution through model uploads, end to end on real servers: every vector the attack found is
refused before it runs (with and without a token), a model left in the uploads folder is checked again at
every start, and `--allow_uploaded_code` validates uploads in the sandbox."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.test_admin_api import NO_BUNDLED, assert_refused, config_bytes, model_names, network_bytes, upload
from tests.mmar.test_sandbox import mmar_with_custom_code
from tests.mmar.test_store import zip_folder
from tests.support.mmars import ThresholdNet, segmentation_config, write_mmar
from tests.support.server import LiveServer, start_server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = start_server(tmp_path_factory.mktemp("code") / "workspace", ["--models", str(_empty_dir(tmp_path_factory))],
                        env=NO_BUNDLED, wait_ready=False)
    yield live
    live.stop()


def _empty_dir(factory: pytest.TempPathFactory) -> Path:
    return factory.mktemp("no_models")


def _vectors(marker: Path, outside: Path) -> dict[str, list[dict[str, Any]]]:
    touch = f"touch {marker}"
    return {
        "LoadImage reader=os.system": [{"name": "LoadImage", "args": {"reader": "os.system", "command": touch}}],
        "LoadImageD reader=subprocess.Popen": [{"name": "monai.transforms.io.dictionary.LoadImageD",
                                                "args": {"keys": "image", "reader": "subprocess.Popen",
                                                         "args": ["touch", str(marker)]}}],
        "LoadImaged reader=os.system": [{"name": "monai.transforms.LoadImaged",
                                         "args": {"keys": "image", "reader": "os.system", "command": touch}}],
        "SaveImaged outside": [{"name": "SaveImaged", "args": {"keys": "image", "output_dir": str(outside)}}],
        "expression": [{"name": "ScaleIntensityRanged",
                        "args": {"keys": "image", "a_min": f"$__import__('os').system('{touch}')"}}],
        "_target_": [{"name": "ScaleIntensityRanged", "args": {"keys": "image",
                                                                "x": {"_target_": "os.system", "command": touch}}}],
        "dtype": [{"name": "CastToTyped", "args": {"keys": "image", "dtype": "os.system"}}],
    }


@pytest.mark.parametrize("vector", list(_vectors(Path("m"), Path("o"))))
def test_code_execution_vectors_refused(server: LiveServer, tmp_path: Path, vector: str) -> None:
    marker, outside = tmp_path / "pwned", tmp_path / "outside"
    pre = _vectors(marker, outside)[vector]
    with server.client() as client:
        response = upload(client, "evil", config_bytes(pre=pre), network_bytes(ThresholdNet()))
        assert_refused(response, 422, "invalid_model", "--allow_uploaded_code")
        assert "evil" not in model_names(client)
    assert not marker.exists()
    assert not outside.exists()


@pytest.mark.parametrize(("config", "words"), [
    ('{"a":' * 100000 + "1" + "}" * 100000, "JSON"),
    (json.dumps({"version": 1}).replace("1", "1" + "0" * 5000), "JSON"),
    (json.dumps({**segmentation_config(), "inference": {"AIAA": {"args": {"device": "nonsense:99"}}}}), "device"),
])
def test_hostile_configs_get_4xx(server: LiveServer, config: str, words: str) -> None:
    with server.client() as client:
        response = upload(client, "hostile", config.encode(), network_bytes(ThresholdNet()))
        assert_refused(response, 422, "invalid_model", words)
        assert client.get("/v1/models").status_code == 200


def test_installed_model_is_checked_again_at_every_start(tmp_path: Path) -> None:
    """A model that reached the uploads folder before this check existed must not run at the next start."""
    marker = tmp_path / "pwned-at-start"
    workspace = tmp_path / "workspace"
    write_mmar(workspace / "models" / "evil",
               segmentation_config(pre=[{"name": "LoadImage", "args": {"reader": "os.system",
                                                                       "command": f"touch {marker}"}}]),
               ThresholdNet())
    write_mmar(workspace / "models" / "fine", segmentation_config(), ThresholdNet())
    live = start_server(workspace, env=NO_BUNDLED)
    try:
        with live.client() as client:
            assert model_names(client) == ["fine"]
            failed = client.get("/ready").json()["failed"]
            assert "--allow_uploaded_code" in failed["evil"]
    finally:
        live.stop()
    assert not marker.exists()


def test_allowed_code_is_validated_in_the_sandbox(tmp_path: Path) -> None:
    """With --allow_uploaded_code, custom/ code may run, but its validation cannot touch the server's files."""
    marker = tmp_path / "written-by-upload"
    evil = mmar_with_custom_code(tmp_path / "evil", f"open({str(marker)!r}, 'w').write('x')\n")
    honest = mmar_with_custom_code(tmp_path / "honest", "")
    live = start_server(tmp_path / "workspace", ["--allow_uploaded_code"], env=NO_BUNDLED, wait_ready=False)
    try:
        with live.client() as client:
            response = upload(client, "evil", data=zip_folder(evil, tmp_path / "evil.zip").read_bytes())
            assert_refused(response, 422, "invalid_model", "not allowed while validating")
            response = upload(client, "honest", data=zip_folder(honest, tmp_path / "honest.zip").read_bytes())
            assert response.status_code == 200, response.text
            assert model_names(client) == ["honest"]
    finally:
        live.stop()
    assert not marker.exists()
    assert "validated in a sandbox" in live.output()


def test_server_without_token_refuses_too(server: LiveServer) -> None:
    """The default server (no token, loopback) is the one the attack used: the allow-list holds there."""
    assert "admin_token" not in " ".join(server.process.args)
    with httpx.Client(base_url=server.base_url, timeout=120) as client:
        pre = [{"name": "LoadImage", "args": {"reader": "os.system", "command": "true"}}]
        assert upload(client, "x", config_bytes(pre=pre), network_bytes(ThresholdNet())).status_code == 422

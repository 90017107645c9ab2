"""Settings come from CLI flags and AIAA_* environment variables."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from aiaa_server.settings import BUNDLED_MODELS_DIR, Settings, settings_from_cli


def test_flags(tmp_path: Path) -> None:
    settings = settings_from_cli(["--port", "5123", "--models", str(tmp_path), "--workspace", str(tmp_path / "ws"),
                                  "--device", "cuda", "--root_path", "aiaa/", "--no-bundled_models"])
    assert settings.port == 5123
    assert settings.device == "cuda"
    assert settings.root_path == "/aiaa"
    assert settings.model_dirs == [tmp_path, tmp_path / "ws" / "models"]


def test_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AIAA_PORT", "6001")
    monkeypatch.setenv("AIAA_SESSION_EXPIRY", "120")
    monkeypatch.setenv("AIAA_WORKSPACE", str(tmp_path))
    settings = settings_from_cli([])
    assert (settings.port, settings.session_expiry, settings.workspace) == (6001, 120, tmp_path)
    assert settings.model_dirs[0] == BUNDLED_MODELS_DIR
    assert settings_from_cli(["--port", "7000"]).port == 7000  # flags beat the environment


def test_invalid_values_exit_2_with_a_message(capsys: pytest.CaptureFixture[str]) -> None:
    from aiaa_server.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["--device", "tpu"])
    assert exited.value.code == 2
    assert "--device" in capsys.readouterr().err


def test_access_settings_defaults_and_normalisation(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = settings_from_cli([])
    assert (defaults.cors_origins, defaults.forwarded_allow_ips, defaults.shutdown_timeout) == (["*"], None, 15.0)
    flags = settings_from_cli(["--cors_origins", "https://viewer.example/", "--cors_origins", "*",
                               "--forwarded_allow_ips", " 10.0.0.1 , 192.168.0.0/16", "--shutdown_timeout", "3"])
    assert flags.cors_origins == ["https://viewer.example", "*"]
    assert flags.forwarded_allow_ips == "10.0.0.1/32,192.168.0.0/16"
    assert flags.shutdown_timeout == 3.0
    assert settings_from_cli(["--forwarded_allow_ips", ""]).forwarded_allow_ips is None
    monkeypatch.setenv("AIAA_CORS_ORIGINS", '["http://localhost:3000"]')
    assert settings_from_cli([]).cors_origins == ["http://localhost:3000"]


@pytest.mark.parametrize("args, option", [
    (["--forwarded_allow_ips", "proxy.example"], "forwarded_allow_ips"),
    (["--cors_origins", "viewer.example"], "cors_origins"),
    (["--shutdown_timeout", "0"], "shutdown_timeout"),
])
def test_invalid_access_settings_are_refused(capsys: pytest.CaptureFixture[str], args: list[str], option: str) -> None:
    from aiaa_server.cli import main

    with pytest.raises(SystemExit) as exited:
        main(args)
    assert exited.value.code == 2
    assert option in capsys.readouterr().err


def test_help_shows_plain_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        settings_from_cli(["--help"])
    text = capsys.readouterr().out
    assert "lambda" not in text and "default factory" not in text
    assert "(default: ['*'])" in text


def test_a_models_folder_that_does_not_exist_stops_the_start(capsys: pytest.CaptureFixture[str],
                                                              tmp_path: Path) -> None:
    from aiaa_server.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["--models", str(tmp_path / "typo"), "--workspace", str(tmp_path / "ws")])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "--models: not a folder:" in err and "typo" in err
    assert not (tmp_path / "ws").exists()  # nothing started, nothing written


def test_the_datastore_defaults_to_the_workspace_and_must_exist_when_given(tmp_path: Path) -> None:
    assert Settings(workspace=tmp_path / "ws").datastore_dir == tmp_path / "ws" / "datastore"
    assert Settings(datastore=tmp_path).datastore_dir == tmp_path
    with pytest.raises(ValidationError, match="datastore: not a folder"):
        Settings(datastore=tmp_path / "missing")


def test_uncertainty_options(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = settings_from_cli([])
    assert (defaults.uncertainty_model, defaults.uncertainty_interval) == (None, 30.0)
    flags = settings_from_cli(["--uncertainty_model", "spleen", "--uncertainty_interval", "2.5"])
    assert (flags.uncertainty_model, flags.uncertainty_interval) == ("spleen", 2.5)
    monkeypatch.setenv("AIAA_UNCERTAINTY_MODEL", " ")
    monkeypatch.setenv("AIAA_UNCERTAINTY_INTERVAL", "60")
    env = settings_from_cli([])
    assert (env.uncertainty_model, env.uncertainty_interval) == (None, 60.0)  # blank: the default model
    with pytest.raises(ValidationError):
        Settings(uncertainty_interval=0)

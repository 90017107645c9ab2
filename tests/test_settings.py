"""Settings come from CLI flags and AIAA_* environment variables."""

from __future__ import annotations

from pathlib import Path

import pytest

from aiaa_server.settings import BUNDLED_MODELS_DIR, settings_from_cli


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

"""Server settings: one pydantic-settings object built from CLI flags and `AIAA_*` environment variables.

It is created once (by the CLI or by whoever embeds the app) and passed down; nothing reads globals.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, CliApp, SettingsConfigDict

BUNDLED_MODELS_DIR = Path(__file__).resolve().parent.parent / "models"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="AIAA_",
        cli_prog_name="aiaa-server",
        cli_implicit_flags=True,
        extra="ignore",
    )

    host: str = Field("127.0.0.1", description="interface to listen on (0.0.0.0 for all)")
    port: int = Field(5000, ge=0, le=65535, description="TCP port")
    models: list[Path] = Field(
        default_factory=list,
        description="extra folders holding MMARs (each sub-folder with config/config_aiaa.json is a model)",
    )
    bundled_models: bool = Field(True, description="also serve the demo MMARs shipped in the repository's models/")
    workspace: Path = Field(Path("workspace"), description="folder for uploads, sessions, logs and uploaded models")
    device: Literal["cpu", "cuda"] = Field("cpu", description="device the local engine runs models on")
    workers: int = Field(1, ge=1, le=64, description="inference worker threads")
    torch_threads: int = Field(0, ge=0, description="torch intra-op threads per process (0: cores / workers)")
    root_path: str = Field("", description="path prefix when served behind a reverse proxy, e.g. /aiaa")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_lines: int = Field(10000, ge=100, description="log lines kept in memory for GET /logs")
    cors_origins: list[str] = Field(default_factory=lambda: ["*"], description="allowed CORS origins")
    session_expiry: int = Field(3600, ge=1, description="default and maximum session expiry in seconds")
    result_gzip_level: int = Field(1, ge=0, le=9, description="gzip level for .nii.gz/.nrrd results (speed first)")

    @field_validator("root_path")
    @classmethod
    def _normalise_root_path(cls, value: str) -> str:
        value = value.strip()
        if not value or value == "/":
            return ""
        return "/" + value.strip("/")

    @property
    def model_dirs(self) -> list[Path]:
        """Every folder scanned for MMARs, bundled first, workspace models last (they win on name clashes)."""
        dirs: list[Path] = []
        if self.bundled_models and BUNDLED_MODELS_DIR.is_dir():
            dirs.append(BUNDLED_MODELS_DIR)
        dirs.extend(self.models)
        dirs.append(self.workspace_models_dir)
        return dirs

    @property
    def workspace_models_dir(self) -> Path:
        return self.workspace / "models"

    @property
    def tmp_dir(self) -> Path:
        return self.workspace / "tmp"

    @property
    def log_file(self) -> Path:
        return self.workspace / "logs" / "aiaa-server.log"

    def prepare_workspace(self) -> None:
        for folder in (self.workspace, self.workspace_models_dir, self.tmp_dir, self.log_file.parent):
            folder.mkdir(parents=True, exist_ok=True)


def settings_from_cli(argv: list[str] | None = None) -> Settings:
    """Parse CLI flags (falling back to AIAA_* env vars and defaults)."""
    return CliApp.run(Settings, cli_args=argv)

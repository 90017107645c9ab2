"""Server settings: one pydantic-settings object built from CLI flags and `AIAA_*` environment variables.

It is created once (by the CLI or by whoever embeds the app) and passed down; nothing reads globals.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, CliApp, SettingsConfigDict

from aiaa_server.datastore.dicomweb_remote import parse_dicomweb_url
from aiaa_server.imaging.limits import DecodeLimits
from aiaa_server.security import parse_hosts

DICOMWEB_SCHEMES = ("dicomweb+http://", "dicomweb+https://")

BUNDLED_MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
CORS_ORIGIN = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s]+", re.IGNORECASE)


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
        [],
        description="extra folders holding MMARs (each sub-folder with config/config_aiaa.json is a model)",
    )
    bundled_models: bool = Field(True, description="also serve the demo MMARs shipped in the repository's models/")
    workspace: Path = Field(Path("workspace"), description="folder for uploads, sessions, logs and uploaded models")
    device: Literal["cpu", "cuda"] = Field("cpu", description="device the local engine runs models on")
    workers: int = Field(1, ge=1, le=64, description="inference worker threads on the device")
    precision: Literal["float32", "float16", "bfloat16"] = Field(
        "float32", description="forward precision of local models: float16/bfloat16 run under torch.autocast "
        "(outputs float32); a model's inference.AIAA.args.precision overrides it"
    )
    click_batch_ms: float = Field(
        0.0, ge=0, le=1000, description="interactive models (deepgrow, annotation): concurrent same-shaped "
        "clicks within this window share one forward (0: off; e.g. 5 with --device cuda and --workers >= 2)"
    )
    click_batch_max: int = Field(8, ge=1, le=64, description="most clicks in one shared forward (--click_batch_ms)")
    max_queue: int = Field(
        16, ge=0, le=10000, description="inference requests that may wait for a worker; more get 503 + Retry-After"
    )
    batch_max_wait: float = Field(
        10.0, gt=0, description="seconds a queued auto-segmentation may be overtaken by clicks before it goes first"
    )
    reserve_interactive: bool = Field(
        True, description="with --workers >= 2, keep one worker for interactive calls (deepgrow, dextr3d, sessions)"
    )
    batch_nice: int = Field(
        0, ge=0, le=19, description="with a reserved interactive worker, lower the other workers' OS priority by "
        "this nice value, so clicks and HTTP go first when the cores are busy",
    )
    torch_threads: int = Field(0, ge=0, description="torch intra-op threads per process (0: cores / workers)")
    root_path: str = Field("", description="path prefix when served behind a reverse proxy, e.g. /aiaa")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_lines: int = Field(10000, ge=100, description="log lines kept in memory for GET /logs")
    cors_origins: list[str] = Field(
        ["*"],
        description="browser origins allowed to call the API: * lets any page read and POST (no credentials); "
        "listed origins (scheme://host[:port]) may also PUT/DELETE sessions; /admin and /logs never answer CORS",
    )
    session_expiry: int = Field(3600, ge=1, description="default and maximum session expiry in seconds")
    session_budget_mb: int = Field(
        10240, ge=1, description="disk budget for stored sessions in MiB (least recently used evicted first)"
    )
    session_sweep_seconds: float = Field(60.0, gt=0, description="how often expired sessions are removed")
    session_cache_mb: int = Field(
        2048, ge=0, description="memory for decoded/pre-processed session images in MiB (LRU)"
    )
    session_store: str = Field(
        "disk",
        description="where session metadata lives: disk (this process, meta.json files) or redis://HOST:PORT/DB "
        "(replicas sharing one workspace; rediss:// for TLS)",
    )
    ssl_certfile: Path | None = Field(None, description="serve HTTPS with this PEM certificate (chain)")
    ssl_keyfile: Path | None = Field(None, description="private key (PEM) of --ssl_certfile")
    result_gzip_level: int = Field(1, ge=0, le=9, description="gzip level for .nii.gz/.nrrd results (speed first)")
    admin_token: SecretStr | None = Field(
        None, description="bearer token the /admin endpoints require (prefer the AIAA_ADMIN_TOKEN env var)"
    )
    admin_hosts: str = Field("*", description="clients allowed on /admin endpoints: * or comma list of IPs/CIDRs")
    max_upload_mb: int = Field(2048, ge=1, description="largest model upload (PUT /admin/model) in MiB")
    max_archive_mb: int = Field(8192, ge=1, description="largest total uncompressed size of an uploaded MMAR archive")
    max_archive_files: int = Field(10000, ge=1, description="most entries in an uploaded MMAR archive")
    validation_memory_mb: int = Field(
        8192, ge=1024, description="memory limit (address space) of the process that validates a model upload"
    )
    validation_timeout: float = Field(600.0, gt=0, description="seconds the validation of a model upload may take")
    max_image_voxels: int = Field(
        1024 * 1024 * 2000, ge=1, description="most voxels in one uploaded image (default fits 1024x1024x2000)"
    )
    max_image_mb: int = Field(8192, ge=1, description="most MiB one decoded image (or its decompressed data) may take")
    max_png_pixels: int = Field(2**26, ge=1, description="most pixels (width x height) of an uploaded PNG")
    max_request_mb: int = Field(
        4096, ge=1, description="largest annotation request body (images, sessions, polygons) in MiB"
    )
    dicom_timeout: float = Field(120.0, gt=0, description="seconds decoding one uploaded DICOM series may take")
    max_clicks: int = Field(10000, ge=1, description="most points (clicks, extreme points) in one request")
    body_timeout: float = Field(
        60.0, gt=0, description="seconds a request body may stall (no bytes arriving) before the request is dropped"
    )
    forwarded_allow_ips: str | None = Field(
        None,
        description="trusted reverse proxies (comma list of IPs/CIDRs, or *) whose X-Forwarded-For/-Proto are "
        "believed; unset: the socket peer is the client",
    )
    shutdown_timeout: float = Field(
        15.0, gt=0, le=3600,
        description="seconds running requests get to finish after SIGTERM/SIGINT before the process exits anyway",
    )
    allow_uploaded_code: bool = Field(
        False, description="let uploaded MMARs run Python: custom/ code and non-MONAI component names"
    )
    engine: Literal["local", "triton"] = Field(
        "local",
        description="where networks run: local (alias AIAA) or triton (alias TRITON); a model's config_aiaa.json "
        "may force one with inference.engine",
    )
    triton_url: str = Field(
        "localhost:8001", description="Triton Inference Server HOST:PORT (its gRPC port with --triton_protocol grpc)"
    )
    triton_protocol: Literal["grpc", "http"] = Field(
        "grpc", description="protocol to Triton; grpc for large volumes (Triton refuses HTTP bodies over 64 MiB)"
    )
    triton_timeout: float = Field(60.0, gt=0, description="seconds one Triton call may take")
    datastore: str | None = Field(
        None, max_length=2048,
        description="MONAI Label datastore: a folder (images + labels/final; default <workspace>/datastore), or a "
        "DICOMweb server as dicomweb+http(s)://[user:password@]host:port/dicom-web (series become images; labels "
        "are kept in <workspace>/datastore and go back as DICOM SEG)",
    )
    dicomweb_token: SecretStr | None = Field(
        None, description="bearer token for the DICOMweb datastore (instead of user:password in its URL)"
    )
    dicomweb_cache_mb: int = Field(
        8192, ge=64, description="most MiB of fetched DICOMweb series kept on disk (least recently used go first)"
    )
    datastore_max_images: int = Field(100_000, ge=1, description="most images the datastore may hold")
    datastore_lock_seconds: float = Field(
        600.0, gt=0, le=86400, description="how long an image handed out by active learning stays with its annotator"
    )
    training_threads: int = Field(1, ge=1, le=64, description="torch threads of a training job's process")
    training_memory_mb: int = Field(8192, ge=512, description="address-space limit of a training job's process")
    training_max_queue: int = Field(8, ge=1, le=1000, description="training jobs that may wait behind the running one")
    uncertainty_model: str | None = Field(
        None, description="segmentation model whose uncertainty ranks images for /activelearning/uncertainty "
        "(default: the first served segmentation model by name)"
    )
    uncertainty_interval: float = Field(
        30.0, gt=0, le=86400, description="seconds between rounds of scoring new unlabelled images' uncertainty"
    )
    triton_backend: Literal["pytorch", "python"] = Field(
        "pytorch", description="Triton backend in the generated repository: pytorch (production) or python (CPU tests)"
    )

    @field_validator("engine", "triton_protocol", "triton_backend", "precision", mode="before")
    @classmethod
    def _case_insensitive(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        value = value.strip().lower()
        return "local" if value == "aiaa" else value

    @field_validator("admin_token", "uncertainty_model", "dicomweb_token", "datastore", mode="before")
    @classmethod
    def _empty_token_is_none(cls, value: object) -> object:
        if isinstance(value, Path):
            return str(value)
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("models")
    @classmethod
    def _model_folders_exist(cls, value: list[Path]) -> list[Path]:
        missing = [str(path) for path in value if not path.is_dir()]
        if missing:
            raise ValueError(f"not a folder: {', '.join(missing)}")
        return value

    @field_validator("datastore")
    @classmethod
    def _datastore_is_a_folder(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if value.lower().startswith("dicomweb+"):
            parse_dicomweb_url(value)  # ValueError naming the problem
            return value
        if not Path(value).is_dir():
            raise ValueError(f"datastore: not a folder: {value} (create it, or leave --datastore out for "
                             "<workspace>/datastore)")
        return value

    @field_validator("admin_hosts")
    @classmethod
    def _check_admin_hosts(cls, value: str) -> str:
        parse_hosts(value)
        return value.strip() or "*"

    @field_validator("cors_origins")
    @classmethod
    def _check_cors_origins(cls, value: list[str]) -> list[str]:
        origins = [origin.strip().rstrip("/") for origin in value if origin.strip()]
        for origin in origins:
            if origin != "*" and not CORS_ORIGIN.fullmatch(origin):
                raise ValueError(f"cors_origins: {origin!r} is not * or an origin like https://viewer.example:8443")
        return origins

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _check_forwarded_allow_ips(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        networks = parse_hosts(value, "forwarded_allow_ips")
        return "*" if networks is None else ",".join(str(network) for network in networks)

    @field_validator("session_store")
    @classmethod
    def _check_session_store(cls, value: str) -> str:
        value = value.strip()
        if value.lower() == "disk":
            return "disk"
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("use disk or a Redis URL: redis://HOST:PORT/DB, rediss://… or unix:///PATH?db=N")
        return value

    @model_validator(mode="after")
    def _ssl_files_together(self) -> Settings:
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("--ssl_certfile and --ssl_keyfile go together: give both to serve HTTPS")
        return self

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
    def decode_limits(self) -> DecodeLimits:
        """The bounds every image decoder checks before it allocates."""
        return DecodeLimits(max_voxels=self.max_image_voxels, max_bytes=self.max_image_mb * 2**20,
                            max_png_pixels=self.max_png_pixels, dicom_timeout_s=self.dicom_timeout)

    @property
    def max_request_bytes(self) -> int:
        return self.max_request_mb * 2**20

    @property
    def workspace_models_dir(self) -> Path:
        return self.workspace / "models"

    @property
    def triton_models_dir(self) -> Path:
        """The Triton model repository aiaa-server writes; Triton must see it (same path or shared volume)."""
        return self.workspace / "triton_models"

    @property
    def tmp_dir(self) -> Path:
        return self.workspace / "tmp"

    @property
    def sessions_dir(self) -> Path:
        return self.workspace / "sessions"

    @property
    def datastore_url(self) -> str | None:
        """The DICOMweb datastore's URL when `datastore` names one."""
        return self.datastore if self.datastore and self.datastore.lower().startswith(DICOMWEB_SCHEMES) else None

    @property
    def datastore_dir(self) -> Path:
        """The datastore folder: `datastore` when it is a folder, else `<workspace>/datastore` (where a DICOMweb
        datastore keeps its labels, metadata and series cache)."""
        if self.datastore is None or self.datastore_url is not None:
            return self.workspace / "datastore"
        return Path(self.datastore)

    @property
    def training_dir(self) -> Path:
        return self.workspace / "training"

    @property
    def log_file(self) -> Path:
        return self.workspace / "logs" / "aiaa-server.log"

    def prepare_workspace(self) -> None:
        for folder in (self.workspace, self.workspace_models_dir, self.tmp_dir, self.log_file.parent):
            folder.mkdir(parents=True, exist_ok=True)


def settings_from_cli(argv: list[str] | None = None) -> Settings:
    """Parse CLI flags (falling back to AIAA_* env vars and defaults)."""
    return CliApp.run(Settings, cli_args=argv)

"""The server's long-lived services, built once from Settings and shared by the routers."""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field

import torch

from aiaa_server.engines.factory import EngineFactory, TritonSetup
from aiaa_server.engines.torchscript import TorchScriptPool
from aiaa_server.engines.triton import TritonOptions
from aiaa_server.inference.pool import InferencePool
from aiaa_server.inference.service import InferenceService
from aiaa_server.logs import LogTail
from aiaa_server.metrics import HttpMetrics, MetricsRegistry
from aiaa_server.mmar.admin import ModelAdmin
from aiaa_server.mmar.archives import ArchiveLimits
from aiaa_server.mmar.registry import ModelRegistry
from aiaa_server.mmar.sandbox import SandboxLimits
from aiaa_server.mmar.store import ModelStore
from aiaa_server.security import AdminPolicy
from aiaa_server.session_backends import session_backend
from aiaa_server.sessions import SessionStore
from aiaa_server.settings import Settings

log = logging.getLogger(__name__)

GIL_SWITCH_INTERVAL = 0.0005  # seconds


@dataclass
class Services:
    settings: Settings
    registry: ModelRegistry
    inference: InferenceService
    pool: InferencePool
    metrics: MetricsRegistry
    http_metrics: HttpMetrics
    log_tail: LogTail
    sessions: SessionStore
    admin_policy: AdminPolicy = field(init=False)
    model_admin: ModelAdmin = field(init=False)

    def __post_init__(self) -> None:
        settings = self.settings
        token = settings.admin_token.get_secret_value() if settings.admin_token is not None else None
        self.admin_policy = AdminPolicy.build(token, settings.admin_hosts)
        limits = ArchiveLimits(max_files=settings.max_archive_files, max_bytes=settings.max_archive_mb * 2**20)
        self.model_admin = ModelAdmin(
            ModelStore(settings.workspace_models_dir, limits),
            self.registry,
            fallback_dirs=[d for d in settings.model_dirs if d != settings.workspace_models_dir],
            allow_code=settings.allow_uploaded_code,
            default_device=settings.device,
            sandbox=SandboxLimits(memory_bytes=settings.validation_memory_mb * 2**20,
                                  cpu_seconds=int(settings.validation_timeout),
                                  wall_seconds=settings.validation_timeout),
        )

    @classmethod
    def build(cls, settings: Settings, log_tail: LogTail) -> Services:
        settings.prepare_workspace()
        _set_torch_threads(settings)
        # Workers run Python-heavy transforms; with the default 5 ms GIL switch interval the event loop
        # waits up to 5 ms per wake-up for the GIL, which doubled /v1/models p99 under load (bench/README.md).
        sys.setswitchinterval(GIL_SWITCH_INTERVAL)
        engines = factory_from_settings(settings)  # picks local or Triton per model
        registry = ModelRegistry(engines, default_device=settings.device)
        metrics = MetricsRegistry()
        pool = InferencePool(
            settings.workers, settings.max_queue, batch_max_wait=settings.batch_max_wait,
            reserve_interactive=settings.reserve_interactive, registry=metrics,
        )
        sessions = SessionStore(
            settings.sessions_dir,
            default_expiry=settings.session_expiry,
            budget_bytes=settings.session_budget_mb * 2**20,
            cache_bytes=settings.session_cache_mb * 2**20,
            gzip_level=settings.result_gzip_level,
            backend=session_backend(settings.session_store, settings.sessions_dir),
            limits=settings.decode_limits,
        )
        inference = InferenceService(registry, pool, gzip_level=settings.result_gzip_level, sessions=sessions,
                                     max_clicks=settings.max_clicks, limits=settings.decode_limits)
        return cls(settings=settings, registry=registry, inference=inference, pool=pool, metrics=metrics,
                   http_metrics=HttpMetrics(metrics), log_tail=log_tail, sessions=sessions)

    def load_models(self) -> None:
        settings = self.settings
        uploads = () if settings.allow_uploaded_code else (settings.workspace_models_dir,)
        self.registry.scan(settings.model_dirs, untrusted=uploads)
        log.info("serving %d model(s): %s", len(self.registry), ", ".join(self.registry.names()) or "none")

    def close(self) -> None:
        self.pool.shutdown(wait=False)
        self.sessions.close()


def factory_from_settings(settings: Settings) -> EngineFactory:
    """The server's engine provider: `--engine` and the Triton options (engines/ never reads Settings)."""
    triton = TritonSetup(
        options=TritonOptions(settings.triton_url, settings.triton_protocol, settings.triton_timeout),
        repository=settings.triton_models_dir,
        backend=settings.triton_backend,
    )
    return EngineFactory(TorchScriptPool(), settings.device, settings.engine, triton)


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))  # honours taskset/cpusets, unlike os.cpu_count()
    except AttributeError:
        return os.cpu_count() or 1


def _set_torch_threads(settings: Settings) -> None:
    # Workers run concurrently, each with its own intra-op pool: cores // workers avoids oversubscription.
    threads = settings.torch_threads or max(1, _usable_cores() // settings.workers)
    torch.set_num_threads(threads)

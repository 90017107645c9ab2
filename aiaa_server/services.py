"""The server's long-lived services, built once from Settings and shared by the routers."""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from aiaa_server.engines.factory import factory_from_settings
from aiaa_server.inference.service import InferenceService
from aiaa_server.logs import LogTail
from aiaa_server.mmar.registry import ModelRegistry
from aiaa_server.mmar.store import ArchiveLimits, ModelAdmin, ModelStore
from aiaa_server.security import AdminPolicy
from aiaa_server.sessions import SessionStore
from aiaa_server.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Services:
    settings: Settings
    registry: ModelRegistry
    inference: InferenceService
    executor: ThreadPoolExecutor
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
        )

    @classmethod
    def build(cls, settings: Settings, log_tail: LogTail) -> "Services":
        settings.prepare_workspace()
        _set_torch_threads(settings)
        engines = factory_from_settings(settings)
        # The factory stands in for the pool (same evict()); it picks local or Triton per model.
        registry = ModelRegistry(engines, default_device=settings.device)  # type: ignore[arg-type]
        executor = ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="aiaa-infer")
        sessions = SessionStore(
            settings.sessions_dir,
            default_expiry=settings.session_expiry,
            budget_bytes=settings.session_budget_mb * 2**20,
            cache_bytes=settings.session_cache_mb * 2**20,
            gzip_level=settings.result_gzip_level,
        )
        inference = InferenceService(registry, executor, gzip_level=settings.result_gzip_level, sessions=sessions)
        return cls(settings=settings, registry=registry, inference=inference, executor=executor, log_tail=log_tail,
                   sessions=sessions)

    def load_models(self) -> None:
        self.registry.scan(self.settings.model_dirs)
        log.info("serving %d model(s): %s", len(self.registry), ", ".join(self.registry.names()) or "none")

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


def _set_torch_threads(settings: Settings) -> None:
    threads = settings.torch_threads or max(1, (os.cpu_count() or 1) // settings.workers)
    torch.set_num_threads(threads)

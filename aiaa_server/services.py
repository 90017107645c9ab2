"""The server's long-lived services, built once from Settings and shared by the routers."""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from aiaa_server.engines.torchscript import TorchScriptPool
from aiaa_server.inference.service import InferenceService
from aiaa_server.logs import LogTail
from aiaa_server.mmar.registry import ModelRegistry
from aiaa_server.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Services:
    settings: Settings
    registry: ModelRegistry
    inference: InferenceService
    executor: ThreadPoolExecutor
    log_tail: LogTail

    @classmethod
    def build(cls, settings: Settings, log_tail: LogTail) -> "Services":
        settings.prepare_workspace()
        _set_torch_threads(settings)
        registry = ModelRegistry(TorchScriptPool(), default_device=settings.device)
        executor = ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="aiaa-infer")
        inference = InferenceService(registry, executor, gzip_level=settings.result_gzip_level)
        return cls(settings=settings, registry=registry, inference=inference, executor=executor, log_tail=log_tail)

    def load_models(self) -> None:
        self.registry.scan(self.settings.model_dirs)
        log.info("serving %d model(s): %s", len(self.registry), ", ".join(self.registry.names()) or "none")

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


def _set_torch_threads(settings: Settings) -> None:
    threads = settings.torch_threads or max(1, (os.cpu_count() or 1) // settings.workers)
    torch.set_num_threads(threads)

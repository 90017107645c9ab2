"""Process-wide tuning and the engine provider, both read from Settings (the core never reads Settings)."""

from __future__ import annotations

import os
import sys

import torch

from aiaa_server.engines.factory import EngineFactory, TritonSetup
from aiaa_server.engines.torchscript import TorchScriptPool
from aiaa_server.engines.triton import TritonOptions
from aiaa_server.inference.heap import use_one_arena
from aiaa_server.settings import Settings

GIL_SWITCH_INTERVAL = 0.0005  # seconds


def factory_from_settings(settings: Settings) -> EngineFactory:
    """The server's engine provider: `--engine` and the Triton options (engines/ never reads Settings)."""
    triton = TritonSetup(
        options=TritonOptions(settings.triton_url, settings.triton_protocol, settings.triton_timeout),
        repository=settings.triton_models_dir,
        backend=settings.triton_backend,
    )
    return EngineFactory(TorchScriptPool(), settings.device, settings.engine, triton, precision=settings.precision,
                         click_batch_ms=settings.click_batch_ms, click_batch_max=settings.click_batch_max)


def tune_process(settings: Settings) -> None:
    """Torch intra-op threads per worker, one malloc arena and the GIL switch interval, set once before the pool
    starts."""
    _set_torch_threads(settings)
    use_one_arena()  # worker threads in their own glibc arenas ran segmentations 8-14 % slower
    # Workers run Python-heavy transforms; with the default 5 ms GIL switch interval the event loop
    # waits up to 5 ms per wake-up for the GIL, which doubled /v1/models p99 under load (bench/README.md).
    sys.setswitchinterval(GIL_SWITCH_INTERVAL)


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))  # honours taskset/cpusets, unlike os.cpu_count()
    except AttributeError:
        return os.cpu_count() or 1


def _set_torch_threads(settings: Settings) -> None:
    # Workers run concurrently, each with its own intra-op pool: cores // workers avoids oversubscription.
    threads = settings.torch_threads or max(1, _usable_cores() // settings.workers)
    torch.set_num_threads(threads)

"""Device paths around a local engine's forward: pinned-memory copies, one CUDA stream per worker thread, and
optional mixed precision (`--precision`, or a model's `inference.AIAA.args.precision`).

On a CUDA device (`AcceleratedEngine`):
- the batch is copied host→device from page-locked (pinned) memory with `non_blocking=True`, so the copy is a
  DMA queued on the worker's stream rather than a synchronous staged copy;
- each worker thread queues its copies and forward on its own `torch.cuda.Stream`, so concurrent workers do not
  serialise on the default stream;
- the output goes back where the batch came from: for a host batch it is copied device→host into pinned memory,
  non-blocking; a batch already on the GPU (MONAI's sliding window moves its windows to `sw_device` and adds the
  outputs up there) gets a GPU output, marked as used by the caller's stream (`record_stream`, so the caching
  allocator does not hand its memory to this worker's stream while the caller still reads it);
- the stream is synchronised before the call returns: the caller never gets a tensor still being written.
On the CPU nothing is pinned or streamed: the batch goes straight to the module.

Precision: `float32` runs the module as is; `float16`/`bfloat16` run the forward under
`torch.autocast(device_type, dtype)` (matmuls and convolutions in the low precision, reductions kept in
float32 by autocast's own lists) and the output is cast back to float32. The CPU supports bfloat16 autocast
(and float16, slowly); CUDA both.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Literal

import torch

from aiaa_server.engines.base import Engine

Precision = Literal["float32", "float16", "bfloat16"]
PRECISIONS: tuple[Precision, ...] = ("float32", "float16", "bfloat16")
_AUTOCAST_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}

_streams = threading.local()


def precision_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of `precision`; None for float32 (no autocast).

    Raises:
        ValueError: `precision` is not one of PRECISIONS.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    return _AUTOCAST_DTYPES.get(precision)


@contextlib.contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """`torch.autocast(device.type, dtype)` for float16/bfloat16; nothing for float32."""
    dtype = precision_dtype(precision)
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


def thread_stream(device: torch.device) -> torch.cuda.Stream:
    """This thread's own CUDA stream on `device`, created on first use (a worker keeps one for its life)."""
    per_device: dict[str, torch.cuda.Stream] = getattr(_streams, "by_device", None) or {}
    _streams.by_device = per_device
    key = str(device)
    if key not in per_device:
        per_device[key] = torch.cuda.Stream(device=device)
    return per_device[key]


def to_device(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`batch` as float32 on `device`; a CPU batch bound for CUDA goes through pinned memory, non-blocking.

    The copy is queued on the current stream: read the result on that stream, or synchronise first.
    """
    batch = batch.float()
    if device.type != "cuda" or batch.device.type != "cpu":
        return batch.to(device)
    pinned = batch if batch.is_pinned() else batch.pin_memory()
    return pinned.to(device, non_blocking=True)


def to_host(output: torch.Tensor) -> torch.Tensor:
    """`output` as float32 on the CPU; from CUDA into pinned memory, non-blocking.

    The copy is queued on the current stream: synchronise it before reading the returned tensor.
    """
    if output.device.type != "cuda":
        return output.float()
    host = torch.empty(output.shape, dtype=torch.float32, pin_memory=True)
    host.copy_(output, non_blocking=True)
    return host


class AcceleratedEngine:
    """An engine's forward with the device paths of this module: pinned non-blocking copies and a per-thread
    stream on CUDA, autocast in `precision`, float32 output.

    Args:
        inner: the engine running the module (e.g. a TorchScriptEngine); it moves batches to its device.
        precision: "float32" (no autocast), "float16" or "bfloat16".

    Input `(N, C, *spatial)`, any float dtype, on any device; output `(N, C_out, *spatial)` float32: for a CUDA
    engine on the device the batch came from (a host batch gets a finished CPU tensor), else on the engine's
    device.
    """

    def __init__(self, inner: Engine, precision: str = "float32") -> None:
        precision_dtype(precision)  # refuse unknown names at load, not at the first request
        self.inner = inner
        self.name = inner.name
        self.device = inner.device
        self.precision = precision

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """Run the inner engine on `batch` (N, C, *spatial); returns (N, C_out, *spatial) float32."""
        if self.device.type == "cuda" and torch.cuda.is_available():
            return self._run_on_stream(batch)
        with torch.inference_mode(), autocast(self.device, self.precision):
            output = self.inner(batch)
        return output.float()

    def _run_on_stream(self, batch: torch.Tensor) -> torch.Tensor:
        caller = torch.cuda.current_stream(self.device)
        stream = thread_stream(self.device)
        stream.wait_stream(caller)  # a batch already on the GPU was written on the caller's stream
        with torch.inference_mode(), torch.cuda.stream(stream):
            on_device = to_device(batch, self.device)
            with autocast(self.device, self.precision):
                output = self.inner(on_device).float()
            result = to_host(output) if batch.device.type == "cpu" else output
        stream.synchronize()  # the caller reads the result at once: every queued kernel and copy must be done
        if result.is_cuda:
            result.record_stream(caller)
        return result

"""glibc heap tuning: one arena for all threads, and freed heap memory returned to the OS between the steps of a
large request."""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import cache
from typing import Any

M_ARENA_MAX = -8  # glibc's mallopt parameter


@cache
def _libc_function(name: str, *argtypes: type) -> Any:
    """A glibc allocator function (`malloc_trim`, `mallopt`), or None where the C library has none (musl, macOS,
    Windows)."""
    library = ctypes.util.find_library("c")
    try:
        function = getattr(ctypes.CDLL(library), name) if library else None
    except (OSError, AttributeError):
        return None
    if function is not None:
        function.argtypes = list(argtypes)
        function.restype = ctypes.c_int
    return function


def release_free_heap() -> bool:
    """Give the pages of freed heap blocks back to the OS (glibc `malloc_trim(0)`, every arena).

    glibc keeps freed blocks below its mmap threshold (which grows to 32 MiB after the first large free) in
    the heap, so the tens of MiB that a sliding window or a resampling frees in small blocks stay in the
    process's RSS and add to the next step's peak. Trimming costs a walk over the free lists (milliseconds);
    a fixed low mmap threshold would instead give every convolution output a fresh mapping (the forward ran
    2× slower, bench/README.md). Returns True when memory was released."""
    trim = _libc_function("malloc_trim", ctypes.c_size_t)
    return bool(trim(0)) if trim is not None else False


def use_one_arena() -> bool:
    """Make every thread allocate from glibc's main arena (`mallopt(M_ARENA_MAX, 1)`); call before the worker
    threads start. In a per-thread arena the same segmentation ran 8–14 % slower than on the main thread (its
    heaps are trimmed and faulted back in as the network's buffers come and go); in the main arena it runs as
    fast (bench/README.md). Returns True when glibc took the setting."""
    mallopt = _libc_function("mallopt", ctypes.c_int, ctypes.c_int)
    return bool(mallopt(M_ARENA_MAX, 1)) if mallopt is not None else False

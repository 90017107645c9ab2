"""Returning freed heap memory to the operating system between the steps of a large request."""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import cache


@cache
def _malloc_trim() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    """glibc's `malloc_trim`, or None where the C library has none (musl, macOS, Windows)."""
    name = ctypes.util.find_library("c")
    try:
        function = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None
    if function is not None:
        function.argtypes = [ctypes.c_size_t]
        function.restype = ctypes.c_int
    return function


def release_free_heap() -> bool:
    """Give the pages of freed heap blocks back to the OS (glibc `malloc_trim(0)`, every arena).

    glibc keeps freed blocks below its mmap threshold (which grows to 32 MiB after the first large free) in
    the heap, so the tens of MiB that a sliding window or a resampling frees in small blocks stay in the
    process's RSS and add to the next step's peak. Trimming costs a walk over the free lists (milliseconds);
    a fixed low mmap threshold would instead give every convolution output a fresh mapping (the forward ran
    2× slower, bench/README.md). Returns True when memory was released."""
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False

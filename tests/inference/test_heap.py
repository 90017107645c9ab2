"""Freed heap pages go back to the OS on request (glibc's malloc_trim)."""

from __future__ import annotations

import platform

import numpy as np
import pytest

from aiaa_server.inference.heap import release_free_heap


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_freed_blocks_between_live_ones_are_released() -> None:
    blocks = [np.ones(16 * 1024, np.float32) for _ in range(400)]  # 64 KiB each: heap blocks, not mappings
    del blocks[::2]  # free chunks in the middle of the heap: the automatic top-of-heap trim cannot return them
    assert release_free_heap() is True
    assert all(float(b[0]) == 1.0 for b in blocks)  # the live ones are untouched


def test_release_is_safe_to_call_repeatedly() -> None:
    assert isinstance(release_free_heap(), bool)
    assert isinstance(release_free_heap(), bool)

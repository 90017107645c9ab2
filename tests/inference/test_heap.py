"""glibc heap tuning: freed heap pages go back to the OS on request (malloc_trim), one arena for all threads."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

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


_ARENAS = """
import ctypes, sys, threading
import numpy as np
from aiaa_server.inference.heap import use_one_arena
if sys.argv[1] == "one":
    assert use_one_arena()
worker = threading.Thread(target=lambda: [np.ones(1000) for _ in range(200)])
worker.start()
worker.join()
libc = ctypes.CDLL(None)
libc.fopen.restype = ctypes.c_void_p
handle = ctypes.c_void_p(libc.fopen(sys.argv[2].encode(), b"w"))
libc.malloc_info(0, handle)
libc.fclose(handle)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="arenas are glibc's")
@pytest.mark.parametrize(("setting", "arenas"), [("one", 1), ("default", 2)])
def test_worker_threads_share_the_main_arena(tmp_path: Path, setting: str, arenas: int) -> None:
    """A fresh process: a thread's allocations get their own arena unless use_one_arena ran first."""
    report = tmp_path / "malloc_info.xml"
    subprocess.run([sys.executable, "-c", _ARENAS, setting, str(report)], check=True, timeout=120,
                   cwd=Path(__file__).resolve().parents[2])
    assert report.read_text().count("<heap nr=") == arenas

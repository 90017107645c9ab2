"""ByteLRU: the byte-bounded, thread-safe LRU that holds decoded volumes and pre-processing results."""

from __future__ import annotations

import threading

import numpy as np

from aiaa_server.sessions.cache import ByteLRU


def test_byte_lru_bounds_memory() -> None:
    cache = ByteLRU(capacity_bytes=100)
    for index in range(5):
        cache.put(("volume", str(index)), np.zeros(40, dtype=np.uint8))
    assert cache.size_bytes == 80
    assert cache.lookup(("volume", "0")) is None and cache.lookup(("volume", "4")) is not None
    cache.put(("volume", "big"), np.zeros(500, dtype=np.uint8))
    assert cache.lookup(("volume", "big")) is None


def test_concurrent_misses_compute_once() -> None:
    cache = ByteLRU(capacity_bytes=1000)
    computing, release = threading.Event(), threading.Event()
    calls: list[int] = []

    def compute() -> np.ndarray:
        calls.append(1)
        computing.set()
        assert release.wait(10)
        return np.zeros(8, dtype=np.uint8)

    results: list[tuple[object, bool]] = []
    threads = [threading.Thread(target=lambda: results.append(cache.get_or_compute("k", compute))) for _ in range(3)]
    threads[0].start()
    assert computing.wait(10)
    for thread in threads[1:]:
        thread.start()
    release.set()
    for thread in threads:
        thread.join(10)
    assert len(calls) == 1 and sorted(hit for _, hit in results) == [False, True, True]


def test_discard_and_bytes_where() -> None:
    cache = ByteLRU(capacity_bytes=1000)
    cache.put(("volume", "a"), np.zeros(10, dtype=np.uint8))
    cache.put(("pre", "a", "m"), {"image": np.zeros(20, dtype=np.uint8)})
    cache.put(("volume", "b"), np.zeros(30, dtype=np.uint8))
    assert cache.bytes_where(lambda key: key[1] == "a") == 30
    cache.discard(lambda key: key[1] == "a")
    assert cache.size_bytes == 30 and cache.lookup(("volume", "a")) is None

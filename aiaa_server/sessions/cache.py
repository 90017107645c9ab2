"""The in-memory cache: a thread-safe LRU bounded by the bytes of the arrays it holds.

Sessions (`aiaa_server.sessions`) keep their decoded volumes and the models' image-only pre-processing
results here, so that clicks on a session neither re-read nor re-preprocess its image.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from aiaa_server.imaging.io import Volume

__all__ = ["ByteLRU"]


@dataclass
class _Preprocessed:
    """A model's pre-processing result, with a weak reference to the pipeline object that computed it."""

    owner: weakref.ref
    data: dict[str, Any]


def _nbytes(value: Any) -> int:
    """The bytes a cached value holds in arrays (tensors, numpy arrays, volumes, dicts of them); 0 otherwise."""
    if isinstance(value, _Preprocessed):
        return _nbytes(value.data)
    if isinstance(value, torch.Tensor):
        return value.element_size() * value.nelement()
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if isinstance(value, Volume):
        return int(value.array.nbytes)
    if isinstance(value, dict):
        return sum(_nbytes(v) for v in value.values())
    return 0


class ByteLRU:
    """A thread-safe LRU bounded by bytes; concurrent misses on one key compute it once.

    Args:
        capacity_bytes: the most bytes (as counted by `_nbytes`) kept at once; the least recently used
            entries are dropped to stay under it, and a value bigger than the whole capacity is never kept.
    """

    def __init__(self, capacity_bytes: int) -> None:
        self.capacity = capacity_bytes
        self._items: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._guard = threading.Lock()
        self._key_locks: dict[Hashable, threading.Lock] = {}

    @property
    def size_bytes(self) -> int:
        with self._guard:
            return self._bytes

    def lookup(self, key: Hashable) -> Any | None:
        with self._guard:
            if key not in self._items:
                return None
            self._items.move_to_end(key)
            return self._items[key][0]

    def get_or_compute(self, key: Hashable, compute: Callable[[], Any]) -> tuple[Any, bool]:
        """(value, hit). `compute` runs outside the cache lock, at most once at a time per key."""
        found = self.lookup(key)
        if found is not None:
            return found, True
        with self._guard:
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            found = self.lookup(key)
            if found is not None:
                return found, True
            value = compute()
            self.put(key, value)
            return value, False

    def put(self, key: Hashable, value: Any) -> None:
        size = _nbytes(value)
        with self._guard:
            self._drop(key)
            if size > self.capacity:
                return  # bigger than the whole cache: used once, never kept
            self._items[key] = (value, size)
            self._bytes += size
            while self._bytes > self.capacity:
                oldest = next(iter(self._items))
                self._drop(oldest)

    def discard(self, predicate: Callable[[Hashable], bool]) -> None:
        with self._guard:
            for key in [k for k in self._items if predicate(k)]:
                self._drop(key)
            for key in [k for k in self._key_locks if predicate(k) and not self._key_locks[k].locked()]:
                del self._key_locks[key]

    def bytes_where(self, predicate: Callable[[Hashable], bool]) -> int:
        with self._guard:
            return sum(size for key, (_, size) in self._items.items() if predicate(key))

    def _drop(self, key: Hashable) -> None:
        item = self._items.pop(key, None)
        if item is not None:
            self._bytes -= item[1]

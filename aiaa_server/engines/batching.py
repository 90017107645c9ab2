"""Cross-user batching of one model's interactive forwards (`--click_batch_ms`).

Clicks from several users on the same DeepGrow/annotation model each run a small forward (one crop, batch 1).
On a GPU one forward of batch 4 costs little more than one of batch 1, so `BatchingEngine` lets worker threads
that call the same engine with same-shaped batches within a short window share ONE forward:

- the first caller of a shape opens a group and waits up to `window_s` for others (or until the group holds
  `max_batch` items), then concatenates the group's batches along N, runs the inner engine once and hands each
  caller its own slice, in the order they joined;
- a caller with another shape (or dtype, or device) never joins that group: it opens its own;
- a caller alone runs its own forward once the window expires;
- an exception from the forward is raised in every caller of the group.
The waiting happens on inference worker threads (never the event loop); it only helps with `--workers` >= 2.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

import torch

from aiaa_server.engines.base import Engine

log = logging.getLogger(__name__)

GroupKey = tuple[tuple[int, ...], torch.dtype, str]


@dataclass
class _Group:
    """The batches that share one forward, and what it returned (or raised)."""

    batches: list[torch.Tensor] = field(default_factory=list)
    items: int = 0  # sum of the batches' N
    closed: bool = False
    done: threading.Event = field(default_factory=threading.Event)
    outputs: list[torch.Tensor] = field(default_factory=list)
    error: BaseException | None = None


class BatchingEngine:
    """Concatenates concurrent same-shaped calls of `inner` along N into one forward.

    Args:
        inner: the engine to run (its output's first axis is the batch axis N).
        window_s: how long the first caller waits for others, in seconds (> 0).
        max_batch: most items (sum of N) in one forward, >= 1; a full group runs at once. A single batch larger
            than this runs alone.

    Input `(N, C, *spatial)`; output `(N, C_out, *spatial)` as `inner` returns it (the caller's rows of the
    shared forward).
    """

    def __init__(self, inner: Engine, window_s: float, max_batch: int) -> None:
        if window_s <= 0 or max_batch < 1:
            raise ValueError("window_s must be > 0 and max_batch >= 1")
        self.inner = inner
        self.name = inner.name
        self.device = inner.device
        self.window_s = window_s
        self.max_batch = max_batch
        self.forwards = 0  # forwards run (for metrics and tests)
        self._open: dict[GroupKey, _Group] = {}
        self._cond = threading.Condition()

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """Run `batch` (N, C, *spatial), possibly with other callers' same-shaped batches; returns its rows."""
        group, index, leader = self._join(batch)
        if leader:
            self._wait_for_company(group, self._key(batch))
            self._run(group)
        else:
            group.done.wait()
        if group.error is not None:
            raise group.error
        return group.outputs[index]

    @staticmethod
    def _key(batch: torch.Tensor) -> GroupKey:
        return tuple(batch.shape[1:]), batch.dtype, str(batch.device)

    def _join(self, batch: torch.Tensor) -> tuple[_Group, int, bool]:
        key = self._key(batch)
        with self._cond:
            group = self._open.get(key)
            leader = group is None or group.items + batch.shape[0] > self.max_batch
            if group is not None and leader:
                self._close(group, key)  # it cannot take this batch: let it run now
            if leader:
                group = _Group()
                self._open[key] = group
            assert group is not None
            group.batches.append(batch)
            group.items += batch.shape[0]
            if group.items >= self.max_batch:
                self._close(group, key)
            return group, len(group.batches) - 1, leader

    def _close(self, group: _Group, key: GroupKey) -> None:
        group.closed = True
        if self._open.get(key) is group:
            del self._open[key]
        self._cond.notify_all()

    def _wait_for_company(self, group: _Group, key: GroupKey) -> None:
        with self._cond:
            self._cond.wait_for(lambda: group.closed, timeout=self.window_s)
            if not group.closed:
                self._close(group, key)

    def _run(self, group: _Group) -> None:
        try:
            with torch.inference_mode():
                joined = group.batches[0] if len(group.batches) == 1 else torch.cat(group.batches)
                output = self.inner(joined)
                sizes = [b.shape[0] for b in group.batches]
                if len(sizes) > 1:
                    log.debug("model %s: one forward for %d callers (batch %d)", self.name, len(sizes), sum(sizes))
                group.outputs = list(output.split(sizes)) if len(sizes) > 1 else [output]
        except BaseException as exc:  # noqa: BLE001 - raised again in every caller of the group
            group.error = exc
        finally:
            with self._cond:
                self.forwards += 1
            group.done.set()

"""The inference pool: a fixed set of worker threads per device, a bounded queue, and fair scheduling.

Scheduling uses two FIFO lanes:

* ``INTERACTIVE`` — deepgrow, dextr3d and anything on a session (clicks: small, latency-critical);
* ``BATCH`` — automatic segmentations and uploads to ``/v1/inference`` (long, throughput-bound).

With one worker (or ``reserve_interactive=False``) every worker serves both lanes, interactive first: a
click never waits behind queued segmentations, only (at most) behind the ones already running.
Anti-starvation aging keeps this fair: once the oldest batch job has waited ``batch_max_wait`` seconds it
is taken next, even with clicks queued, so a stream of clicks cannot starve segmentations forever. After an
aged job, every click that was waiting for it goes before the next aged job, so a backlog of aged
segmentations delays a click by about one segmentation, not by all of them.

With ``workers >= 2`` and ``reserve_interactive`` the lanes get their own workers: worker 0 only ever runs
interactive jobs, so a click never waits for a multi-second segmentation to finish; the other workers run
batch jobs first and help with clicks whenever no segmentation is waiting. (Interactive-first on every
worker would let four users clicking back to back starve segmentations until aging kicks in.)

The queue is bounded: ``max_queue`` jobs may wait (running ones do not count). One more is refused at once
with `ServiceUnavailable` (HTTP 503 + Retry-After), never parked: under overload the client backs off
instead of the server hoarding uploads and memory. A job whose caller went away (its future cancelled while
queued) is dropped without running.

The pool has no web dependencies; it reports into an optional `MetricsRegistry`.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiaa_server.errors import ServiceUnavailable
from aiaa_server.metrics import MetricsRegistry

log = logging.getLogger(__name__)

T = TypeVar("T")


def lower_thread_priority(increment: int) -> None:
    """Raise the calling thread's nice value by `increment` (Linux: `setpriority` on a thread id applies to that
    thread only); where that is not possible the thread runs on unchanged."""
    try:
        thread = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, thread, min(19, os.getpriority(os.PRIO_PROCESS, thread) + increment))
    except (AttributeError, OSError) as exc:
        log.warning("inference pool: cannot lower the batch workers' priority: %s", exc)


class Lane(str, enum.Enum):
    """The queue a job waits in: INTERACTIVE (clicks, sessions) or BATCH (automatic segmentations, uploads)."""

    INTERACTIVE = "interactive"
    BATCH = "batch"


@dataclass
class _Job:
    lane: Lane
    label: str
    fn: Callable[[], Any]
    future: Future = field(default_factory=Future)
    enqueued: float = field(default_factory=time.monotonic)


class _PoolMetrics:
    def __init__(self, registry: MetricsRegistry, pool: InferencePool) -> None:
        self.wait = registry.histogram(
            "aiaa_inference_queue_wait_seconds", "time a job waited in the queue before a worker took it", ("lane",)
        )
        self.run = registry.histogram(
            "aiaa_inference_run_seconds", "time a worker spent on a job (decode + pipeline + encode)",
            ("lane", "endpoint"),
        )
        self.jobs = registry.counter(
            "aiaa_inference_jobs", "inference jobs by lane, endpoint and outcome (ok, error, rejected, cancelled)",
            ("lane", "endpoint", "outcome"),
        )
        registry.gauge("aiaa_inference_queue_depth", "jobs waiting for a worker", ("lane",), pool.depth_samples)
        registry.gauge("aiaa_inference_in_flight", "jobs being run by a worker", ("lane",), pool.in_flight_samples)
        registry.gauge("aiaa_inference_queue_capacity", "most jobs that may wait (--max_queue)", (),
                       lambda: [((), float(pool.max_queue))])
        registry.gauge("aiaa_inference_workers", "inference worker threads (--workers)", (),
                       lambda: [((), float(pool.workers))])


class InferencePool:
    """Worker threads that run inference jobs from two lanes (see the module docstring).

    Args:
        workers: worker threads, >= 1 (`--workers`).
        max_queue: most jobs that may wait for a worker, >= 0 (`--max_queue`); a job an idle worker takes at
            once does not wait, so 0 means "run now or 503".
        batch_max_wait: seconds the oldest batch job may be overtaken by clicks before it goes first.
        reserve_interactive: with 2 or more workers, keep worker 0 for interactive jobs.
        batch_nice: with a reserved interactive worker, how much lower the other workers' OS scheduling
            priority is (Linux per-thread nice, 0–19): where the cores are all busy, the click and the event loop
            then preempt segmentations instead of sharing the core with them. 0: same priority.
        registry: where queue and run metrics are reported; None: nowhere.
        name: prefix of the worker thread names.

    Raises:
        ValueError: workers < 1 or max_queue < 0.
    """

    def __init__(
        self,
        workers: int = 1,
        max_queue: int = 16,
        *,
        batch_max_wait: float = 10.0,
        reserve_interactive: bool = True,
        batch_nice: int = 0,
        registry: MetricsRegistry | None = None,
        name: str = "aiaa-infer",
    ) -> None:
        if workers < 1 or max_queue < 0:
            raise ValueError("workers must be >= 1 and max_queue >= 0")
        self.workers = workers
        self.max_queue = max_queue
        self.batch_max_wait = batch_max_wait
        self.reserved = 1 if (reserve_interactive and workers > 1) else 0  # interactive-only workers
        self.batch_slots = workers - self.reserved
        self.batch_nice = max(0, min(19, batch_nice)) if self.reserved else 0
        self._lanes: dict[Lane, deque[_Job]] = {lane: deque() for lane in Lane}
        self._running: dict[Lane, int] = {lane: 0 for lane in Lane}
        self._busy_workers = {True: 0, False: 0}  # by "reserved for clicks"
        self._cond = threading.Condition()
        self._closed = False
        self._owed_clicks = 0  # clicks an aged batch job went ahead of: they run before the next aged one
        self._mean_run = {lane: 1.0 for lane in Lane}  # running means, for Retry-After estimates
        self._metrics = _PoolMetrics(registry, self) if registry is not None else None
        self.on_busy: Callable[[bool], None] | None = None  # told when the pool starts (True) and stops running jobs
        self._threads = [
            threading.Thread(target=self._work, args=(i < self.reserved,), name=f"{name}-{i}", daemon=True)
            for i in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    # -- submitting -----------------------------------------------------------------------------------

    def submit(self, lane: Lane, fn: Callable[..., T], *args: Any, label: str = "") -> Future[T]:
        """Queue `fn(*args)`; raises `ServiceUnavailable` at once when `max_queue` jobs already wait.

        Args:
            lane: the lane the job waits in.
            fn: run on a worker thread with `args`.
            label: the endpoint named in metrics; empty: the lane's name.

        Returns:
            A future of `fn`'s result or exception; cancelling it while queued drops the job.

        Raises:
            ServiceUnavailable: (503, with Retry-After) the queue is full or the pool is shutting down.
        """
        job = _Job(lane=lane, label=label or lane.value, fn=lambda: fn(*args))
        with self._cond:
            if self._closed:
                raise ServiceUnavailable("the inference pool is shutting down", retry_after=5)
            if self._queued() + 1 - self._idle_workers(lane) > self.max_queue:
                retry_after = self._retry_after()
                self._count(job, "rejected")
                raise ServiceUnavailable(
                    f"server busy: {self._queued()} inference request(s) already queued (max_queue="
                    f"{self.max_queue}); retry in {retry_after} s",
                    retry_after=retry_after, queued=self._queued(), max_queue=self.max_queue,
                )
            self._lanes[lane].append(job)
            self._cond.notify_all()
        return job.future

    async def run(self, lane: Lane, fn: Callable[..., T], *args: Any, label: str = "") -> T:
        """`submit` for the event loop: awaiting never blocks it, and cancelling drops a still-queued job."""
        return await asyncio.wrap_future(self.submit(lane, fn, *args, label=label))

    # -- introspection --------------------------------------------------------------------------------

    def depth(self, lane: Lane | None = None) -> int:
        """Jobs waiting in `lane`, or in both lanes for None."""
        with self._cond:
            return self._queued() if lane is None else len(self._lanes[lane])

    def in_flight(self, lane: Lane | None = None) -> int:
        """Jobs of `lane` being run by a worker, or of both lanes for None."""
        with self._cond:
            return sum(self._running.values()) if lane is None else self._running[lane]

    def depth_samples(self) -> Iterable[tuple[tuple[str, ...], float]]:
        """`((lane,), waiting jobs)` per lane, for the queue-depth gauge."""
        with self._cond:
            return [((lane.value,), float(len(self._lanes[lane]))) for lane in Lane]

    def in_flight_samples(self) -> Iterable[tuple[tuple[str, ...], float]]:
        """`((lane,), running jobs)` per lane, for the in-flight gauge."""
        with self._cond:
            return [((lane.value,), float(self._running[lane])) for lane in Lane]

    # -- workers --------------------------------------------------------------------------------------

    def _queued(self) -> int:
        return sum(len(q) for q in self._lanes.values())

    def _idle_workers(self, lane: Lane) -> int:
        """Workers free to start a `lane` job now (the reserved one takes clicks only)."""
        idle = self.batch_slots - self._busy_workers[False]
        if lane is Lane.INTERACTIVE:
            idle += self.reserved - self._busy_workers[True]
        return idle

    def _retry_after(self) -> int:
        """Seconds until a queue slot is likely free: the next job starts when a running one ends."""
        mean = max(self._mean_run.values())
        return max(1, min(60, math.ceil(mean / self.workers)))

    def _pick(self, reserved: bool) -> _Job | None:
        """The next job for a worker, or None if it has nothing to run now (called with the lock held)."""
        interactive, batch = self._lanes[Lane.INTERACTIVE], self._lanes[Lane.BATCH]
        first, second = interactive, batch
        if reserved:
            second = deque()
        elif self.reserved:
            first, second = batch, interactive  # the reserved worker covers clicks: this one is for throughput
        elif self._owed_clicks and interactive:
            self._owed_clicks -= 1
        elif batch and time.monotonic() - batch[0].enqueued >= self.batch_max_wait:
            first, second = batch, interactive  # aged: it has waited long enough to go before clicks
            self._owed_clicks = len(interactive)
        for lane in (first, second):
            if lane:
                return lane.popleft()
        return None

    def _work(self, reserved: bool) -> None:
        if not reserved and self.batch_nice:
            lower_thread_priority(self.batch_nice)
        while True:
            with self._cond:
                job = self._pick(reserved)
                while job is None and not self._closed:
                    self._cond.wait(timeout=1.0)  # the timeout re-checks batch aging
                    job = self._pick(reserved)
                if job is None:
                    return
                self._running[job.lane] += 1
                self._busy_workers[reserved] += 1
                if sum(self._running.values()) == 1:
                    self._tell_busy(True)
            try:
                self._execute(job)
            finally:
                with self._cond:
                    self._running[job.lane] -= 1
                    self._busy_workers[reserved] -= 1
                    if sum(self._running.values()) == 0:
                        self._tell_busy(False)
                    self._cond.notify_all()

    def _tell_busy(self, busy: bool) -> None:
        """`on_busy(busy)`, under the pool's lock so that the calls come in the order of the transitions."""
        if self.on_busy is None:
            return
        try:
            self.on_busy(busy)
        except Exception:  # a listener must never stop a worker
            log.exception("inference pool: on_busy listener failed")

    def _execute(self, job: _Job) -> None:
        if not job.future.set_running_or_notify_cancel():
            self._count(job, "cancelled")
            return
        started = time.monotonic()
        if self._metrics is not None:
            self._metrics.wait.labels(lane=job.lane.value).observe(started - job.enqueued)
        try:
            result = job.fn()
        except BaseException as exc:  # noqa: BLE001 - delivered to the awaiting request (never lost)
            job.future.set_exception(exc)
            self._finish(job, started, "error")
        else:
            job.future.set_result(result)
            self._finish(job, started, "ok")

    def _finish(self, job: _Job, started: float, outcome: str) -> None:
        elapsed = time.monotonic() - started
        with self._cond:
            self._mean_run[job.lane] = 0.8 * self._mean_run[job.lane] + 0.2 * elapsed
        if self._metrics is not None:
            self._metrics.run.labels(lane=job.lane.value, endpoint=job.label).observe(elapsed)
        self._count(job, outcome)

    def _count(self, job: _Job, outcome: str) -> None:
        if self._metrics is not None:
            self._metrics.jobs.labels(lane=job.lane.value, endpoint=job.label, outcome=outcome).inc()

    # -- shutdown -------------------------------------------------------------------------------------

    def shutdown(self, wait: bool = False) -> None:
        """Refuse new jobs, cancel queued ones; running ones finish (threads are daemons).

        Args:
            wait: block until every worker thread has finished its running job and exited.
        """
        with self._cond:
            self._closed = True
            pending = [job for lane in self._lanes.values() for job in lane]
            for lane in self._lanes.values():
                lane.clear()
            self._cond.notify_all()
        for job in pending:
            job.future.cancel()
        if wait:
            for thread in self._threads:
                thread.join()

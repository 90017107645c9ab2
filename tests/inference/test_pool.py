"""The inference pool: bounded queue with 503s, interactive-first scheduling, aging, metrics, cancellation."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import pytest

from aiaa_server.errors import ServiceUnavailable
from aiaa_server.inference.pool import InferencePool, Lane
from aiaa_server.metrics import MetricsRegistry


class Gate:
    """A job that blocks its worker until released, so tests control exactly what is queued."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()

    def __call__(self) -> str:
        self.started.set()
        assert self.release.wait(10)
        return "gate"


def _occupy(pool: InferencePool, lane: Lane = Lane.BATCH) -> Gate:
    gate = Gate()
    pool.submit(lane, gate)
    assert gate.started.wait(5)
    return gate


def test_runs_jobs_and_propagates_errors() -> None:
    pool = InferencePool(workers=2, max_queue=4)
    assert pool.submit(Lane.BATCH, lambda a, b: a + b, 2, 3).result(5) == 5
    with pytest.raises(ZeroDivisionError):
        pool.submit(Lane.INTERACTIVE, lambda: 1 / 0).result(5)
    pool.shutdown(wait=True)


def test_full_queue_is_refused_with_retry_after() -> None:
    pool = InferencePool(workers=1, max_queue=2)
    gate = _occupy(pool)
    queued = [pool.submit(Lane.BATCH, lambda: 1) for _ in range(2)]
    assert pool.depth() == 2 and pool.in_flight() == 1
    with pytest.raises(ServiceUnavailable) as refused:
        pool.submit(Lane.INTERACTIVE, lambda: 1)
    assert refused.value.status == 503 and refused.value.retry_after is not None and refused.value.retry_after >= 1
    gate.release.set()
    assert [f.result(5) for f in queued] == [1, 1]
    pool.shutdown(wait=True)


def test_max_queue_zero_runs_on_idle_workers_and_refuses_the_rest() -> None:
    pool = InferencePool(workers=2, max_queue=0, reserve_interactive=True)
    assert pool.submit(Lane.BATCH, lambda: "idle worker").result(5) == "idle worker"
    gate = _occupy(pool, Lane.BATCH)  # the batch worker is busy; the reserved one is free for clicks only
    with pytest.raises(ServiceUnavailable):
        pool.submit(Lane.BATCH, lambda: 1)
    click = _occupy(pool, Lane.INTERACTIVE)
    with pytest.raises(ServiceUnavailable):
        pool.submit(Lane.INTERACTIVE, lambda: 1)
    gate.release.set()
    click.release.set()
    pool.shutdown(wait=True)


def test_interactive_jobs_overtake_queued_batch_jobs() -> None:
    pool = InferencePool(workers=1, max_queue=10)
    gate = _occupy(pool)
    order: list[str] = []
    futures = [pool.submit(Lane.BATCH, order.append, f"seg{i}") for i in range(3)]
    futures += [pool.submit(Lane.INTERACTIVE, order.append, f"click{i}") for i in range(2)]
    gate.release.set()
    for future in futures:
        future.result(5)
    assert order == ["click0", "click1", "seg0", "seg1", "seg2"]
    pool.shutdown(wait=True)


def test_aged_batch_job_goes_before_new_clicks() -> None:
    pool = InferencePool(workers=1, max_queue=10, batch_max_wait=0.2)
    gate = _occupy(pool)
    order: list[str] = []
    futures = [pool.submit(Lane.BATCH, order.append, "seg")]
    time.sleep(0.3)  # the segmentation has now waited longer than batch_max_wait
    futures.append(pool.submit(Lane.INTERACTIVE, order.append, "click"))
    gate.release.set()
    for future in futures:
        future.result(5)
    assert order == ["seg", "click"]
    pool.shutdown(wait=True)


def test_reserved_worker_keeps_clicks_off_the_segmentation_queue() -> None:
    pool = InferencePool(workers=2, max_queue=10, reserve_interactive=True)
    assert pool.batch_slots == 1 and pool.reserved == 1
    gate = _occupy(pool)
    second = pool.submit(Lane.BATCH, lambda: "seg")  # waits: the other worker is reserved for clicks
    time.sleep(0.1)  # lets time pass: the segmentation must still not have started (nothing to wait on)
    assert not second.done()
    assert pool.submit(Lane.INTERACTIVE, lambda: "click").result(5) == "click"
    gate.release.set()
    assert second.result(5) == "seg"
    pool.shutdown(wait=True)


def test_cancelled_queued_job_never_runs() -> None:
    pool = InferencePool(workers=1, max_queue=4)
    gate = _occupy(pool)
    ran = threading.Event()
    future = pool.submit(Lane.BATCH, ran.set)
    assert future.cancel()
    gate.release.set()
    pool.submit(Lane.BATCH, lambda: None).result(5)
    assert not ran.is_set()
    pool.shutdown(wait=True)


def test_async_run_does_not_block_the_loop() -> None:
    pool = InferencePool(workers=1, max_queue=4)
    loop_ran = threading.Event()

    def job() -> str:
        # The job finishes only once the event loop has run the ticker while the job was on its worker.
        return "done" if loop_ran.wait(10) else "the event loop was blocked while the job ran"

    async def main() -> str:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1
                if ticks >= 3:
                    loop_ran.set()

        task = asyncio.create_task(ticker())
        result = await pool.run(Lane.BATCH, job)
        task.cancel()
        return result

    assert asyncio.run(main()) == "done"
    pool.shutdown(wait=True)


def test_metrics_expose_depth_in_flight_and_outcomes() -> None:
    registry = MetricsRegistry()
    pool = InferencePool(workers=1, max_queue=1, registry=registry)
    gate = _occupy(pool)
    queued = pool.submit(Lane.INTERACTIVE, lambda: None, label="deepgrow")
    with pytest.raises(ServiceUnavailable):
        pool.submit(Lane.BATCH, lambda: None, label="segmentation")
    text = registry.render()
    assert 'aiaa_inference_queue_depth{lane="interactive"} 1' in text
    assert 'aiaa_inference_in_flight{lane="batch"} 1' in text
    assert 'aiaa_inference_jobs_total{endpoint="segmentation",lane="batch",outcome="rejected"} 1.0' in text
    gate.release.set()
    queued.result(5)
    text = registry.render()
    assert 'aiaa_inference_jobs_total{endpoint="deepgrow",lane="interactive",outcome="ok"} 1.0' in text
    assert 'aiaa_inference_run_seconds_count{endpoint="deepgrow",lane="interactive"} 1.0' in text
    pool.shutdown(wait=True)


def test_shutdown_cancels_queued_jobs_and_refuses_new_ones() -> None:
    pool = InferencePool(workers=1, max_queue=4)
    gate = _occupy(pool)
    queued = pool.submit(Lane.BATCH, lambda: None)
    pool.shutdown()
    assert queued.cancelled()
    with pytest.raises(ServiceUnavailable):
        pool.submit(Lane.BATCH, lambda: None)
    gate.release.set()


def test_with_a_reserved_worker_the_other_runs_segmentations_first() -> None:
    pool = InferencePool(workers=2, max_queue=10, reserve_interactive=True)
    segmenting = _occupy(pool, Lane.BATCH)  # only the general worker may take it
    clicking = _occupy(pool, Lane.INTERACTIVE)  # so this one runs on the reserved worker
    order: list[str] = []
    futures = [pool.submit(Lane.INTERACTIVE, order.append, "click"), pool.submit(Lane.BATCH, order.append, "seg")]
    segmenting.release.set()  # the general worker frees up first: it takes the segmentation
    futures[1].result(5)
    clicking.release.set()
    futures[0].result(5)
    assert order[0] == "seg"
    pool.shutdown(wait=True)


def test_clicks_waiting_for_an_aged_batch_job_go_before_the_next_one() -> None:
    pool = InferencePool(workers=1, max_queue=10, batch_max_wait=0.2)
    gate = _occupy(pool)
    order: list[str] = []
    futures = [pool.submit(Lane.BATCH, order.append, f"seg{i}") for i in range(3)]
    time.sleep(0.3)  # all three segmentations are now aged
    futures += [pool.submit(Lane.INTERACTIVE, order.append, f"click{i}") for i in range(2)]
    gate.release.set()
    for future in futures:
        future.result(5)
    assert order == ["seg0", "click0", "click1", "seg1", "seg2"]
    pool.shutdown(wait=True)


def test_on_busy_is_told_when_the_pool_starts_and_stops_running_jobs_in_order() -> None:
    pool = InferencePool(workers=2, max_queue=8)
    calls: list[bool] = []
    pool.on_busy = calls.append
    release = threading.Event()
    both = [pool.submit(Lane.BATCH, release.wait, 30), pool.submit(Lane.INTERACTIVE, release.wait, 30)]
    while sum(pool.in_flight(lane) for lane in Lane) < 2:
        time.sleep(0.01)
    assert calls == [True]  # the second job started while the pool was already busy
    release.set()
    for future in both:
        future.result(timeout=30)
    while calls[-1] is not False:
        time.sleep(0.01)
    pool.submit(Lane.INTERACTIVE, lambda: None).result(timeout=30)
    while len(calls) < 4:
        time.sleep(0.01)
    assert calls == [True, False, True, False]
    pool.shutdown()


def test_a_failing_on_busy_listener_does_not_stop_the_workers() -> None:
    pool = InferencePool(workers=1, max_queue=4)

    def broken(busy: bool) -> None:
        raise RuntimeError("listener bug")

    pool.on_busy = broken
    assert [pool.submit(Lane.BATCH, lambda i=i: i).result(timeout=30) for i in range(3)] == [0, 1, 2]
    pool.shutdown()


def _nice_of_the_worker(pool: InferencePool, lane: Lane) -> int:
    import os

    return pool.submit(lane, lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id())).result(timeout=10)


@pytest.mark.skipif(not hasattr(os, "setpriority"), reason="per-thread priorities are a POSIX facility")
def test_batch_nice_lowers_only_the_segmentation_workers() -> None:
    base = os.getpriority(os.PRIO_PROCESS, 0)
    pool = InferencePool(2, batch_nice=5)
    try:
        assert _nice_of_the_worker(pool, Lane.BATCH) == min(19, base + 5)
        hold = threading.Event()
        pool.submit(Lane.BATCH, hold.wait, 10)  # keeps the batch worker busy: the click goes to worker 0
        assert _nice_of_the_worker(pool, Lane.INTERACTIVE) == base
        hold.set()
    finally:
        pool.shutdown(wait=True)
    single = InferencePool(1, batch_nice=5)  # one worker runs the clicks too: never lowered
    try:
        assert _nice_of_the_worker(single, Lane.BATCH) == base
    finally:
        single.shutdown(wait=True)
    assert os.getpriority(os.PRIO_PROCESS, 0) == base  # the calling thread is untouched

"""8 concurrent clients against one real server: 4 segmenting, 4 clicking (DeepGrow 3D) on their sessions.

Phases, all in one run and against the same server:
  1. idle clicks: one clicker alone → the idle click p50/p95;
  2. one segmenting client alone → single-client segmentation throughput;
  3. load: 4 segmenters (each --segs segmentations) + 4 clickers clicking until the segmenters finish,
     while a prober (a process of its own) GETs /v1/models every 50 ms.
Prints click p95 under load vs idle, total throughput vs one client, and the /v1/models p99 (target < 50 ms).

    python bench/concurrency.py [--shape 512 512 120] [--segs 2] [--idle-clicks 12] [--workers 2] [--think 1]
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from segmentation_overhead import SPLEEN, make_phantom, percentile, segment_http, start, write_phantom

DEEPGROW = "demo_deepgrow_3d"


@dataclass
class Record:
    clicks: list[float] = field(default_factory=list)
    segs: list[float] = field(default_factory=list)
    probes: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, kind: str, seconds: float, status: int) -> None:
        with self.lock:
            getattr(self, kind).append(seconds)
            self.statuses[status] = self.statuses.get(status, 0) + 1


def click_points(labels: np.ndarray, count: int, seed: int = 0) -> list[list[int]]:
    """Foreground clicks inside the spleen (label 1), like a user's first click."""
    inside = np.argwhere(labels == 1)
    rng = np.random.default_rng(seed)
    return [[int(v) for v in inside[i]] for i in rng.choice(len(inside), size=count)]


def new_session(client: httpx.Client, path: Path) -> str:
    with open(path, "rb") as handle:
        response = client.put("/session/", params={"expiry": "3600"}, files={"image": (path.name, handle)})
    response.raise_for_status()
    return str(response.json()["session_id"])


def click(client: httpx.Client, session_id: str, point: list[int]) -> tuple[float, int]:
    started = time.perf_counter()
    response = client.post("/v1/deepgrow", params={"model": DEEPGROW, "session_id": session_id},
                           data={"params": json.dumps({"foreground": [point], "background": []})})
    return time.perf_counter() - started, response.status_code


def clicker(
    base: str, session_id: str, points: list[list[int]], think: float, stop: threading.Event, record: Record
) -> None:
    with httpx.Client(base_url=base, timeout=600) as client:
        i = 0
        while not stop.is_set():
            seconds, status = click(client, session_id, points[i % len(points)])
            record.add("clicks", seconds, status)
            i += 1
            stop.wait(think)  # the annotator looks at the result before the next click


def segmenter(base: str, path: Path, count: int, record: Record) -> None:
    with httpx.Client(base_url=base, timeout=1200) as client:
        for _ in range(count):
            try:
                record.add("segs", segment_http(client, path, SPLEEN), 200)
            except httpx.HTTPStatusError as exc:
                record.add("segs", float("nan"), exc.response.status_code)


def _probe_loop(base: str, stop: Any, results: Any, ready: Any) -> None:
    """GET /v1/models every 50 ms until `stop` is set; (seconds, status) pairs put on `results`. Runs in a process
    of its own, so that the bench's other client threads (uploads hold this process's GIL) do not add to it."""
    with httpx.Client(base_url=base, timeout=60) as client:
        client.get("/v1/models")
        ready.set()
        while not stop.is_set():
            started = time.perf_counter()
            status = client.get("/v1/models").status_code
            results.put((time.perf_counter() - started, status))
            time.sleep(0.05)
    results.put(None)


class Prober:
    """`_probe_loop` in a separate process, its results gathered into a `Record` at `stop`."""

    def __init__(self, base: str) -> None:
        context = multiprocessing.get_context("spawn")
        self.stop_event, self.ready, self.results = context.Event(), context.Event(), context.Queue()
        self.process = context.Process(target=_probe_loop, args=(base, self.stop_event, self.results, self.ready),
                                       daemon=True)

    def start(self) -> None:
        """Start the process and wait until it probes (its imports take seconds)."""
        self.process.start()
        if not self.ready.wait(timeout=120):
            raise RuntimeError("the /v1/models prober did not start")

    def stop(self, record: Record) -> None:
        self.stop_event.set()
        while (item := self.results.get(timeout=120)) is not None:
            record.add("probes", *item)
        self.process.join(timeout=60)


def click_job_totals(client: httpx.Client) -> dict[str, float]:
    """Server-side sums and counts of the interactive lane's queue wait and run time (from /metrics)."""
    totals: dict[str, float] = {}
    for line in client.get("/metrics").text.splitlines():
        for kind in ("wait", "run"):
            metric = "aiaa_inference_queue_wait_seconds" if kind == "wait" else "aiaa_inference_run_seconds"
            for part in ("sum", "count"):
                if line.startswith(f"{metric}_{part}{{") and 'lane="interactive"' in line:
                    key = f"{kind}_{part}"
                    totals[key] = totals.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
    return totals


def mean_job_times(before: dict[str, float], after: dict[str, float]) -> str:
    """Mean queue wait and run per click between two `click_job_totals`."""
    def mean(kind: str) -> float:
        count = after.get(f"{kind}_count", 0.0) - before.get(f"{kind}_count", 0.0)
        return (after.get(f"{kind}_sum", 0.0) - before.get(f"{kind}_sum", 0.0)) / count if count else float("nan")
    return f"server-side per click: queue wait {mean('wait') * 1000:.0f} ms, run {mean('run') * 1000:.0f} ms (means)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(512, 512, 120))
    parser.add_argument("--segs", type=int, default=2, help="segmentations per segmenting client under load")
    parser.add_argument("--idle-clicks", type=int, default=12)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--clients", type=int, default=4, help="segmenting clients (and as many clickers)")
    parser.add_argument("--think", type=float, default=1.0, help="seconds a clicker waits between clicks")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="the server's --device")
    parser.add_argument("--batch-nice", type=int, default=0, help="the server's --batch_nice")
    args = parser.parse_args()
    phantom = make_phantom(tuple(args.shape))
    points = click_points(phantom.labels, 16)
    with tempfile.TemporaryDirectory(prefix="aiaa-bench-") as tmp:
        path = write_phantom(Path(tmp) / "phantom.nii.gz", tuple(args.shape), phantom=phantom)
        server = start(Path(tmp) / "workspace", "--workers", str(args.workers), "--device", args.device,
                       "--batch_nice", str(args.batch_nice))
        base = server.base_url
        try:
            with server.client(timeout=600) as client:
                sessions = [new_session(client, path) for _ in range(args.clients)]
                for session_id in sessions:
                    click(client, session_id, points[0])  # warm: decode + image pre-processing cached
                idle = Record()
                totals = [click_job_totals(client)]
                for i in range(args.idle_clicks):
                    seconds, status = click(client, sessions[0], points[i % len(points)])
                    idle.add("clicks", seconds, status)
                totals.append(click_job_totals(client))
                segment_http(client, path)  # warm the segmentation model
                single_started = time.perf_counter()
                single = [segment_http(client, path) for _ in range(2)]
                single_rate = len(single) / (time.perf_counter() - single_started)

            load, stop = Record(), threading.Event()
            clickers = [threading.Thread(target=clicker, args=(base, s, points, args.think, stop, load))
                        for s in sessions]
            prober = Prober(base)
            segmenters = [threading.Thread(target=segmenter, args=(base, path, args.segs, load))
                          for _ in range(args.clients)]
            started = time.perf_counter()
            prober.start()
            for thread in [*clickers, *segmenters]:
                thread.start()
            for thread in segmenters:
                thread.join()
            elapsed = time.perf_counter() - started
            stop.set()
            for thread in clickers:
                thread.join()
            prober.stop(load)
            with server.client(timeout=60) as client:
                totals.append(click_job_totals(client))
        finally:
            server.stop()
    _report(args, idle, single, single_rate, load, elapsed)
    print(f"idle: {mean_job_times(totals[0], totals[1])}; under load: {mean_job_times(totals[1], totals[2])}")


def _report(args: argparse.Namespace, idle: Record, single: list[float], single_rate: float, load: Record,
            elapsed: float) -> None:
    ms = 1000.0
    idle_p50, idle_p95 = percentile(idle.clicks, 50), percentile(idle.clicks, 95)
    load_p50, load_p95 = percentile(load.clicks, 50), percentile(load.clicks, 95)
    segs_done = sum(1 for s in load.segs if not math.isnan(s))
    seg_rate = segs_done / elapsed
    print(f"server --workers {args.workers}; phantom {tuple(args.shape)}; {args.clients} segmenting + "
          f"{args.clients} clicking clients (think time {args.think:g} s between clicks)")
    print(f"idle clicks ({len(idle.clicks)}): p50 {idle_p50 * ms:.0f} ms, p95 {idle_p95 * ms:.0f} ms")
    print(f"one segmenting client: {', '.join(f'{s:.1f}' for s in single)} s → {single_rate * 60:.2f} seg/min")
    print(f"load ({elapsed:.0f} s): {segs_done} segmentations ({seg_rate * 60:.2f} seg/min, "
          f"median {percentile([s for s in load.segs if not math.isnan(s)], 50):.1f} s), {len(load.clicks)} clicks "
          f"({len(load.clicks) / elapsed:.2f}/s); statuses {dict(sorted(load.statuses.items()))}")
    print(f"clicks under load: p50 {load_p50 * ms:.0f} ms, p95 {load_p95 * ms:.0f} ms → p95 / idle p95 "
          f"{load_p95 / idle_p95:.2f}x")
    print(f"  slowest clicks under load: {', '.join(f'{c * ms:.0f}' for c in sorted(load.clicks)[-5:])} ms")
    print(f"segmentation throughput under load / one client: {seg_rate / single_rate:.2f}x "
          f"(plus {len(load.clicks) / elapsed:.2f} clicks/s served alongside)")
    print(f"/v1/models under load ({len(load.probes)} probes): p50 {percentile(load.probes, 50) * ms:.1f} ms, "
          f"p99 {percentile(load.probes, 99) * ms:.1f} ms (target < 50 ms)")


if __name__ == "__main__":
    main()

"""How fast `GET /v1/models` answers while the server works: idle, under 4 clicking users, under 4 segmenting
users (each load alone, so that the figures say which work slows the event loop).

One real server (`--workers 2`) on a 512×512×120 CT-like phantom. Per phase a prober process of its own GETs
/v1/models every 50 ms (as `concurrency.py` does); before the phases one client GETs it back to back for
--tight seconds (the server's own cost per answer, plus the client's).

    python bench/models_latency.py [--phase-seconds 30] [--tight 8] [--shape 512 512 120] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx
from concurrency import Prober, Record, click, click_points, clicker, new_session, segmenter
from segmentation_overhead import make_phantom, percentile, segment_http, start, write_phantom


def tight_loop(client: httpx.Client, seconds: float) -> list[float]:
    times: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        started = time.perf_counter()
        client.get("/v1/models").raise_for_status()
        times.append(time.perf_counter() - started)
    return times


def phase(base: str, kind: str, sessions: list[str], points: list[list[int]], path: Path, seconds: float) -> Record:
    """Probes during `kind` load: "idle", "clicks" (4 clickers, 1 s think time) or "segs" (4 × 2 segmentations)."""
    record, stop = Record(), threading.Event()
    threads: list[threading.Thread] = []
    if kind == "clicks":
        threads = [threading.Thread(target=clicker, args=(base, s, points, 1.0, stop, record)) for s in sessions]
    elif kind == "segs":
        threads = [threading.Thread(target=segmenter, args=(base, path, 2, record)) for _ in sessions]
    prober = Prober(base)
    prober.start()
    for thread in threads:
        thread.start()
    if kind == "segs":
        for thread in threads:
            thread.join()
    else:
        time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    prober.stop(record)
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(512, 512, 120))
    parser.add_argument("--phase-seconds", type=float, default=30.0, help="length of the idle and clicks phases")
    parser.add_argument("--tight", type=float, default=8.0, help="seconds of back-to-back GETs on the idle server")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="the server's --device")
    args = parser.parse_args()
    phantom = make_phantom(tuple(args.shape))
    points = click_points(phantom.labels, 16)
    with tempfile.TemporaryDirectory(prefix="aiaa-bench-") as tmp:
        path = write_phantom(Path(tmp) / "phantom.nii.gz", tuple(args.shape), phantom=phantom)
        server = start(Path(tmp) / "workspace", "--workers", "2", "--device", args.device)
        try:
            with server.client(timeout=600) as client:
                sessions = [new_session(client, path) for _ in range(4)]
                for session_id in sessions:
                    click(client, session_id, points[0])  # warm: decode + image pre-processing cached
                segment_http(client, path)  # warm the segmentation model
                tight = tight_loop(client, args.tight)
            print(f"/v1/models back to back, idle server: {len(tight)} GETs, median "
                  f"{statistics.median(tight) * 1000:.2f} ms")
            for kind in ("idle", "clicks", "segs"):
                record = phase(server.base_url, kind, sessions, points, path, args.phase_seconds)
                probes = [p * 1000 for p in record.probes]
                print(f"{kind:>6}: {len(probes)} probes, p50 {percentile(probes, 50):.1f} ms, "
                      f"p90 {percentile(probes, 90):.1f} ms, p99 {percentile(probes, 99):.1f} ms "
                      f"({len(record.clicks)} clicks, {len(record.segs)} segmentations alongside)")
        finally:
            server.stop()


if __name__ == "__main__":
    main()

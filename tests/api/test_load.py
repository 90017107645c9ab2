"""A CI-sized load test against a real server with one worker and a short queue.

40 requests from 8 threads (4 segmenting with a slowish model, 4 clicking on a session): none is lost, the
only 5xx is the documented 503 backpressure (Retry-After + JSON body), clicks overtake queued
segmentations, and `/metrics` counts exactly what was sent.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.support.mmars import SlowNet, ThresholdNet, segmentation_config, write_mmar
from tests.support.server import LiveServer, start_server
from tests.support.volumes import save_nifti
from tests.support.waiting import until

NATIVE_PRE = [
    {"name": "LoadImaged", "args": {"keys": "image"}},
    {"name": "EnsureChannelFirstd", "args": {"keys": "image"}},
    {"name": "ScaleIntensityRanged",
     "args": {"keys": "image", "a_min": -500, "a_max": 500, "b_min": 0.0, "b_max": 1.0, "clip": True}},
]
SEGMENTERS, CLICKERS, PER_SEGMENTER, PER_CLICKER = 4, 4, 6, 4  # 40 requests


@dataclass
class Outcome:
    kind: str
    status: int
    started: float
    finished: float
    headers: httpx.Headers
    body: bytes

    @property
    def latency(self) -> float:
        return self.finished - self.started


@pytest.fixture(scope="module")
def load_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    models = tmp_path_factory.mktemp("load-mmars")
    native = {"pre": NATIVE_PRE, "scanning_window": False}
    write_mmar(models / "load_slow", segmentation_config(**native), SlowNet(repeats=20, width=8))
    write_mmar(models / "load_click", segmentation_config(**native), ThresholdNet())
    live = start_server(
        tmp_path_factory.mktemp("load-server") / "workspace",
        ["--models", str(models), "--no-bundled_models", "--workers", "1", "--max_queue", "4"],
    )
    yield live
    live.stop()


@pytest.fixture(scope="module")
def volume(tmp_path_factory: pytest.TempPathFactory) -> Path:
    array = np.where(np.random.default_rng(1).random((32, 32, 32)) > 0.5, 300, -300).astype(np.int16)
    return save_nifti(tmp_path_factory.mktemp("load-data") / "v.nii.gz", array, np.diag([2.0, 2.0, 2.0, 1.0]))


@pytest.fixture(scope="module")
def session_id(load_server: LiveServer, volume: Path) -> str:
    with load_server.client() as client, open(volume, "rb") as handle:
        response = client.put("/session/", files={"image": ("v.nii.gz", handle)})
    assert response.status_code == 200, response.text
    return str(response.json()["session_id"])


def _segment(client: httpx.Client, volume: Path) -> Outcome:
    started = time.monotonic()
    with open(volume, "rb") as handle:
        response = client.post("/v1/segmentation", params={"model": "load_slow", "output": "json"},
                               data={"params": "{}"}, files={"datapoint": ("v.nii.gz", handle)})
    return Outcome("segment", response.status_code, started, time.monotonic(), response.headers, response.content)


def _segment_once(server: LiveServer, volume: Path) -> Outcome:
    with server.client(timeout=60) as client:
        return _segment(client, volume)


def _click(client: httpx.Client, session_id: str) -> Outcome:
    started = time.monotonic()
    response = client.post("/v1/segmentation", params={"model": "load_click", "session_id": session_id,
                                                       "output": "json"}, data={"params": "{}"})
    return Outcome("click", response.status_code, started, time.monotonic(), response.headers, response.content)


def _metric(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _scrape(server: LiveServer) -> str:
    return httpx.get(server.url("/metrics"), timeout=10).text


def _assert_backpressure(outcome: Outcome) -> None:
    assert outcome.status in (200, 503), (outcome.kind, outcome.status, outcome.body[:300])
    if outcome.status == 503:
        assert int(outcome.headers["retry-after"]) >= 1
        body = json.loads(outcome.body)
        assert body["code"] == "unavailable" and "busy" in body["detail"]


def test_load_loses_nothing_and_metrics_match(load_server: LiveServer, volume: Path, session_id: str) -> None:
    before = _scrape(load_server)
    outcomes: list[Outcome] = []
    lock = threading.Lock()

    def segmenter() -> None:
        with load_server.client(timeout=60) as client:
            for _ in range(PER_SEGMENTER):
                result = _segment(client, volume)
                with lock:
                    outcomes.append(result)

    def clicker() -> None:
        with load_server.client(timeout=60) as client:
            for _ in range(PER_CLICKER):
                result = _click(client, session_id)
                with lock:
                    outcomes.append(result)
                time.sleep(0.05)

    started = time.monotonic()
    with ThreadPoolExecutor(SEGMENTERS + CLICKERS) as threads:
        futures = [threads.submit(segmenter) for _ in range(SEGMENTERS)]
        futures += [threads.submit(clicker) for _ in range(CLICKERS)]
        for future in futures:
            future.result(timeout=120)  # a hang or a transport error fails here
    elapsed = time.monotonic() - started
    assert len(outcomes) == SEGMENTERS * PER_SEGMENTER + CLICKERS * PER_CLICKER
    for outcome in outcomes:
        _assert_backpressure(outcome)
    ok = [o for o in outcomes if o.status == 200]
    assert sum(o.kind == "segment" for o in ok) >= 1 and sum(o.kind == "click" for o in ok) >= 1
    print(f"load: {len(ok)} x 200, {len(outcomes) - len(ok)} x 503 in {elapsed:.1f} s")

    after = _scrape(load_server)
    for status in (200, 503):
        sent = sum(o.status == status for o in outcomes)
        labels = {"method": "POST", "path": "/v1/segmentation", "status": str(status)}
        assert _metric(after, "aiaa_http_requests_total", **labels) - _metric(
            before, "aiaa_http_requests_total", **labels) == sent, status
    rejected = sum(o.status == 503 for o in outcomes)
    counted = sum(_metric(after, "aiaa_inference_jobs_total", lane=lane, outcome="rejected")
                  - _metric(before, "aiaa_inference_jobs_total", lane=lane, outcome="rejected")
                  for lane in ("batch", "interactive"))
    assert counted == rejected
    served = {kind: sum(o.kind == kind for o in ok) for kind in ("segment", "click")}
    lanes = {"segment": "batch", "click": "interactive"}
    for kind, lane in lanes.items():
        delta = _metric(after, "aiaa_inference_jobs_total", lane=lane, outcome="ok") - _metric(
            before, "aiaa_inference_jobs_total", lane=lane, outcome="ok")
        assert delta == served[kind], kind
    assert _metric(after, "aiaa_inference_queue_depth", lane="batch") == 0
    assert _metric(after, "aiaa_inference_in_flight", lane="batch") == 0


def test_clicks_overtake_queued_segmentations(load_server: LiveServer, volume: Path, session_id: str) -> None:
    with ThreadPoolExecutor(4) as threads, load_server.client(timeout=60) as client:
        segmentations = [threads.submit(_segment_once, load_server, volume) for _ in range(4)]  # 1 runs, 3 queue
        until(lambda: _metric(_scrape(load_server), "aiaa_inference_queue_depth", lane="batch") >= 3,
              timeout=60, message="the segmentations never queued")
        click = _click(client, session_id)
        segs = [future.result(timeout=60) for future in segmentations]
    assert click.status == 200 and all(s.status == 200 for s in segs), [s.status for s in segs]
    overtaken = sum(s.finished > click.finished for s in segs)
    assert overtaken >= 2, f"the click finished after {4 - overtaken} of 4 segmentations"
    assert click.latency < max(s.latency for s in segs)

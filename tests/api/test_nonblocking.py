"""The event loop never blocks: `/v1/models` keeps answering while a long segmentation runs."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import numpy as np

from tests.support.server import LiveServer
from tests.support.volumes import save_nifti
from tests.support.waiting import metric, until


def test_models_answer_while_a_segmentation_runs(server: LiveServer, tmp_path: Path) -> None:
    volume = np.where(np.random.default_rng(0).random((160, 160, 96)) > 0.5, 300, -300).astype(np.int16)
    path = save_nifti(tmp_path / "big.nii.gz", volume, np.diag([2.0, 2.0, 2.0, 1.0]))
    result: dict[str, object] = {}
    finished = threading.Event()

    def segment() -> None:
        with open(path, "rb") as handle:
            response = httpx.post(server.url("/v1/segmentation"), params={"model": "test_slow"},
                                  files={"datapoint": ("big.nii.gz", handle)}, data={"params": "{}"}, timeout=300)
        result["status"] = response.status_code
        finished.set()

    worker = threading.Thread(target=segment)
    with httpx.Client(base_url=server.base_url, timeout=60) as client:
        client.get("/v1/models")  # warm the connection
        worker.start()
        until(lambda: finished.is_set() or metric(server, "aiaa_inference_in_flight", lane="batch") >= 1,
              timeout=120, message="the segmentation never reached a worker")
        answered_while_running = 0
        while not finished.is_set() and answered_while_running < 20:
            response = client.get("/v1/models")
            assert response.status_code == 200
            if not finished.is_set():  # this probe came back before the segmentation's answer did
                answered_while_running += 1
            time.sleep(0.05)
    worker.join(timeout=300)
    assert result.get("status") == 200
    # A blocked loop would hold every probe until the segmentation is done: at most one could slip in first.
    assert answered_while_running >= 5, (
        f"only {answered_while_running} /v1/models probe(s) answered while the segmentation ran "
        "(or it finished too quickly to probe: make test_slow slower)"
    )

"""`POST /activelearning/uncertainty` on a real server: the background scorer ranks the datastore's unlabelled
images by the threshold model's uncertainty, annotators get the most uncertain first (never the same one), and a
promotion (a new model object) drops every score and has them computed again."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.api.test_monai_label_api import upload
from tests.support.mmars import write_threshold_mmar
from tests.support.server import LiveServer, start_server
from tests.support.volumes import lps_affine, save_nifti
from tests.support.waiting import metric, until

MODEL = "test_threshold"
# The threshold model scales -500..500 HU to 0..1; its logits (0.5 - x, x - 0.5) are a coin toss at 0 HU.
HU = {"far": -800, "near": 0, "middling": 150, "saved": 0}
GUARD_S = 180.0  # only a hang reaches it


def gauge(server: LiveServer, name: str) -> float:
    """A label-less sample of the server's /metrics (`metric` reads labelled ones)."""
    with server.client(timeout=10) as client:
        lines = client.get("/metrics").text.splitlines()
    return next((float(line.split()[1]) for line in lines if line.split(" ", 1)[0] == name), -1.0)


def scored(server: LiveServer) -> float:
    return gauge(server, "aiaa_uncertainty_scored_images")


def test_annotators_get_the_most_uncertain_images_first_and_promotion_rescores(tmp_path: Path) -> None:
    write_threshold_mmar(tmp_path / "models" / MODEL)
    args = ["--no-bundled_models", "--models", str(tmp_path / "models"), "--uncertainty_interval", "1"]
    with start_server(tmp_path / "ws", args) as live, live.client() as client:
        info = client.get("/info/").json()
        assert "mean voxel entropy" in info["strategies"]["uncertainty"]["description"]
        for name, hu in HU.items():
            image = np.full((24, 20, 12), hu, dtype=np.int16)
            path = save_nifti(tmp_path / f"{name}.nii.gz", image, lps_affine((2.0, 2.0, 2.0)))
            assert upload(client, name, path).status_code == 200
        label = save_nifti(tmp_path / "label.nii.gz", np.ones((24, 20, 12), np.uint8), lps_affine((2.0, 2.0, 2.0)))
        with open(label, "rb") as handle:
            saved = client.put("/datastore/label", params={"image": "saved", "tag": "final"},
                               files={"label": (label.name, handle)})
        assert saved.status_code == 200, saved.text

        until(lambda: scored(live) == 3, timeout=GUARD_S, interval=0.2, message="the three images were not scored")
        assert metric(live, "aiaa_inference_jobs_total", lane="batch", endpoint="uncertainty", outcome="ok") >= 3
        picks = [client.post("/activelearning/uncertainty", json={"client_id": f"ann{i}"}).json() for i in range(4)]
        assert [pick.get("id") for pick in picks] == ["near", "middling", "far", None]  # saved: done
        assert picks[0]["strategy"]["uncertainty"]["client_id"] == "ann0"

        refreshes, scorings = gauge(live, "aiaa_uncertainty_refreshes"), gauge(live, "aiaa_uncertainty_scorings")
        assert (refreshes, scorings) == (0, 3)
        promoted = client.put(f"/admin/model/{MODEL}/versions/0")  # the same weights, loaded as a new model object
        assert promoted.status_code == 200, promoted.text
        until(lambda: gauge(live, "aiaa_uncertainty_refreshes") == 1 and scored(live) == 3
              and gauge(live, "aiaa_uncertainty_scorings") == 6, timeout=GUARD_S, interval=0.2,
              message="the scores were not computed again after the promotion")
        assert "uncertainty: scoring the datastore's unlabelled images with test_threshold" in live.output()

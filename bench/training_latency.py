"""Click latency while a training job runs vs idle, on one real server.

Phases, in one run against the same server (bundled demo models):
  1. labelled phantoms go into the datastore (`final` labels: the spleen);
  2. idle: DeepGrow 3D clicks on a session, one at a time → click p50/p90 idle;
  3. a `POST /train/demo_spleen_ct_segmentation` job (its own process, `--training_threads`, nice 10) and the
     same clicks while it reports RUNNING → click p50/p90 during training;
  4. the job's outcome (epochs, validation Dice of the serving weights and the candidate, promoted or not).
Prints the p50 and p90 ratios training / idle.

    python bench/training_latency.py [--shape 256 256 60] [--images 8] [--clicks 10] [--budget 120]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import httpx
import nibabel as nib
import numpy as np
from concurrency import click, click_points, new_session
from segmentation_overhead import SPLEEN, make_phantom, percentile, start, write_phantom


def upload_labelled(client: httpx.Client, folder: Path, shape: tuple[int, int, int], count: int) -> None:
    for seed in range(count):
        phantom = make_phantom(shape, seed=100 + seed)
        image = write_phantom(folder / f"train_{seed}.nii.gz", shape, phantom=phantom)
        label = folder / f"train_{seed}_label.nii.gz"
        nib.save(nib.Nifti1Image((phantom.labels == 1).astype(np.uint8), phantom.affine), str(label))
        with open(image, "rb") as handle:
            client.put("/datastore/", params={"image": f"train_{seed}"}, data={"params": "{}"},
                       files={"file": (image.name, handle)}).raise_for_status()
        with open(label, "rb") as handle:
            client.put("/datastore/label", params={"image": f"train_{seed}"}, data={"params": "{}"},
                       files={"label": (label.name, handle)}).raise_for_status()


def clicks_while(client: httpx.Client, session: str, points: list[list[int]], count: int,
                 running: bool = False) -> list[float]:
    """`count` clicks one after another; with `running`, only those made while the job reports RUNNING."""
    seconds = []
    for point in points * (1 + count // max(len(points), 1)):
        if running and client.get("/train/").json().get("status") != "RUNNING":
            break
        elapsed, status = click(client, session, point)
        if status == 200:
            seconds.append(elapsed)
        if len(seconds) == count:
            break
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[256, 256, 60])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--clicks", type=int, default=10)
    parser.add_argument("--budget", type=float, default=120.0, help="the job's time budget (s)")
    parser.add_argument("--threads", type=int, default=1, help="--training_threads")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="the server's --device")
    args = parser.parse_args()
    shape = tuple(args.shape)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        with start(folder / "ws", "--training_threads", str(args.threads), "--device", args.device) as live, \
                httpx.Client(base_url=live.base_url, timeout=900) as client:
            upload_labelled(client, folder, shape, args.images)
            phantom = make_phantom(shape, seed=7)
            session = new_session(client, write_phantom(folder / "click.nii.gz", shape, phantom=phantom))
            points = click_points(phantom.labels, args.clicks)
            click(client, session, points[0])  # warm: the session's image decoded and cached
            idle = clicks_while(client, session, points, args.clicks)
            job = client.post(f"/train/{SPLEEN}", json={"max_epochs": 1000, "time_budget_s": args.budget,
                                                        "learning_rate": 1e-4}).json()
            while client.get("/train/").json().get("status") == "SUBMITTED":
                time.sleep(0.5)
            busy = clicks_while(client, session, points, args.clicks, running=True)
            while (status := client.get("/train/").json())["status"] in ("SUBMITTED", "RUNNING"):
                time.sleep(2)
    report(idle, busy, status, job["id"], args)


def report(idle: list[float], busy: list[float], status: dict, job_id: str, args: argparse.Namespace) -> None:
    print(f"shape {args.shape}, {args.images} labelled images, training threads {args.threads}, job {job_id[:8]}")
    for name, values in (("idle", idle), ("training", busy)):
        print(f"{name:9s} clicks: n={len(values):2d}  p50 {percentile(values, 50):6.3f} s  "
              f"p90 {percentile(values, 90):6.3f} s")
    if idle and busy:
        print(f"ratio training/idle: p50 {percentile(busy, 50) / percentile(idle, 50):.2f}  "
              f"p90 {percentile(busy, 90) / percentile(idle, 90):.2f}")
    progress = status.get("progress") or {}
    print(f"job {status['status']}: {len(progress.get('epochs', []))} epochs, result "
          f"{json.dumps(status.get('result', {}), default=str)[:400]}")


if __name__ == "__main__":
    main()

"""Segmentation end to end: aiaa-server vs MONAI Label 0.8.5 serving the same network, transforms and mask.

Both servers run on this machine as their own processes, started once, each warmed up by one request, then
asked in turn (never two at once): ours `POST /v1/segmentation` and ours `POST /infer/<model>` (the MONAI
Label-compatible endpoint), theirs `POST /infer/<model>?image=` with the file uploaded as part `file` and
`params` as `MONAILabelClient.infer` sends them. The volume is a CT-like 512×512×120 phantom (int16 .nii.gz,
0.8×0.8×2.5 mm); the model is the bundled demo spleen TorchScript, which the peer serves from
`bench/monailabel_app` (the same pre/post transforms and 64³ sliding window, MONAI Label's own `Restored`).

MONAI Label lives in its own virtual environment (`--peer-venv`, created on first use: several minutes).
When it cannot be installed (no network), `--reference monai` (chosen automatically) runs the same pipeline
in this process with MONAI's own transforms, `sliding_window_inference`, `Invertd` and `SaveImaged`, as
MONAI Label's infer task would, from the file on disk to the mask file written (no HTTP).

Prints the median time of each, the ratio theirs/ours (target ≥ 1.5), the voxel agreement of the masks
(each decoded from its answer) and each server process's peak RSS (VmHWM) at the end.

    python bench/monailabel_peer.py [--shape 512 512 120] [--repeats 5] [--peer-venv PATH] [--reference ...]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import nibabel as nib
import numpy as np
from monailabel_peer_reference import MonaiReference, Run
from monailabel_peer_venv import DEFAULT_PEER_VENV, create_peer_venv, peer_ready
from segmentation_overhead import ROOT, SPLEEN, start, write_phantom

from tests.support.multipart import parse_multipart
from tests.support.server import free_port, stop_process

APP_DIR = ROOT / "bench" / "monailabel_app"
MODEL_TS = ROOT / "models" / SPLEEN / "models" / "model.ts"
Step = Callable[[], Run]


@dataclass
class Contender:
    """One way of segmenting the phantom: its label, the seconds of each timed run, its last mask."""

    label: str
    times: list[float] = field(default_factory=list)
    mask: np.ndarray | None = None
    answer_bytes: int = 0


def decode_mask(content: bytes, filename: str, tmp: Path) -> np.ndarray:
    """The label array of a NIfTI answer (shape I×J×K, the input's voxel grid), as uint8."""
    suffix = ".nii.gz" if filename.endswith(".gz") else ".nii"
    path = tmp / f"answer{suffix}"
    path.write_bytes(content)
    return np.asarray(nib.load(path).dataobj).astype(np.uint8).squeeze()


def post_segmentation(client: httpx.Client, path: Path, tmp: Path, monai_label_api: bool) -> Run:
    """One HTTP round trip, upload to the whole answer read (timed), then its mask decoded (untimed).

    `monai_label_api`: `POST /infer/<model>?image=` with parts `params` and `file` (MONAILabelClient.infer);
    otherwise aiaa's `POST /v1/segmentation?model=` with parts `params` and `datapoint`.
    """
    started = time.perf_counter()
    with open(path, "rb") as handle:
        if monai_label_api:
            response = client.post(f"/infer/{SPLEEN}", params={"image": ""}, data={"params": "{}"},
                                   files={"file": (path.name, handle)})
        else:
            response = client.post("/v1/segmentation", params={"model": SPLEEN}, data={"params": "{}"},
                                   files={"datapoint": (path.name, handle)})
    elapsed = time.perf_counter() - started
    if response.status_code != 200:
        raise RuntimeError(f"{response.request.url} answered {response.status_code}: {response.text[:500]}")
    answer = parse_multipart(response.headers["content-type"], response.content)
    return Run(elapsed, decode_mask(answer.image, answer.filename, tmp), len(response.content))


def start_peer(venv: Path, tmp: Path) -> tuple[subprocess.Popen, int, Path]:
    """`monailabel start_server` with a copy of the bench app (MONAI Label writes logs into its app folder)
    and an empty studies folder, on a free loopback port; returns once `GET /info/` answers."""
    app = tmp / "monailabel_app"
    shutil.copytree(APP_DIR, app, ignore=shutil.ignore_patterns("__pycache__"))
    studies = tmp / "studies"
    studies.mkdir()
    port = free_port()
    log_path = tmp / "monailabel.log"
    command = [str(venv / "bin" / "monailabel"), "start_server", "--app", str(app), "--studies", str(studies),
               "--conf", "models", SPLEEN, "--conf", "model_path", str(MODEL_TS),
               "--host", "127.0.0.1", "--port", str(port), "--log_level", "warning"]
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    # the `monailabel` launcher is a shell script running `python -m monailabel.main` from PATH
    env |= {"PATH": f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", "MONAILABEL_PYEXE": str(venv / "bin" / "python")}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"monailabel exited with {process.returncode}:\n{log_path.read_text()[-4000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/info/", timeout=2.0).status_code == 200:
                return process, port, log_path
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    stop_process(process, 15)
    raise RuntimeError(f"monailabel did not start within 300 s:\n{log_path.read_text()[-4000:]}")


def peak_rss_mib(pid: int) -> float:
    """VmHWM of a live process, MiB (nan once it has gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return float("nan")
    line = next(line for line in status.splitlines() if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def agreement(a: np.ndarray | None, b: np.ndarray | None) -> str:
    """Voxel agreement (share of equal labels) and the spleen Dice of two masks on the same grid."""
    if a is None or b is None:
        return "n/a"
    if a.shape != b.shape:
        return f"shapes differ: {a.shape} vs {b.shape}"
    same = float(np.count_nonzero(a == b)) / a.size
    fa, fb = a > 0, b > 0
    dice = 2.0 * np.count_nonzero(fa & fb) / max(1, np.count_nonzero(fa) + np.count_nonzero(fb))
    return f"{100 * same:.4f} % voxels equal, spleen Dice {dice:.4f} ({np.count_nonzero(fa)} vs {np.count_nonzero(fb)})"


def ensure_peer(venv: Path, reference: str) -> str:
    """The reference actually used: `monailabel` once its venv imports MONAI Label (installing it when
    missing), else `monai` (the in-process fallback)."""
    if reference == "monai" or peer_ready(venv):
        return reference
    log = Path(tempfile.gettempdir()) / "aiaa-bench-peer-install.log"
    print(f"installing MONAI Label 0.8.5 into {venv} (several minutes; pip output in {log}) ...", flush=True)
    try:
        create_peer_venv(venv, log)
    except (OSError, subprocess.CalledProcessError) as error:
        print(f"  could not install the peer ({error}); falling back to --reference monai", flush=True)
        return "monai"
    return "monailabel"


def run_rounds(repeats: int, steps: list[tuple[Contender, Step]]) -> None:
    """A warm-up of each step, then `repeats` rounds of all steps in turn (one request at a time); each
    contender keeps its times and the mask of its last run."""
    for _, step in steps:
        step()  # warm-up: TorchScript profiling runs, lazy imports
    for _ in range(repeats):
        for contender, step in steps:
            run = step()
            contender.times.append(run.seconds)
            contender.mask, contender.answer_bytes = run.mask, run.answer_bytes


def report(contenders: list[Contender], rss: dict[str, float]) -> None:
    ours_v1, theirs, ours_ml = contenders
    for contender in contenders:
        times = ", ".join(f"{t:.2f}" for t in contender.times)
        print(f"{contender.label:<42} median {statistics.median(contender.times):7.2f} s  [{times}]  "
              f"answer {contender.answer_bytes / 2**20:.2f} MiB")
    for ours in (ours_v1, ours_ml):
        ratio = statistics.median(theirs.times) / statistics.median(ours.times)
        # the same round's pair ran back to back, so it shares the machine's load of the moment
        paired = statistics.median(t / o for t, o in zip(theirs.times, ours.times, strict=True))
        print(f"ratio theirs / {ours.label}: medians {ratio:.2f}, median of the rounds' ratios {paired:.2f}"
              "  (target >= 1.5)")
    print(f"mask agreement /v1 vs theirs:    {agreement(ours_v1.mask, theirs.mask)}")
    print(f"mask agreement /infer vs theirs: {agreement(ours_ml.mask, theirs.mask)}")
    for name, value in rss.items():
        print(f"peak RSS (VmHWM) {name}: {value:.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(512, 512, 120))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--peer-venv", type=Path, default=DEFAULT_PEER_VENV,
                        help=f"MONAI Label 0.8.5's virtual environment, created when missing (default {DEFAULT_PEER_VENV})")
    parser.add_argument("--reference", choices=("monailabel", "monai"), default="monailabel",
                        help="theirs: a MONAI Label server, or MONAI's own pipeline in this process")
    args = parser.parse_args()
    reference = ensure_peer(args.peer_venv, args.reference)
    with tempfile.TemporaryDirectory(prefix="aiaa-bench-peer-") as name, contextlib.ExitStack() as stack:
        tmp = Path(name)
        path = write_phantom(tmp / "phantom.nii.gz", tuple(args.shape))
        print(f"phantom {tuple(args.shape)} int16, {path.stat().st_size / 2**20:.1f} MiB .nii.gz; model {SPLEEN}; "
              f"theirs: {reference}", flush=True)
        server = stack.enter_context(start(tmp / "workspace"))
        ours = stack.enter_context(server.client(timeout=900))
        contenders = [Contender("ours POST /v1/segmentation"), Contender("theirs"),
                      Contender("ours POST /infer (MONAI Label API)")]
        theirs_step, their_pid = _theirs(reference, args.peer_venv, tmp, path, stack)
        run_rounds(args.repeats, [
            (contenders[0], lambda: post_segmentation(ours, path, tmp, monai_label_api=False)),
            (contenders[1], theirs_step),
            (contenders[2], lambda: post_segmentation(ours, path, tmp, monai_label_api=True))])
        their_name = "MONAI Label" if reference == "monailabel" else "this process (MONAI in-process)"
        rss = {"aiaa-server": peak_rss_mib(server.process.pid), their_name: peak_rss_mib(their_pid)}
    contenders[1].label = "theirs " + ("MONAI Label 0.8.5 POST /infer" if reference == "monailabel"
                                       else "MONAI in-process (no HTTP)")
    report(contenders, rss)


def _theirs(reference: str, venv: Path, tmp: Path, path: Path, stack: contextlib.ExitStack) -> tuple[Step, int]:
    """(their segmentation step, the pid whose peak RSS is theirs); the peer server stops with `stack`."""
    if reference == "monai":
        monai_reference = MonaiReference(MODEL_TS, tmp)
        return lambda: monai_reference.segment(path), os.getpid()
    peer, port, _ = start_peer(venv, tmp)
    stack.callback(stop_process, peer, 15)
    client = stack.enter_context(httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=900))
    return lambda: post_segmentation(client, path, tmp, monai_label_api=True), peer.pid


if __name__ == "__main__":
    main()

"""How segmentation time and peak memory grow with the volume: each per voxel should stay flat.

For each shape (default 128³, 256³, 512×512×120, 512×512×300, 512×512×600) a CT-like phantom (.nii.gz, int16,
spacing 0.8×0.8×2.5 mm) goes through `/v1/segmentation?model=demo_spleen_ct_segmentation` of a FRESH server
(`--workers 1`, warmed up by one small segmentation so TorchScript's first-call work is not counted). Printed
per shape: wall time, the server's CPU time for the request (user + system, from /proc/<pid>/stat: on a shared
machine it moves less with the load than the wall time does), peak memory above idle (server VmHWM after the
request minus its VmRSS before it), and each per voxel with its ratio to the first shape's, measured in this run.

Then session creation (`PUT /session/`) for one `--session-shape` volume (default 512×512×300) on another fresh
server: from the NIfTI, and from the same phantom as a zipped DICOM series (one slice per file, as AIAA clients
upload it), alternating `--repeats` times.

    python bench/growth.py [--shapes 128x128x128 256x256x256 512x512x120] [--session-shape 512x512x300]
                           [--repeats 2] [--device cpu|cuda] [--no-sessions]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import zipfile
from pathlib import Path

from memory import proc_status
from segmentation_overhead import SPLEEN, make_phantom, segment_http, start, write_phantom

from aiaa_demo.datasets.dicom_export import volume_to_dicom_series

DEFAULT_SHAPES = ("128x128x128", "256x256x256", "512x512x120", "512x512x300", "512x512x600")
WARM_UP_SHAPE = (96, 96, 48)
MIB = 2**20


def parse_shape(text: str) -> tuple[int, int, int]:
    """`512x512x300` → (512, 512, 300); each size 16 to 2048."""
    sizes = tuple(int(part) for part in text.lower().split("x"))
    if len(sizes) != 3 or not all(16 <= s <= 2048 for s in sizes):
        raise argparse.ArgumentTypeError(f"{text!r}: give IxJxK, each 16 to 2048")
    return sizes  # type: ignore[return-value]


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid` (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime (fields 14, 15)


def voxels(shape: tuple[int, int, int]) -> int:
    return shape[0] * shape[1] * shape[2]


def segment_on_fresh_server(tmp: Path, shape: tuple[int, int, int], device: str) -> dict[str, float]:
    """Seconds and peak bytes above idle of one segmentation of a `shape` phantom on a new server."""
    volume = write_phantom(tmp / f"phantom-{'x'.join(map(str, shape))}.nii.gz", shape)
    warm_up = write_phantom(tmp / "warm-up.nii.gz", WARM_UP_SHAPE)
    server = start(tmp / f"workspace-{volume.stem}", "--workers", "1", "--device", device)
    try:
        with server.client(timeout=3600) as client:
            segment_http(client, warm_up, SPLEEN)
            idle, cpu_before = proc_status(server.process.pid), cpu_seconds(server.process.pid)
            seconds = segment_http(client, volume, SPLEEN)
            cpu = cpu_seconds(server.process.pid) - cpu_before
        busy = proc_status(server.process.pid)
    finally:
        server.stop()
        volume.unlink()
    return {"seconds": seconds, "cpu": cpu, "peak": float(busy["VmHWM"] - idle["VmRSS"]), "idle": float(idle["VmRSS"])}


def print_growth(results: list[tuple[tuple[int, int, int], dict[str, float]]]) -> None:
    base_shape, base = results[0]
    base_time = base["seconds"] / voxels(base_shape)
    base_peak = base["peak"] / voxels(base_shape)
    base_cpu = base["cpu"] / voxels(base_shape)
    print("| shape | Mvoxels | wall | µs/voxel | vs first | server CPU | µs/voxel | vs first | peak above idle | "
          "bytes/voxel | vs first | idle RSS |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for shape, figures in results:
        count = voxels(shape)
        per_time, per_peak, per_cpu = figures["seconds"] / count, figures["peak"] / count, figures["cpu"] / count
        print(f"| {'×'.join(map(str, shape))} | {count / 1e6:.1f} | {figures['seconds']:.2f} s | "
              f"{per_time * 1e6:.3f} | {per_time / base_time:.2f}× | {figures['cpu']:.2f} s | {per_cpu * 1e6:.3f} | "
              f"{per_cpu / base_cpu:.2f}× | {figures['peak'] / MIB:.0f} MiB | "
              f"{per_peak:.1f} | {per_peak / base_peak:.2f}× | {figures['idle'] / MIB:.0f} MiB |")


def write_dicom_zip(tmp: Path, shape: tuple[int, int, int]) -> tuple[Path, Path]:
    """The phantom as `.nii.gz` and as a zip of its DICOM series (deflated, one `.dcm` per slice)."""
    phantom = make_phantom(shape)
    nifti = write_phantom(tmp / "session.nii.gz", shape, phantom=phantom)
    volume_to_dicom_series(phantom.image.clip(-1024, 3071).astype("int16"), phantom.affine,
                                    tmp / "series")
    archive = tmp / "series.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as handle:
        for path in sorted((tmp / "series").glob("*.dcm")):
            handle.write(path, f"DICOM/{path.name}")
    return nifti, archive


def put_session(client: object, path: Path) -> float:
    started = time.perf_counter()
    with open(path, "rb") as handle:
        response = client.put("/session/", files={"image": (path.name, handle)})  # type: ignore[attr-defined]
    elapsed = time.perf_counter() - started
    response.raise_for_status()
    client.delete(f"/session/{response.json()['session_id']}")  # type: ignore[attr-defined]
    return elapsed


def bench_sessions(tmp: Path, shape: tuple[int, int, int], repeats: int, device: str) -> None:
    nifti, archive = write_dicom_zip(tmp, shape)
    times: dict[str, list[float]] = {"NIfTI": [], "DICOM zip": []}
    server = start(tmp / "workspace-sessions", "--workers", "1", "--device", device)
    try:
        with server.client(timeout=3600) as client:
            for _ in range(repeats):  # interleaved, so both see the same machine load
                times["NIfTI"].append(put_session(client, nifti))
                times["DICOM zip"].append(put_session(client, archive))
    finally:
        server.stop()
    print(f"\nPUT /session/ of {'×'.join(map(str, shape))} (median of {repeats}, interleaved):")
    for kind, path in (("NIfTI", nifti), ("DICOM zip", archive)):
        median = statistics.median(times[kind])
        print(f"  {kind:9s} {path.stat().st_size / MIB:7.1f} MiB upload: {median:.2f} s "
              f"({', '.join(f'{t:.2f}' for t in times[kind])})")
    ratio = statistics.median(times["DICOM zip"]) / statistics.median(times["NIfTI"])
    print(f"  DICOM zip / NIfTI: {ratio:.2f}×")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", type=parse_shape, nargs="+", default=[parse_shape(s) for s in DEFAULT_SHAPES])
    parser.add_argument("--session-shape", type=parse_shape, default=parse_shape("512x512x300"))
    parser.add_argument("--repeats", type=int, default=2, help="session creations of each kind")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="the server's --device")
    parser.add_argument("--no-sessions", action="store_true", help="skip the session creation part")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="aiaa-bench-growth-") as tmp:
        results = []
        for shape in args.shapes:
            results.append((shape, segment_on_fresh_server(Path(tmp), shape, args.device)))
            print(f"segmented {'×'.join(map(str, shape))}: {results[-1][1]['seconds']:.2f} s", flush=True)
        print(f"\nmodel {SPLEEN}, device {args.device}, a fresh server per shape:")
        print_growth(results)
        if not args.no_sessions:
            bench_sessions(Path(tmp), args.session_shape, args.repeats, args.device)


if __name__ == "__main__":
    main()

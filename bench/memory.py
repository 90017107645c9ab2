"""Peak RSS of a freshly started server process while it segments a 512×512×300 CT-like volume.

Reads VmHWM (the high-water mark) and VmRSS from /proc/<pid>/status of the server process — before any
request (models loaded) and after the segmentation — and divides by the float32 size of the volume.
Target: peak ≤ 3× the float32 volume (issue 21; was 6×). The server keeps an int16 upload in int16 until the
model grid only where its service builds the input with `ModelPipeline.input_tensor` (see bench/README.md,
"Segmentation pipeline speed and memory"); glibc's heap retention shows in VmHWM: compare a run with
`MALLOC_MMAP_THRESHOLD_=1048576` in the environment (inherited by the server). `--bundle`: a zoo-shaped MONAI spleen bundle (see
`segmentation_overhead.py`) instead of the demo MMAR.

    python bench/memory.py [--shape 512 512 300] [--repeats 1] [--bundle]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from segmentation_overhead import bench_model, segment_http, start, write_phantom


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS/VmHWM/… in bytes."""
    values: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key.startswith("Vm") and rest.strip().endswith("kB"):
            values[key] = int(rest.split()[0]) * 1024
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(512, 512, 300))
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--bundle", action="store_true", help="a zoo-shaped MONAI bundle instead of the demo MMAR")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="the server's --device")
    args = parser.parse_args()
    shape = tuple(args.shape)
    float32_bytes = 4 * shape[0] * shape[1] * shape[2]
    mib = 2**20
    with tempfile.TemporaryDirectory(prefix="aiaa-bench-") as tmp:
        path = write_phantom(Path(tmp) / "phantom.nii.gz", shape)  # type: ignore[arg-type]
        name, _, extra = bench_model(Path(tmp), args.bundle)
        server = start(Path(tmp) / "workspace", "--workers", "1", "--device", args.device, *extra)
        try:
            idle = proc_status(server.process.pid)
            with server.client(timeout=1200) as client:
                times = [segment_http(client, path, name) for _ in range(args.repeats)]
            busy = proc_status(server.process.pid)
        finally:
            server.stop()
    print(f"model {name}; volume {shape}: float32 size {float32_bytes / mib:.0f} MiB; upload {path.name}")
    print(f"segmentation wall time: {', '.join(f'{t:.1f} s' for t in times)}")
    print(f"server idle (models loaded): VmRSS {idle['VmRSS'] / mib:.0f} MiB, VmHWM {idle['VmHWM'] / mib:.0f} MiB")
    print(f"server after: VmRSS {busy['VmRSS'] / mib:.0f} MiB, peak VmHWM {busy['VmHWM'] / mib:.0f} MiB")
    print(f"peak / float32 volume: {busy['VmHWM'] / float32_bytes:.2f}x  (target <= 3x); "
          f"peak above idle / float32 volume: {(busy['VmHWM'] - idle['VmRSS']) / float32_bytes:.2f}x")


if __name__ == "__main__":
    main()

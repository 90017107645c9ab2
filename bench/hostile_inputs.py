"""The hostile inputs of the security review, replayed against a freshly started real server.

For each vector: the HTTP status, the request's wall time and how much the server's peak RSS (VmHWM)
grew, then whether `/v1/models` still answers. Prints a Markdown table (the "after" column of the note).

    python bench/hostile_inputs.py
"""

from __future__ import annotations

import argparse
import bz2
import gzip
import io
import json
import socket
import struct
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import httpx
import nibabel as nib
import numpy as np
from memory import proc_status

from tests.support.server import LiveServer, start_server

Request = Callable[[httpx.Client, LiveServer], httpx.Response | int]
SEGMENT = "/v1/segmentation?model=demo_spleen_ct_segmentation"
DEEPGROW = "/v1/deepgrow?model=demo_deepgrow_3d"


def nrrd(fields: dict[str, str], data: bytes = b"") -> bytes:
    head = "NRRD0004\n" + "".join(f"{k}: {v}\n" for k, v in fields.items()) + "\n"
    return head.encode() + data


def nifti_gz_claiming(shape: tuple[int, ...]) -> bytes:
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.int16)
    buffer = io.BytesIO()
    header.write_to(buffer)
    return gzip.compress(buffer.getvalue() + b"\0" * 4 + b"\0" * 2**20)


def png_claiming(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", 0)
    return b"\x89PNG\r\n\x1a\n" + chunk


def zip_of_zeros(megabytes: int) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("slice.dcm", b"\0" * megabytes * 2**20)
    return buffer.getvalue()


def small_mask() -> bytes:
    image = nib.Nifti1Image(np.zeros((16, 16, 8), np.uint8), np.eye(4))
    return gzip.compress(image.to_bytes())


def post(path: str, name: str, payload: bytes, params: object = None) -> Request:
    def send(client: httpx.Client, _: LiveServer) -> httpx.Response:
        return client.post(path, files={"datapoint": (name, payload)}, data={"params": json.dumps(params or {})})
    return send


def put_session(name: str, payload: bytes) -> Request:
    return lambda client, _: client.put("/session/", files={"image": (name, payload)})


def raw_params(path: str, text: str) -> Request:
    return lambda client, _: client.post(path, files={"datapoint": ("m.nii.gz", small_mask())},
                                         data={"params": text})


def long_boundary(client: httpx.Client, server: LiveServer) -> int:
    boundary = "b" * 300
    body = f"--{boundary}\r\nContent-Disposition: form-data; name=\"params\"\r\n\r\n{{}}\r\n--{boundary}--\r\n"
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
        sock.sendall((f"POST {SEGMENT} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
                      f"Content-Type: multipart/form-data; boundary={boundary}\r\nConnection: close\r\n\r\n"
                      f"{body}").encode())
        return int(sock.recv(64).split()[1])


def vectors(tmp: Path) -> dict[str, Request]:
    huge_poly = [[[10**9, 0], [0, 10**9], [10**9, 10**9]]]
    clicks = [[1, 1, 1]] * 10**6
    return {
        "NRRD `data file: /dev/zero` + gzip": put_session("a.nrrd", nrrd({
            "type": "uint8", "dimension": "3", "sizes": "4096 4096 4096", "encoding": "gzip",
            "data file": "/dev/zero"})),
        "NRRD `data file: /etc/passwd`": put_session("a.nrrd", nrrd({
            "type": "uint8", "dimension": "3", "sizes": "1 1 1", "encoding": "raw", "data file": "/etc/passwd"})),
        "NRRD bzip2 claiming 2048³": put_session("a.nrrd", nrrd({
            "type": "uint8", "dimension": "3", "sizes": "2048 2048 2048", "encoding": "bzip2"},
            bz2.compress(b"\0" * 2**22))),
        "NIfTI gzip claiming 32000³": post(SEGMENT, "a.nii.gz", nifti_gz_claiming((32000, 32000, 32000))),
        "NRRD `line skip: 100000000`": put_session("a.nrrd", nrrd({
            "type": "uint8", "dimension": "3", "sizes": "2 2 2", "encoding": "raw", "line skip": "100000000"},
            b"\n" * 1000)),
        "PNG header claiming 40000²": post("/v1/mask2polygon", "a.png", png_claiming(40000, 40000)),
        "zip of 30 MB zeros named .dcm": put_session("s.zip", zip_of_zeros(30)),
        "fixpolygon coordinates 1e9": post("/v1/fixpolygon", "m.nii.gz", small_mask(),
                                           {"poly": [huge_poly] * 8, "dimension": 3}),
        "fixpolygon `propagate_neighbor_3d: 1e9`": post("/v1/fixpolygon", "m.nii.gz", small_mask(), {
            "poly": [[[[1, 1], [5, 1], [5, 5]]]] * 8, "dimension": 3, "propagate_neighbor_3d": 10**9}),
        "10⁶ clicks": post(DEEPGROW, "m.nii.gz", small_mask(), {"foreground": clicks}),
        "NaN click": raw_params(DEEPGROW, '{"foreground": [[NaN, 1, 1]]}'),
        "params nested 100 000 deep": raw_params(SEGMENT, "[" * 100000 + "]" * 100000),
        "params with a 5000-digit integer": raw_params(SEGMENT, '{"x": ' + "9" * 5000 + "}"),
        "multipart boundary of 300 characters": long_boundary,
    }


def measure(server: LiveServer, client: httpx.Client, send: Request) -> tuple[str, float, float, bool]:
    before = proc_status(server.process.pid)["VmHWM"]
    started = time.perf_counter()
    try:
        result = send(client, server)
        status = str(result if isinstance(result, int) else result.status_code)
    except httpx.HTTPError as exc:
        status = f"no answer ({type(exc).__name__})"
    seconds = time.perf_counter() - started
    grown = (proc_status(server.process.pid)["VmHWM"] - before) / 2**20
    alive = client.get("/v1/models", timeout=10).status_code == 200
    return status, seconds, grown, alive


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="the server's --device")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="aiaa-hostile-") as tmp, \
            start_server(Path(tmp) / "workspace", ["--log_level", "warning", "--device", args.device],
                         startup_timeout=300) as server:
        with server.client(timeout=300) as client:
            print("| vector | status | time | server peak RSS growth | /v1/models after |")
            print("|---|---|---|---|---|")
            for name, send in vectors(Path(tmp)).items():
                status, seconds, grown, alive = measure(server, client, send)
                print(f"| {name} | {status} | {seconds:.2f} s | {grown:+.0f} MiB | {'200' if alive else 'DOWN'} |",
                      flush=True)
        errors = [line for line in server.output().splitlines() if "unexpected error" in line]
        print(f"\nserver log lines with 'unexpected error': {len(errors)}")


if __name__ == "__main__":
    main()

"""gzip codecs on real payloads: stdlib zlib vs python-isal (igzip) vs zlib-ng, compress and decompress.

Payloads: the NIfTI bytes of a 512×512×120 CT-like phantom (int16) and of its spleen label mask (uint8),
exactly what the server decodes (uploads) and encodes (results).

    python bench/gzip_codecs.py [--shape 512 512 120] [--repeats 3]
"""

from __future__ import annotations

import argparse
import gzip
import importlib
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import nibabel as nib
import numpy as np

from aiaa_demo.phantoms import make_abdomen_phantom

Codec = tuple[str, Callable[[bytes, int], bytes], Callable[[bytes], bytes], tuple[int, ...]]


def _codecs() -> list[Codec]:
    found: list[Codec] = [("zlib (stdlib gzip)", lambda b, lv: gzip.compress(b, lv, mtime=0), gzip.decompress,
                           (1, 6))]
    try:
        igzip = importlib.import_module("isal.igzip")
        found.append(("isal igzip", lambda b, lv: igzip.compress(b, lv, mtime=0), igzip.decompress, (0, 1, 2)))
    except ImportError:
        print("isal not installed: pip install isal")
    try:
        gzip_ng = importlib.import_module("zlib_ng.gzip_ng")
        found.append(("zlib-ng", lambda b, lv: gzip_ng.compress(b, lv, mtime=0), gzip_ng.decompress, (1, 6)))
    except ImportError:
        print("zlib-ng not installed: pip install zlib-ng")
    return found


def _best(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def _payloads(shape: tuple[int, int, int]) -> dict[str, bytes]:
    phantom = make_abdomen_phantom(np.random.default_rng(0), shape=shape, spacing=(0.8, 0.8, 2.5))
    ct = nib.Nifti1Image(np.clip(phantom.image, -1024, 3071).astype(np.int16), phantom.affine)
    mask = nib.Nifti1Image((phantom.labels == 1).astype(np.uint8), phantom.affine)  # the spleen
    return {"CT int16": ct.to_bytes(), "label mask uint8": mask.to_bytes()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(512, 512, 120))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    payloads = _payloads(tuple(args.shape))
    baseline: dict[str, float] = {}
    print(f"{'payload':18} {'codec':20} {'lvl':>3} {'MiB':>7} {'ratio':>6} {'comp s':>7} {'MiB/s':>7} "
          f"{'decomp s':>8} {'vs zlib-1 comp':>14}")
    for name, raw in payloads.items():
        mib = len(raw) / 2**20
        for codec, compress, decompress, levels in _codecs():
            for level in levels:
                packed = compress(raw, level)
                assert decompress(packed) == raw
                comp = _best(lambda c=compress, r=raw, lv=level: c(r, lv), args.repeats)
                decomp = _best(lambda d=decompress, p=packed: d(p), args.repeats)
                baseline.setdefault(name, comp)  # the first row is stdlib zlib level 1
                print(f"{name:18} {codec:20} {level:>3} {mib:7.1f} {len(raw) / len(packed):6.1f} {comp:7.3f} "
                      f"{mib / comp:7.0f} {decomp:8.3f} {baseline[name] / comp:13.1f}x")


if __name__ == "__main__":
    main()

"""DICOM SEG cost next to the NIfTI result it replaces: a CT-like phantom written as a DICOM series, decoded with
its headers, and a 3-label mask written and read back as DICOM SEG (highdicom, BINARY) and as NIfTI-gz.

Prints seconds and bytes of each and the SEG / NIfTI ratios, all measured in this run.

    python bench/dicom_seg.py [--size 512 --slices 120 --repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiaa_demo.datasets.dicom_export import volume_to_dicom_series
from aiaa_demo.phantoms import ORGAN_LABELS, make_abdomen_phantom
from aiaa_server.imaging.dicom import read_dicom_series_with_headers
from aiaa_server.imaging.dicom_seg import write_dicom_seg
from aiaa_server.imaging.dicom_seg_read import read_dicom_seg
from aiaa_server.imaging.formats import ImageFormat
from aiaa_server.imaging.io import decode_result, encode_volume


def _median_seconds(run: Callable[[], object], repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512, help="in-plane voxels")
    parser.add_argument("--slices", type=int, default=120)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    phantom = make_abdomen_phantom(np.random.default_rng(0), shape=(args.size, args.size, args.slices),
                                   spacing=(0.8, 0.8, 2.5))
    with tempfile.TemporaryDirectory() as folder:
        series = volume_to_dicom_series(np.asarray(phantom.image), phantom.affine, Path(folder) / "ct")
        started = time.perf_counter()
        volume, headers = read_dicom_series_with_headers(series.paths, Path(folder) / "work")
        decode_s = time.perf_counter() - started
    # the series reader sorts slices along the normal: the decoded grid is the phantom's when the affine agrees
    assert np.allclose(volume.affine, phantom.affine, atol=1e-3), "the series is not on the phantom's grid"
    mask = np.zeros(volume.array.shape, dtype=np.uint8)
    for value, organ in enumerate(("liver", "spleen", "left_kidney"), start=1):
        mask[np.asarray(phantom.labels) == ORGAN_LABELS[organ]] = value
    names = {1: "liver", 2: "spleen", 3: "left kidney"}
    seg_s, seg = _median_seconds(lambda: write_dicom_seg(mask, volume.affine, headers, names), args.repeats)
    nii_s, nii = _median_seconds(lambda: encode_volume(mask, volume, ImageFormat.NIFTI_GZ, dtype=np.dtype(np.uint8),
                                                       compress=True, gzip_level=1), args.repeats)
    seg_read_s, decoded = _median_seconds(lambda: read_dicom_seg(seg, reference=volume), args.repeats)
    nii_read_s, _ = _median_seconds(lambda: decode_result(nii, ImageFormat.NIFTI_GZ), args.repeats)
    assert np.array_equal(decoded.labels, mask), "the SEG does not read back as the mask"
    print(f"series {volume.array.shape} decoded with headers in {decode_s:.2f} s; mask labels "
          f"{sorted(int(v) for v in np.unique(mask) if v)}")
    print(f"write: SEG {seg_s:.3f} s, {len(seg) / 2**20:.2f} MiB | NIfTI-gz {nii_s:.3f} s, "
          f"{len(nii) / 2**20:.2f} MiB | ratio time {seg_s / nii_s:.1f}x, size {len(seg) / len(nii):.1f}x")
    print(f"read:  SEG {seg_read_s:.3f} s | NIfTI-gz {nii_read_s:.3f} s | ratio {seg_read_s / nii_read_s:.1f}x")


if __name__ == "__main__":
    main()

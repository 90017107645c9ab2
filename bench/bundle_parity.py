"""MONAI bundles served over HTTP vs MONAI's own bundle run: voxel agreement of the masks, and the times.

The three zoo-shaped bundles of `aiaa_demo.zoo_bundles` (`spleen_ct_segmentation`, `swin_unetr_btcv_segmentation`,
`wholeBody_ct_segmentation` in its 3 mm setting) at full size with seeded random weights are written to a
temporary `--models` folder and served by a real server process; each mask it returns for the image is compared
voxel by voxel with the one `monai.bundle.run` writes in this process (`SaveImaged`) for the same file.
Target: agreement ≥ 99.9 % for every bundle.

The image: the real chest CT `lung1_ct` (512×512×48, 0.57×0.57×5 mm, LPS) from the dataset cache
(`python -m aiaa_demo.datasets fetch`), else a 256×256×60 CT-like phantom.

    python bench/bundle_parity.py [--image CT.nii.gz] [--bundles NAME ...] [--seed 0]
"""

from __future__ import annotations

import argparse
import gzip
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import nibabel as nib
import numpy as np
from segmentation_overhead import start, write_phantom

from aiaa_demo.datasets.cache import default_cache
from aiaa_demo.zoo_bundles import ZOO_BUNDLES, monai_bundle_output, write_bundle


def _image(tmp: Path, given: Path | None) -> Path:
    if given is not None:
        return given
    cached = default_cache() / "nifti" / "lung1_ct.nii.gz"
    return cached if cached.is_file() else write_phantom(tmp / "phantom.nii.gz", (256, 256, 60))


def _mask(payload: bytes) -> np.ndarray:
    raw = gzip.decompress(payload) if payload[:2] == b"\x1f\x8b" else payload
    return np.asarray(nib.Nifti1Image.from_bytes(raw).dataobj)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", type=Path, default=None, help="a NIfTI CT (default: lung1_ct, else a phantom)")
    parser.add_argument("--bundles", nargs="+", default=list(ZOO_BUNDLES), choices=ZOO_BUNDLES)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="the server's --device")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="aiaa-parity-") as tmp_name:
        tmp = Path(tmp_name)
        image = _image(tmp, args.image)
        print(f"image {image.name} {nib.load(image).shape}")
        for name in args.bundles:
            write_bundle(tmp / "models" / name, name, seed=args.seed)
        server = start(tmp / "workspace", "--models", str(tmp / "models"), "--no-bundled_models",
                       "--device", args.device)
        try:
            with server.client(timeout=3600) as client:
                for name in args.bundles:
                    started = time.perf_counter()
                    response = client.post("/v1/segmentation", params={"model": name, "output": "image"},
                                           files={"datapoint": (image.name, image.read_bytes())},
                                           data={"params": "{}"})
                    response.raise_for_status()
                    http_s = time.perf_counter() - started
                    served = _mask(response.content)
                    started = time.perf_counter()
                    written = monai_bundle_output(tmp / "models" / name, image, tmp / f"monai-{name}")
                    monai_s = time.perf_counter() - started
                    expected = np.asarray(nib.load(written).dataobj).squeeze()
                    same = int(np.count_nonzero(served == expected)) if served.shape == expected.shape else 0
                    rows.append((name, served.shape, expected.size, same, len(np.unique(expected)), http_s, monai_s))
        finally:
            server.stop()
    print("\n| bundle | mask shape | voxels | differing | agreement | classes | HTTP s | MONAI s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for name, shape, total, same, classes, http_s, monai_s in rows:
        print(f"| {name} | {'×'.join(map(str, shape))} | {total} | {total - same} | {100 * same / total:.4f} % | "
              f"{classes} | {http_s:.1f} | {monai_s:.1f} |")


if __name__ == "__main__":
    main()

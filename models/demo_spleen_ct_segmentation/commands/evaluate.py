#!/usr/bin/env python
"""Evaluate the DEMO spleen model on fresh, held-out synthetic phantoms.

Runs the MMAR config pipeline in-process with plain MONAI:

    MetaTensor(image, affine) -> EnsureChannelFirstd -> Orientationd(RAS)
    -> Spacingd -> ScaleIntensityRanged -> sliding_window_inference(TorchScript)
    -> softmax -> argmax -> KeepLargestConnectedComponent(label 1)
    -> SpatialResample (nearest) back to the ORIGINAL voxel grid

and reports the Dice of the predicted spleen vs the phantom's ground-truth
spleen on the original grid.  Held-out phantom ``i`` uses
``np.random.default_rng((seed, 1, i))``; training uses ``(seed, 0, i)``
streams, so they are disjoint.

Example::

    python commands/evaluate.py --num 10 --seed 1000
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train import (
    CONFIG,
    MMAR_DIR,
    REPO_ROOT,
    config_params,
    load_phantoms,
    phantom_to_dict,
    preprocess_transform,
)

sys.path.insert(0, str(REPO_ROOT))
from aiaa_server.imaging.masks import dice


def predict(model: torch.jit.ScriptModule, phantom, params: dict) -> np.ndarray:
    """Spleen mask (uint8) on the phantom's original voxel grid."""
    from monai.inferers import sliding_window_inference
    from monai.transforms import KeepLargestConnectedComponent, SpatialResample

    d = preprocess_transform(params, with_label=False)(phantom_to_dict(phantom, with_label=False))
    img = d["image"]  # MetaTensor (1, X, Y, Z) on the 2.5 mm RAS grid
    with torch.no_grad():
        logits = sliding_window_inference(
            img.as_tensor()[None].float(),
            roi_size=params["roi"],
            sw_batch_size=params["sw_batch_size"],
            predictor=model,
            overlap=params["overlap"],
        )
    prob = torch.softmax(logits, dim=1)[0]
    pred = torch.argmax(prob, dim=0, keepdim=True)
    pred = KeepLargestConnectedComponent(applied_labels=[1])(pred)
    from monai.data import MetaTensor

    pred = MetaTensor(torch.from_numpy(np.asarray(pred, dtype=np.float32)), affine=img.affine.clone())
    back = SpatialResample(mode="nearest")(
        pred,
        dst_affine=torch.as_tensor(np.asarray(phantom.affine, dtype=np.float64)),
        spatial_size=tuple(int(s) for s in phantom.image.shape),
    )
    return (torch.as_tensor(back)[0].round().numpy() == 1).astype(np.uint8)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=MMAR_DIR / "models" / "model.ts")
    ap.add_argument("--num", type=int, default=10, help="number of held-out phantoms")
    ap.add_argument("--seed", type=int, default=1000, help="held-out seed (streams (seed, 1, i))")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--config", type=Path, default=CONFIG)
    ap.add_argument("--json", type=Path, default=None, help="optionally write the results as JSON")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    params = config_params(args.config)
    phantoms = load_phantoms()
    model = torch.jit.load(str(args.model), map_location="cpu").eval()
    results = []
    for i in range(args.num):
        t = time.time()
        ph = phantoms.make_abdomen_phantom(np.random.default_rng((args.seed, 1, i)))
        pred = predict(model, ph, params)
        gt = (ph.labels == 1).astype(np.uint8)
        d = dice(pred, gt)
        lps = bool(ph.affine[0, 0] < 0)
        sp = tuple(round(s, 2) for s in ph.spacing)
        results.append({"index": i, "dice": d, "shape": list(ph.image.shape), "spacing": sp, "lps": lps,
                        "gt_voxels": int(gt.sum()), "pred_voxels": int(pred.sum())})
        print(f"phantom {i:3d}  shape {ph.image.shape}  spacing {sp}  {'LPS' if lps else 'RAS'}  "
              f"dice {d:.4f}  ({time.time() - t:.1f}s)", flush=True)
    ds = np.array([r["dice"] for r in results])
    print(f"held-out phantoms: {len(ds)} (seed {args.seed}); mean dice {ds.mean():.4f}  min {ds.min():.4f}  "
          f"median {np.median(ds):.4f}  max {ds.max():.4f}")
    if args.json is not None:
        args.json.write_text(json.dumps({"seed": args.seed, "num": args.num, "mean": float(ds.mean()),
                                         "min": float(ds.min()), "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

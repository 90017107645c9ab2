"""`monailabel_peer.py --reference monai`: the peer's pipeline with MONAI's own pieces, in this process.

What MONAI Label's `BasicInferTask` does for the bench app, without MONAI Label: `LoadImaged` → pre
transforms → `sliding_window_inference` on the TorchScript → post transforms → `Invertd` back to the input's
grid (MONAI Label's sample apps invert the pre transforms so) → `SaveImaged` (.nii.gz, uint8). Timed from the
file on disk to the mask file written; no HTTP, no upload, no multipart.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.inferers import sliding_window_inference
from monai.transforms import (
    Activationsd,
    AsDiscreted,
    Compose,
    EnsureChannelFirstd,
    Invertd,
    KeepLargestConnectedComponentd,
    LoadImaged,
    Orientationd,
    SaveImaged,
    ScaleIntensityRanged,
    Spacingd,
)


@dataclass
class Run:
    """One timed segmentation: seconds, the mask decoded from its answer (I×J×K uint8), the answer's size."""

    seconds: float
    mask: np.ndarray
    answer_bytes: int


class MonaiReference:
    """The demo spleen pipeline of `bench/monailabel_app/main.py`, built from MONAI only.

    Args:
        model_ts: the TorchScript file (input 1×1×64³ float32, output 1×2×64³ logits).
        tmp: a folder for the written masks.
    """

    def __init__(self, model_ts: Path, tmp: Path) -> None:
        self.network = torch.jit.load(str(model_ts), map_location="cpu").eval()
        self.output_dir = tmp / "monai-reference"
        self.pre = Compose([
            LoadImaged(keys="image"),
            EnsureChannelFirstd(keys="image"),
            Orientationd(keys="image", axcodes="RAS"),
            Spacingd(keys="image", pixdim=(2.5, 2.5, 2.5), mode="bilinear", dtype=torch.float32),
            ScaleIntensityRanged(keys="image", a_min=-200, a_max=300, b_min=0.0, b_max=1.0, clip=True),
        ])
        self.post = Compose([
            Activationsd(keys="pred", softmax=True),
            AsDiscreted(keys="pred", argmax=True),
            KeepLargestConnectedComponentd(keys="pred", applied_labels=[1]),
            Invertd(keys="pred", transform=self.pre, orig_keys="image", nearest_interp=True),
            SaveImaged(keys="pred", output_dir=str(self.output_dir), output_postfix="seg", output_ext=".nii.gz",
                       output_dtype=np.uint8, resample=False, separate_folder=False, print_log=False),
        ])

    def segment(self, path: Path) -> Run:
        """Timed from the file to the written mask; the mask is read back untimed."""
        started = time.perf_counter()
        data = self.pre({"image": str(path)})
        with torch.no_grad():
            logits = sliding_window_inference(data["image"][None], roi_size=(64, 64, 64), sw_batch_size=4,
                                              predictor=self.network, overlap=0.25)
        data["pred"] = logits[0]
        self.post(data)
        elapsed = time.perf_counter() - started
        written = next(self.output_dir.glob("*_seg.nii.gz"))
        mask = np.asarray(nib.load(written).dataobj).astype(np.uint8).squeeze()
        size = written.stat().st_size
        written.unlink()
        return Run(elapsed, mask, size)

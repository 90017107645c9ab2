"""A minimal MONAI Label 0.8.5 app serving the bundled demo spleen TorchScript, for `bench/monailabel_peer.py`.

It runs inside MONAI Label's own virtual environment (not aiaa-server's), so it imports only MONAI and
MONAI Label. The network, transforms and inferer are those of
`models/demo_spleen_ct_segmentation/config/config_aiaa.json`, written as a MONAI Label sample app writes them
(`sample-apps/radiology/lib/infers/segmentation_spleen.py` in MONAI Label 0.8.5): a `BasicInferTask` whose
post transforms end with MONAI Label's own `Restored`, written by its default `Writer`.

    monailabel start_server --app bench/monailabel_app --studies <dir> \
        --conf models demo_spleen_ct_segmentation --conf model_path <.../models/model.ts>

`--conf model_path` defaults to the bundled model of the repository this folder sits in.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from monai.inferers import Inferer, SlidingWindowInferer
from monai.transforms import (
    Activationsd,
    AsDiscreted,
    EnsureChannelFirstd,
    KeepLargestConnectedComponentd,
    LoadImaged,
    Orientationd,
    ScaleIntensityRanged,
    Spacingd,
)
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask
from monailabel.transform.post import Restored

MODEL_NAME = "demo_spleen_ct_segmentation"
BUNDLED_MODEL = os.path.join(os.path.dirname(__file__), "..", "..", "models", MODEL_NAME, "models", "model.ts")


class DemoSpleenSegmentation(BasicInferTask):
    """The demo spleen UNet (TorchScript, 1 input channel, 2 output channels: background, spleen).

    Pre: load, channel first, RAS, 2.5 mm isotropic (bilinear, float32), HU −200..300 → 0..1 clipped.
    Inferer: 64³ sliding window, overlap 0.25, 4 windows a batch. Post: softmax, argmax, the largest
    connected spleen component, resized and reoriented back to the input's voxel grid (`Restored`).
    """

    def __init__(self, path: str) -> None:
        super().__init__(path=path, network=None, type=InferType.SEGMENTATION, labels={"spleen": 1},
                         dimension=3, description="Demo spleen segmentation (aiaa-server bench peer)")

    def pre_transforms(self, data: dict[str, Any] | None = None) -> Sequence[Callable]:
        return [
            LoadImaged(keys="image"),
            EnsureChannelFirstd(keys="image"),
            Orientationd(keys="image", axcodes="RAS"),
            Spacingd(keys="image", pixdim=(2.5, 2.5, 2.5), mode="bilinear", dtype="float32"),
            ScaleIntensityRanged(keys="image", a_min=-200, a_max=300, b_min=0.0, b_max=1.0, clip=True),
        ]

    def inferer(self, data: dict[str, Any] | None = None) -> Inferer:
        return SlidingWindowInferer(roi_size=(64, 64, 64), sw_batch_size=4, overlap=0.25)

    def post_transforms(self, data: dict[str, Any] | None = None) -> Sequence[Callable]:
        return [
            Activationsd(keys="pred", softmax=True),
            AsDiscreted(keys="pred", argmax=True),
            KeepLargestConnectedComponentd(keys="pred", applied_labels=[1]),
            Restored(keys="pred", ref_image="image", invert_orient=True),
        ]


class PeerApp(MONAILabelApp):
    """One segmentation model named `--conf models`, from `--conf model_path`."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        self.model_name = conf.get("models", MODEL_NAME)
        self.model_path = os.path.abspath(conf.get("model_path", BUNDLED_MODEL))
        super().__init__(app_dir=app_dir, studies=studies, conf=conf, name="aiaa-server bench peer",
                         description="MONAI Label serving aiaa-server's demo spleen model")

    def init_infers(self) -> dict[str, InferTask]:
        return {self.model_name: DemoSpleenSegmentation(self.model_path)}

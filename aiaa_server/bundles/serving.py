"""The steps the server adds around a bundle's own transforms: the inferer call, clicks as DeepEdit-style
guidance, and the result on the input grid."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor

from aiaa_server.engines.base import Engine
from aiaa_server.inference.interactive import CLICKS_KEY, DeepgrowClicks
from aiaa_server.inference.tensors import ORIGINAL_AFFINE, ORIGINAL_SHAPE, plain_tensor
from aiaa_server.inference.transforms import restore_to_grid

IMAGE_KEY = "image"  # monai.utils.CommonKeys.IMAGE / PRED: the keys a bundle's evaluator uses
PRED_KEY = "pred"
BACKGROUND_KEY = "background"


class BundleInference:
    """The bundle's `inferer` run with the network on `data["image"]` as a batch of one, as MONAI's
    `SupervisedEvaluator` does; the first item of the output is stored under `data["pred"]` (on the CPU).

    Args:
        inferer: the bundle's inferer (e.g. `SlidingWindowInferer`), called as `inferer(batch, network)`.
        engine: the network: (N, C, *spatial) → (N, C_out, *spatial).
    """

    def __init__(self, inferer: Any, engine: Engine) -> None:
        self.inferer = inferer
        self.engine = engine

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        d = dict(data)
        batch = plain_tensor(d[IMAGE_KEY])[None].to(self.engine.device)
        with torch.inference_mode():
            output = self.inferer(batch, self.engine)
        if isinstance(output, (tuple, list)):
            output = output[0]
        if isinstance(output, dict):
            output = next(iter(output.values()))
        d[PRED_KEY] = plain_tensor(output)[0].cpu()
        return d


class ClicksAsGuidance:
    """DeepGrow clicks as the data DeepEdit-style bundle transforms read: the foreground clicks under the
    first label's name, the background clicks under "background" ([x, y, z] voxel indices of the input).

    Args:
        labels: the bundle's label names (background left out); the clicks go to the first one.
    """

    def __init__(self, labels: Sequence[str]) -> None:
        self.label = labels[0] if labels else "foreground"

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        d = dict(data)
        clicks = d.get(CLICKS_KEY)
        if isinstance(clicks, DeepgrowClicks):
            d[self.label] = [list(p) for p in clicks.foreground]
            d[BACKGROUND_KEY] = [list(p) for p in clicks.background]
        return d


class ResultOnInputGrid:
    """Puts `data["pred"]` on the input's grid where the bundle's postprocessing left it elsewhere (no `Invertd`):
    nearest-neighbour from the grid its own meta names (a MetaTensor), else from the image's (model) grid."""

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        image, pred = data.get(IMAGE_KEY), data.get(PRED_KEY)
        if pred is None or not isinstance(image, MetaTensor) or ORIGINAL_AFFINE not in image.meta:
            return data
        target_affine = np.asarray(image.meta[ORIGINAL_AFFINE], dtype=np.float64)
        target_shape = tuple(int(s) for s in image.meta[ORIGINAL_SHAPE])
        source = pred if isinstance(pred, MetaTensor) else image
        source_affine = np.asarray(source.affine, dtype=np.float64)
        on_grid = tuple(pred.shape[-len(target_shape):]) == target_shape
        if on_grid and np.allclose(source_affine, target_affine, atol=1e-6):
            return data
        d = dict(data)
        d[PRED_KEY] = restore_to_grid(pred, source_affine, target_affine, target_shape, "nearest")
        return d

"""A fast path for a bundle's `Invertd` followed by `AsDiscreted(argmax=True)`: the class probabilities sampled
back onto the input grid and reduced to labels one slab at a time.

MONAI's `Invertd` undoes the pre-processing on the whole (C, *model grid) probability map: it resamples every
channel onto the input grid with `grid_sample` over a dense coordinate grid, and only then does `AsDiscreted` take
the argmax. On a 512×512×300 CT with 2 classes that is a 600 MiB float32 map plus grids of several GiB: the
zoo-shaped spleen bundle peaked at 5.9 GiB (19.9× the float32 volume). When the operations to undo are an
orientation and one axis-aligned bilinear resampling (MONAI's `Orientationd` and `Spacingd`), their inverse is
one axis-aligned resampling from the model grid onto the input grid (`inv(model affine) @ input affine`, in
voxels), which `fast_spacing.sampled_slabs` does separably, a slab at a time; each slab is reduced to labels
(`fast_discrete.channel_argmax`) at once. The labels come back as a uint8 (1, *input grid) map in NIfTI's
Fortran order (the values MONAI's path gives as float32; the MMAR path's `Restored` does the same).

Anything else (other inverted transforms, nearest or spline modes, several keys, a `post_func`, NaN in the
probabilities, more than 256 classes, options on the argmax) runs the configured pair unchanged.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import AsDiscreted, Invertd
from monai.utils import TraceKeys

from aiaa_server.imaging.sampling import axis_permutation
from aiaa_server.inference.fast_discrete import channel_argmax, plain_argmax
from aiaa_server.inference.fast_spacing import bilinear_padding, sampled_slabs
from aiaa_server.inference.tensors import ORIGINAL_AFFINE, ORIGINAL_SHAPE

_RESAMPLINGS = {"SpatialResample", "Spacing"}  # MONAI's trace names for a Spacingd's operation
_REORIENTATIONS = {"Orientation"}


def _inverse_padding(operations: list[dict[str, Any]]) -> str | None:
    """The padding mode of the one bilinear, axis-aligned-able resampling among `operations` (besides
    orientations only); None when the operations are anything else."""
    resamplings = [op for op in operations if op.get(TraceKeys.CLASS_NAME) in _RESAMPLINGS]
    others = [op for op in operations
              if op.get(TraceKeys.CLASS_NAME) not in _RESAMPLINGS | _REORIENTATIONS]
    if others or len(resamplings) != 1:
        return None
    return bilinear_padding(resamplings[0].get(TraceKeys.EXTRA_INFO) or {})


def _plan(invert: Invertd, discrete: AsDiscreted, data: dict[str, Any]) -> tuple[str, np.ndarray, tuple[int, ...],
                                                                                  str] | None:
    """(key, input voxel → model voxel matrix, input shape, padding) when the pair can take the fast path."""
    if (len(invert.keys) != 1 or invert.nearest_interp[0] or invert.post_func[0] is not None
            or invert.device[0] is not None or tuple(discrete.keys) != tuple(invert.keys)):
        return None
    key, orig_key = invert.keys[0], invert.orig_keys[0]
    if not plain_argmax(discrete.converter, discrete.argmax[0], discrete.to_onehot[0], discrete.threshold[0],
                        discrete.rounding[0]):
        return None
    image, pred = data.get(orig_key), data.get(key)
    if not isinstance(image, MetaTensor) or not isinstance(pred, torch.Tensor) or pred.is_cuda or image.is_cuda:
        return None
    geometry_known = {ORIGINAL_AFFINE, ORIGINAL_SHAPE} <= set(image.meta)
    if (image.pending_operations or not geometry_known or pred.shape[1:] != image.shape[1:]
            or not pred.dtype.is_floating_point or not 1 <= pred.shape[0] <= 256):
        return None
    padding = _inverse_padding(image.applied_operations)
    if padding is None:
        return None
    target_affine = np.asarray(image.meta[ORIGINAL_AFFINE], dtype=np.float64)
    matrix = np.linalg.solve(np.asarray(image.affine, dtype=np.float64), target_affine)
    if axis_permutation(matrix[:-1, :-1]) is None:
        return None
    return key, matrix, tuple(int(s) for s in image.meta[ORIGINAL_SHAPE]), padding


def inverted_labels(pred: torch.Tensor, matrix: np.ndarray, shape: tuple[int, ...], padding: str) -> np.ndarray:
    """The argmax of `pred` (C, *model grid) sampled (bilinear) onto a `shape` grid through `matrix` (grid voxel →
    model voxel), slab by slab: a Fortran-ordered uint8 array of `shape`."""
    labels = np.zeros(shape[::-1], dtype=np.uint8).T  # NIfTI order: the encoder streams it without a copy
    for axis, start, stop, values in sampled_slabs(pred.as_subclass(torch.Tensor), matrix, shape, padding):
        index = tuple(slice(start, stop) if a == axis else slice(None) for a in range(len(shape)))
        labels[index] = channel_argmax(values)[0].numpy()
    return labels


class FastInvertArgmaxd:
    """`Invertd` then `AsDiscreted(argmax=True)` on the same key, fused (see the module doc).

    Args:
        invert: the configured MONAI `Invertd` (kept as `wrapped`).
        discrete: the `AsDiscreted` that follows it (MONAI's, or its `FastAsDiscreted` wrapper).
    """

    def __init__(self, invert: Invertd, discrete: Any) -> None:
        self.wrapped = invert
        self.discrete = discrete

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        """A copy of `data` with the key's class probabilities replaced by (1, *input grid) labels."""
        plain_discrete = getattr(self.discrete, "wrapped", self.discrete)
        plan = _plan(self.wrapped, plain_discrete, data)
        if plan is None or bool(torch.isnan(data[self.wrapped.keys[0]]).any()):
            return self.discrete(self.wrapped(data))
        key, matrix, shape, padding = plan
        image = data[self.wrapped.orig_keys[0]]
        labels = inverted_labels(data[key], matrix, shape, padding)
        meta = {k: v for k, v in image.meta.items() if k != "affine"}
        out = MetaTensor(torch.from_numpy(labels)[None], meta=meta)
        out.affine = torch.as_tensor(image.meta[ORIGINAL_AFFINE], dtype=torch.float64)
        return {**data, key: out}

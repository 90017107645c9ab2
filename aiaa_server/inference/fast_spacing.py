"""A fast path for MONAI's `Spacingd` on axis-aligned grids: separable trilinear resampling in float32.

MONAI's `Spacingd` resamples with `grid_sample` over a dense sampling grid, in float64 by default, after
converting the whole input to that dtype: on a 512×512×300 CT that is a 600 MiB float64 copy and seconds of
work. When the output grid is axis-aligned with the input (any RAS/LPS volume: the voxel → voxel matrix is a
scaled permutation), bilinear resampling is a product of 1D linear interpolations, which
`imaging.sampling.sample_grid` does one axis at a time, reading the input in its own dtype (int16 stays int16
until the voxels it needs are read) and writing float32 on the output grid.

The output geometry is MONAI's own: the wrapped `Spacingd` is run lazily (MONAI computes the output shape,
affine and the pending operation without resampling), and only the resampling itself is done here. Anything
else (oblique affines, nearest or spline modes, `align_corners=True`, reflection padding, several pending
operations) runs the wrapped transform unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Spacingd
from monai.transforms.lazy.utils import affine_from_pending
from monai.utils import TraceKeys

from aiaa_server.imaging.sampling import PADDING_MODES, axis_permutation, sample_grid

SLAB_VOXELS = 2**21  # output voxels resampled at a time: float32 temporaries of ~10 MiB per axis pass


def bilinear_padding(settings: dict[str, Any]) -> str | None:
    """The padding mode of a traced MONAI resampling (its `extra_info`) that the separable path reproduces:
    bilinear, `align_corners=False`, "border" or "zeros" padding; None for any other."""
    padding = str(settings.get("padding_mode"))
    if str(settings.get("mode")) != "bilinear" or settings.get("align_corners") is not False:
        return None
    return padding if padding in PADDING_MODES else None


def _fast_plan(value: Any) -> tuple[np.ndarray, tuple[int, ...], str] | None:
    """(voxel → voxel matrix, output shape, padding mode) when `value`'s one pending resampling can take the
    separable path; None otherwise."""
    if not isinstance(value, MetaTensor) or len(value.pending_operations) != 1 or value.is_cuda:
        return None
    pending = value.pending_operations[0]
    padding = bilinear_padding(pending.get(TraceKeys.EXTRA_INFO) or {})  # Spacing keeps its mode there
    if padding is None:
        return None
    matrix = np.asarray(affine_from_pending(pending), dtype=np.float64)
    if matrix.shape[0] != value.ndim or axis_permutation(matrix[:-1, :-1]) is None:
        return None
    shape = tuple(int(s) for s in value.peek_pending_shape())
    return matrix, shape, padding


def sampled_slabs(source: torch.Tensor, matrix: np.ndarray, shape: tuple[int, ...], padding: str,
                  slab_voxels: int | None = None) -> Iterator[tuple[int, int, int, torch.Tensor]]:
    """`sample_grid` one slab of the output at a time: each slab reads only the source voxels it reaches, so the
    temporaries are slab-sized, not volume-sized. Slabs cut the output axis fed by the source's outermost axis in
    memory, and the source is viewed in its memory order (C or Fortran alike), so each slab reads whole
    contiguous runs and interpolates along outer axes.

    Args:
        source: (C, *S) tensor, any dtype and memory order.
        matrix: (n+1) × (n+1) output voxel → source voxel map (axis-aligned).
        shape: the n output spatial sizes.
        padding: "border" or "zeros".
        slab_voxels: output voxels per slab (at least one plane); default `SLAB_VOXELS`.

    Yields:
        (output spatial axis, start, stop, (C, *slab shape) float32 values) for consecutive slabs.
    """
    n = len(shape)
    order = sorted(range(n), key=lambda a: -abs(source.stride(1 + a)))  # source axes, outermost in memory first
    source = source.permute(0, *[1 + a for a in order])  # a C-ordered view of a Fortran-ordered NIfTI array
    matrix = matrix[[*order, n]]
    permutation = axis_permutation(matrix[:-1, :-1])
    assert permutation is not None
    axis = permutation[0]
    plane = max(int(np.prod(shape)) // max(shape[axis], 1), 1)
    step = max(1, (slab_voxels or SLAB_VOXELS) // plane)
    for start in range(0, shape[axis], step):
        stop = min(shape[axis], start + step)
        shifted = matrix.copy()
        shifted[:-1, -1] += matrix[:-1, axis] * start  # slab index g → output index g + start on `axis`
        slab_shape = tuple(stop - start if a == axis else size for a, size in enumerate(shape))
        yield axis, start, stop, sample_grid(source, shifted, slab_shape, padding)


def _sample_in_slabs(source: torch.Tensor, matrix: np.ndarray, shape: tuple[int, ...], padding: str,
                     slab_voxels: int | None = None) -> torch.Tensor:
    """`sampled_slabs` gathered into a preallocated (C, *shape) float32 output."""
    out = torch.empty((source.shape[0], *shape), dtype=torch.float32)
    for axis, start, stop, values in sampled_slabs(source, matrix, shape, padding, slab_voxels):
        out.narrow(1 + axis, start, stop - start).copy_(values)
    return out


def _resampled(value: MetaTensor, matrix: np.ndarray, shape: tuple[int, ...], padding: str) -> MetaTensor:
    """`value` resampled onto its pending grid (float32), with MONAI's meta: the pending affine, and the
    pending operation moved to the applied ones (so `Invertd` can undo it)."""
    pending = value.pending_operations[0]
    affine = value.peek_pending_affine()
    sampled = _sample_in_slabs(value.as_tensor(), matrix, shape, padding)
    out = MetaTensor(sampled, meta=dict(value.meta), applied_operations=list(value.applied_operations))
    out.affine = torch.as_tensor(affine, dtype=torch.float64)
    out.push_applied_operation(pending)
    return out


class FastSpacingd:
    """`Spacingd` with the axis-aligned bilinear case resampled separably in float32 (see the module doc).

    Args:
        spacing: the configured MONAI `Spacingd`; run lazily for the geometry, or as is for the fallback.

    Same output shape, affine and meta as `spacing` (max abs difference to MONAI's float64 result ~1e-5
    of the intensity range); float32 output whatever `dtype` says.
    """

    def __init__(self, spacing: Spacingd) -> None:
        self.wrapped = spacing

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        """A copy of `data` with the spacing's keys on the new grid (channel-first (C, *spatial) MetaTensors)."""
        if self.wrapped.lazy:
            return self.wrapped(data)
        lazy = self.wrapped(dict(data), lazy=True)
        keys = [key for key in self.wrapped.key_iterator(lazy)]
        plans = {key: _fast_plan(lazy[key]) for key in keys}
        if not keys or all(plan is None for plan in plans.values()):
            return self.wrapped(data)
        # keys without a fast path (a label resampled "nearest" beside its image) get MONAI's result; the others
        # ours, so that an image comes out the same with or without a label beside it
        out = self.wrapped(data) if any(plan is None for plan in plans.values()) else lazy
        for key, plan in plans.items():
            if plan is not None:
                out[key] = _resampled(lazy[key], *plan)
        return out

    def inverse(self, data: dict[str, Any]) -> dict[str, Any]:
        """MONAI's inverse (the applied operation is the one MONAI would have recorded)."""
        return self.wrapped.inverse(data)

"""Client-side DExtr3D pre/post-processing (protocol 7.2, mode 1), in plain numpy.

Crop the bounding box of the points padded by `pad` millimetres (per axis: pad / spacing voxels, clipped to
the image), resample the crop linearly to `roi` voxels, scale the points into that grid; afterwards resample
the returned mask back (nearest) and paste it into a zero volume of the original size.

Grid convention (the one ITK uses when only the spacing changes): voxel 0 of the resampled crop sits on
voxel 0 of the crop, and resampled voxel j sits on crop coordinate j * (crop size / roi).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

Point = Sequence[int]


@dataclass(frozen=True)
class CropPlan:
    start: tuple[int, int, int]  # first voxel of the crop, inclusive
    stop: tuple[int, int, int]  # last voxel + 1
    roi: tuple[int, int, int]

    @property
    def size(self) -> tuple[int, int, int]:
        return tuple(b - a for a, b in zip(self.start, self.stop))  # type: ignore[return-value]

    @property
    def scale(self) -> tuple[float, float, float]:
        """Crop voxels per resampled voxel, per axis."""
        return tuple(s / r for s, r in zip(self.size, self.roi))  # type: ignore[return-value]


def plan_crop(
    points: Sequence[Point],
    shape: Sequence[int],
    spacing: Sequence[float],
    pad: float = 20.0,
    roi: Sequence[int] = (128, 128, 128),
) -> CropPlan:
    if len(points) == 0:
        raise ValueError("no points to crop around")
    start, stop = [], []
    for axis in range(3):
        pad_voxels = round(pad / spacing[axis]) if spacing[axis] > 0 else int(pad)
        values = [int(p[axis]) for p in points]
        start.append(max(min(values) - pad_voxels, 0))
        stop.append(min(max(values) + pad_voxels, int(shape[axis]) - 1) + 1)
        if start[-1] >= stop[-1]:
            raise ValueError(f"points lie outside the image along axis {axis}: {values} vs size {shape[axis]}")
    return CropPlan(start=tuple(start), stop=tuple(stop), roi=tuple(int(r) for r in roi))  # type: ignore[arg-type]


def crop_affine(affine: np.ndarray, plan: CropPlan) -> np.ndarray:
    """The affine of the resampled crop: shifted to the crop start, spacing stretched by `scale`."""
    import numpy as np

    shift = np.eye(4)
    shift[:3, 3] = plan.start
    stretch = np.diag([*plan.scale, 1.0])
    return np.asarray(affine, dtype=float) @ shift @ stretch


def scale_points(points: Sequence[Point], plan: CropPlan) -> list[list[int]]:
    scaled = []
    for point in points:
        scaled.append([
            min(max(round((int(point[a]) - plan.start[a]) / plan.scale[a]), 0), plan.roi[a] - 1)
            for a in range(3)
        ])
    return scaled


def unscale_points(points: Sequence[Point], plan: CropPlan) -> list[list[int]]:
    """Map points from the resampled crop grid back to voxels of the full image (inverse of `scale_points`)."""
    return [
        [min(max(round(plan.start[a] + int(point[a]) * plan.scale[a]), plan.start[a]), plan.stop[a] - 1)
         for a in range(3)]
        for point in points
    ]


def _linear_axis(array: np.ndarray, axis: int, coords: np.ndarray) -> np.ndarray:
    import numpy as np

    size = array.shape[axis]
    coords = np.clip(coords, 0, size - 1)
    low = np.floor(coords).astype(np.intp)
    high = np.minimum(low + 1, size - 1)
    weight_shape = [1] * array.ndim
    weight_shape[axis] = len(coords)
    weight = (coords - low).reshape(weight_shape)
    return np.take(array, low, axis=axis) * (1 - weight) + np.take(array, high, axis=axis) * weight


def resample_linear(array: np.ndarray, shape: Sequence[int], scale: Sequence[float]) -> np.ndarray:
    """Trilinear resampling (separable: one axis at a time) onto `shape`; voxel j reads source j * scale."""
    import numpy as np

    out = np.asarray(array, dtype=np.float32)
    for axis in range(3):
        out = _linear_axis(out, axis, np.arange(shape[axis], dtype=np.float64) * scale[axis])
    return out


def resample_nearest(array: np.ndarray, shape: Sequence[int], scale: Sequence[float]) -> np.ndarray:
    """Nearest-neighbour resampling: voxel j reads source round(j * scale)."""
    import numpy as np

    index = [
        np.clip(np.rint(np.arange(shape[a]) * scale[a]).astype(np.intp), 0, array.shape[a] - 1) for a in range(3)
    ]
    return array[np.ix_(*index)]


def crop_and_resample(array: np.ndarray, plan: CropPlan) -> np.ndarray:
    region = array[tuple(slice(a, b) for a, b in zip(plan.start, plan.stop))]
    return resample_linear(region, plan.roi, plan.scale)


def paste_back(mask: np.ndarray, plan: CropPlan, full_shape: Sequence[int]) -> np.ndarray:
    """Resample a roi-sized mask onto the crop (nearest) and paste it into a zero volume of `full_shape`."""
    import numpy as np

    if tuple(mask.shape[:3]) != plan.roi:
        raise ValueError(f"server returned a {mask.shape} mask for a {plan.roi} crop")
    inverse = [1.0 / s for s in plan.scale]
    region = resample_nearest(np.asarray(mask), plan.size, inverse)
    full = np.zeros(tuple(full_shape[:3]), dtype=region.dtype)
    full[tuple(slice(a, b) for a, b in zip(plan.start, plan.stop))] = region
    return full

"""Transforms for click-driven models: DeepGrow 3D, DeepGrow 2D and DExtr3D.

Configs name them by short name (`DeepgrowCropd`) or as `aiaa.transforms.DeepgrowCropd`.

Points arrive as `[x, y, z]` 0-based voxel indices of the image the client sent (protocol sec. 7); the
image tensor carries that grid's affine in `meta[ORIGINAL_AFFINE]`.  Each crop transform samples a small
network grid from the image and records a `CropGeometry`: the homogeneous matrix mapping network-grid
voxel indices to input voxel indices.  Clicks are mapped into the network grid with its inverse, and
`PasteCropd` uses it to put the network's output back on the input grid, touching only the voxels the crop
covers (it also reports that box as the `crop` result param, end-exclusive, input index space).

* DeepGrow 3D (`DeepgrowCropd`): a `spatial_size` box at `pixdim` mm, RAS-aligned, centred on the
  foreground clicks' bounding box (or on the newest click when they do not fit).  Input voxel → world via
  the ORIGINAL affine, world → crop voxel via the crop's affine; the image is sampled from whatever grid the
  earlier pre-transforms left (Orientationd/Spacingd are allowed but not needed).
* DeepGrow 2D (`DeepgrowSliced`): the slice `z = current_point z` (else the clicks' z), resampled in-plane
  to `pixdim` mm around the clicks; the result is a full 3D mask with only that slice filled.
* DExtr3D (`ExtremePointsCropd`): the points' bounding box padded by `pad_mm` (per axis, in mm), clipped to
  the image, resampled to `spatial_size`; works for a full volume and for a client-cropped 128³ upload.

Guidance (`AddGuidanceChannelsd`): one channel per click list, each the voxel-wise maximum of Gaussians
`exp(-d²/2σ²)` (σ in network voxels) centred on the clicks, in [0, 1]; with `value_range=[-1, 1]` the channel
is min-max rescaled to [-1, 1] (the DExtr3D / MONAI AddExtremePointsChannel convention).  An empty click list
gives a channel at the range's minimum.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import MapTransform
from scipy import ndimage

from aiaa_server.errors import InvalidParams, ModelError
from aiaa_server.imaging.masks import foreground_box
from aiaa_server.imaging.sampling import reached_range, sample_grid
from aiaa_server.inference.tensors import ORIGINAL_AFFINE, ORIGINAL_SHAPE, plain_tensor

GEOMETRY_KEY = "aiaa_crop_geometry"
GUIDANCE_KEY = "aiaa_guidance"


@dataclass(frozen=True)
class CropGeometry:
    """How a network grid sits in the input: `matrix` maps grid voxel indices to input voxel indices
    (homogeneous, (n+1)×(n+1) for an n-D grid); 2D grids lie in the input slice `z = slice_index`."""

    matrix: np.ndarray
    grid_shape: tuple[int, ...]
    input_shape: tuple[int, int, int]
    slice_index: int | None = None

    @property
    def plane_shape(self) -> tuple[int, ...]:
        return self.input_shape[:2] if self.slice_index is not None else self.input_shape

    def to_grid(self, points: np.ndarray) -> np.ndarray:
        """Input voxel indices (N, n) → grid voxel coordinates (float)."""
        return apply_matrix(np.linalg.inv(self.matrix), points)

    def footprint(self) -> tuple[np.ndarray, np.ndarray]:
        """The input index box [lo, hi) covered by the grid, clipped to the input."""
        first, last = reached_range(self.matrix, [0.0] * len(self.grid_shape), [s - 1.0 for s in self.grid_shape])
        return np.maximum(first, 0), np.minimum(last + 1, np.asarray(self.plane_shape))


# --------------------------------------------------------------------------------------------------- #
# numeric helpers (also used by the demo models' training scripts, so training sees what serving sees)
# --------------------------------------------------------------------------------------------------- #


def apply_matrix(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    points = np.asarray(points, dtype=np.float64).reshape(-1, matrix.shape[0] - 1)
    return points @ matrix[:-1, :-1].T + matrix[:-1, -1]


def gaussian_heatmap(points: np.ndarray, shape: Sequence[int], sigma: float) -> np.ndarray:
    """Max over points of exp(-d²/2σ²) on a grid of `shape` (points in grid voxel coordinates)."""
    heat = np.zeros(tuple(shape), dtype=np.float32)
    radius = int(np.ceil(4 * sigma))
    for point in np.asarray(points, dtype=np.float64).reshape(-1, len(shape)):
        lo = np.maximum(np.floor(point).astype(int) - radius, 0)
        hi = np.minimum(np.ceil(point).astype(int) + radius + 1, shape)
        if np.any(hi <= lo):
            continue
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        d2 = sum(
            ((np.arange(a, b) - p) ** 2).reshape([-1 if i == axis else 1 for i in range(len(shape))])
            for axis, (a, b, p) in enumerate(zip(lo, hi, point))
        )
        np.maximum(heat[box], np.exp(-d2 / (2 * sigma * sigma)).astype(np.float32), out=heat[box])
    return heat


def guidance_channel(points: np.ndarray, shape: Sequence[int], sigma: float,
                     value_range: Sequence[float] = (0.0, 1.0)) -> np.ndarray:
    heat = gaussian_heatmap(points, shape, sigma)
    low, high = float(value_range[0]), float(value_range[1])
    if (low, high) == (0.0, 1.0):
        return heat
    span = float(heat.max() - heat.min())
    unit = (heat - heat.min()) / span if span > 0 else np.zeros_like(heat)
    return (low + (high - low) * unit).astype(np.float32)


def spacing_of(affine: np.ndarray) -> np.ndarray:
    return np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)


def deepgrow_crop_affine(centre_world: np.ndarray, spatial_size: Sequence[int], pixdim: Sequence[float]) -> np.ndarray:
    """RAS-aligned affine of a `spatial_size` grid at `pixdim` mm whose centre is `centre_world`."""
    affine = np.eye(4)
    affine[:3, :3] = np.diag(np.asarray(pixdim, dtype=np.float64))
    affine[:3, 3] = centre_world - affine[:3, :3] @ ((np.asarray(spatial_size) - 1) / 2.0)
    return affine


def deepgrow_centre(foreground: np.ndarray, background: np.ndarray, current: np.ndarray | None,
                    extent_mm: np.ndarray, margin_mm: float = 16.0) -> np.ndarray:
    """World centre of the DeepGrow 3D crop: the foreground clicks' box centre (all clicks when there is no
    foreground click); the newest click when the box does not fit in the crop with a margin."""
    clicks = foreground if len(foreground) else np.concatenate([background, current if current is not None
                                                                 else np.zeros((0, 3))])
    lo, hi = clicks.min(axis=0), clicks.max(axis=0)
    centre = (lo + hi) / 2.0
    if current is not None and np.any(np.abs(current[0] - centre) > extent_mm / 2.0 - margin_mm):
        return current[0]
    return centre


def dextr_box(points: np.ndarray, spacing: np.ndarray, shape: Sequence[int], pad_mm: float
              ) -> tuple[np.ndarray, np.ndarray]:
    """Index box [lo, hi] (inclusive) of the points padded by `pad_mm` per axis, clipped to the image."""
    pad = np.ceil(pad_mm / spacing)
    lo = np.maximum(points.min(axis=0) - pad, 0)
    hi = np.minimum(points.max(axis=0) + pad, np.asarray(shape) - 1)
    return lo, hi


def box_matrix(lo: np.ndarray, hi: np.ndarray, grid_shape: Sequence[int]) -> np.ndarray:
    """Grid voxel → input voxel for a grid spanning the inclusive index box [lo, hi] (corner-aligned)."""
    n = len(grid_shape)
    matrix = np.eye(n + 1)
    scale = (np.asarray(hi, dtype=np.float64) - lo) / np.maximum(np.asarray(grid_shape) - 1, 1)
    matrix[:n, :n] = np.diag(scale)
    matrix[:n, n] = lo
    return matrix


# --------------------------------------------------------------------------------------------------- #
# helpers for the transforms
# --------------------------------------------------------------------------------------------------- #


def _original_grid(image: Any, key: str) -> tuple[np.ndarray, tuple[int, int, int]]:
    if not isinstance(image, MetaTensor) or ORIGINAL_AFFINE not in image.meta:
        raise ModelError(f"{key!r} does not carry the input geometry; load it with LoadImaged first")
    return np.asarray(image.meta[ORIGINAL_AFFINE], dtype=np.float64), tuple(image.meta[ORIGINAL_SHAPE])  # type: ignore[return-value]


def _points(data: dict[str, Any], key: str, shape: Sequence[int]) -> np.ndarray:
    """`data[key]` as an (N, 3) array of input voxel indices; 400 naming the first point outside the image."""
    raw = data.get(key) or []
    if raw and isinstance(raw[0], (int, float)):
        raw = [raw]
    if any(not isinstance(p, (list, tuple, np.ndarray)) or len(p) != 3 for p in raw):
        raise InvalidParams(f"{key}: points must be [x, y, z] voxel indices of the 3D image, got {raw!r}", key=key)
    points = np.asarray(raw, dtype=np.float64).reshape(-1, 3) if len(raw) else np.zeros((0, 3))
    for point in points:
        if np.any(point < 0) or np.any(point > np.asarray(shape) - 1):
            raise InvalidParams(
                f"{key}: point {[int(p) for p in point]} is outside the image (shape {list(shape)}); points are "
                "0-based [x, y, z] voxel indices of the uploaded image",
                key=key, point=[int(p) for p in point], shape=list(shape),
            )
    return points


def _source(image: Any) -> torch.Tensor:
    tensor = plain_tensor(image)
    return tensor if tensor.ndim == 4 else tensor[None]


def _cropped_image(values: torch.Tensor, image: Any, affine: np.ndarray | None) -> MetaTensor:
    meta = dict(image.meta) if isinstance(image, MetaTensor) else {}
    meta.pop("affine", None)
    out = MetaTensor(values, meta=meta)
    if affine is not None:
        out.affine = torch.as_tensor(affine, dtype=torch.float64)
    return out


# --------------------------------------------------------------------------------------------------- #
# pre-transforms
# --------------------------------------------------------------------------------------------------- #


class _ClickCropd(MapTransform):
    """Common arguments of the click-centred crops: output size, grid spacing, and the data keys used."""

    default_size: tuple[int, ...] = ()
    default_pixdim: tuple[float, ...] = ()

    def __init__(self, keys: Any = "image", spatial_size: Sequence[int] | None = None,
                 pixdim: Sequence[float] | None = None, foreground: str = "foreground",
                 background: str = "background", current_point: str = "current_point",
                 guidance: str = GUIDANCE_KEY, geometry: str = GEOMETRY_KEY, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.spatial_size = tuple(int(s) for s in (spatial_size or self.default_size))
        self.pixdim = np.asarray(pixdim or self.default_pixdim, dtype=np.float64)
        self.keys_clicks = (foreground, background, current_point)
        self.guidance = guidance
        self.geometry = geometry


class DeepgrowCropd(_ClickCropd):
    """DeepGrow 3D: sample a fixed-size RAS grid at `pixdim` mm around the clicks; map the clicks into it."""

    default_size = (96, 96, 96)
    default_pixdim = (2.0, 2.0, 2.0)

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        d = dict(data)
        key = self.first_key(d)
        original_affine, original_shape = _original_grid(d[key], key)
        fg, bg, current = (_points(d, k, original_shape) for k in self.keys_clicks)
        if not len(fg) and not len(bg) and not len(current):
            raise InvalidParams("DeepGrow needs at least one click in foreground, background or current_point")
        to_world = lambda p: apply_matrix(original_affine, p)  # noqa: E731
        centre = deepgrow_centre(to_world(fg), to_world(bg), to_world(current[-1:]) if len(current) else None,
                                 self.pixdim * np.asarray(self.spatial_size))
        crop_affine = deepgrow_crop_affine(centre, self.spatial_size, self.pixdim)
        geometry = CropGeometry(np.linalg.inv(original_affine) @ crop_affine, self.spatial_size, original_shape)
        current_affine = np.asarray(d[key].affine, dtype=np.float64)
        values = sample_grid(_source(d[key]), np.linalg.inv(current_affine) @ crop_affine, self.spatial_size)
        d[key] = _cropped_image(values, d[key], crop_affine)
        d[self.geometry] = geometry
        d[self.guidance] = {"foreground": geometry.to_grid(fg), "background": geometry.to_grid(bg)}
        return d


class DeepgrowSliced(_ClickCropd):
    """DeepGrow 2D: the slice z of the clicks, resampled in-plane to `pixdim` mm, `spatial_size` around them.

    Must run on the image as loaded (before any resampling): the slice is an input-grid slice."""

    default_size = (128, 128)
    default_pixdim = (1.5, 1.5)

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        d = dict(data)
        key = self.first_key(d)
        original_affine, original_shape = _original_grid(d[key], key)
        source = _source(d[key])
        if tuple(source.shape[1:]) != tuple(original_shape):
            raise ModelError("DeepgrowSliced must come before any resampling pre-transform")
        fg, bg, current = (_points(d, k, original_shape) for k in self.keys_clicks)
        z = slice_of_clicks(fg, bg, current)
        fg, bg, current = (c[c[:, 2] == z] for c in (fg, bg, current))
        clicks = fg if len(fg) else np.concatenate([bg, current])
        scale = self.pixdim / spacing_of(original_affine)[:2]
        centre = (clicks[:, :2].min(axis=0) + clicks[:, :2].max(axis=0)) / 2.0
        matrix = np.eye(3)
        matrix[:2, :2] = np.diag(scale)
        matrix[:2, 2] = centre - scale * (np.asarray(self.spatial_size) - 1) / 2.0
        geometry = CropGeometry(matrix, self.spatial_size, original_shape, slice_index=z)
        values = sample_grid(source[:, :, :, z], matrix, self.spatial_size)
        d[key] = _cropped_image(values, d[key], None)
        d[self.geometry] = geometry
        d[self.guidance] = {"foreground": geometry.to_grid(fg[:, :2]), "background": geometry.to_grid(bg[:, :2])}
        return d


def slice_of_clicks(fg: np.ndarray, bg: np.ndarray, current: np.ndarray) -> int:
    """The slice a 2D DeepGrow call works on: current_point z, else the newest foreground/background click z."""
    for clicks in (current, fg, bg):
        if len(clicks):
            return int(clicks[-1, 2])
    raise InvalidParams("DeepGrow needs at least one click in foreground, background or current_point")


class ExtremePointsCropd(MapTransform):
    """DExtr3D: crop the points' box padded by `pad_mm` (mm, per axis), resampled to `spatial_size`."""

    def __init__(self, keys: Any = "image", points: str = "points", pad_mm: float = 20.0,
                 spatial_size: Sequence[int] = (64, 64, 64), guidance: str = GUIDANCE_KEY,
                 geometry: str = GEOMETRY_KEY, allow_missing_keys: bool = False, **_ignored: Any) -> None:
        super().__init__(keys, allow_missing_keys)
        self.points = points
        self.pad_mm = float(pad_mm)
        self.spatial_size = tuple(int(s) for s in spatial_size)
        self.guidance = guidance
        self.geometry = geometry

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        d = dict(data)
        key = self.first_key(d)
        original_affine, original_shape = _original_grid(d[key], key)
        source = _source(d[key])
        if tuple(source.shape[1:]) != tuple(original_shape):
            raise ModelError("ExtremePointsCropd must come before any resampling pre-transform")
        points = _points(d, self.points, original_shape)
        lo, hi = dextr_box(points, spacing_of(original_affine), original_shape, self.pad_mm)
        matrix = box_matrix(lo, hi, self.spatial_size)
        geometry = CropGeometry(matrix, self.spatial_size, original_shape)
        d[key] = _cropped_image(sample_grid(source, matrix, self.spatial_size), d[key], None)
        d[self.geometry] = geometry
        d[self.guidance] = {"points": geometry.to_grid(points)}
        return d


class AddGuidanceChannelsd(MapTransform):
    """Append one Gaussian heat-map channel per click list in `data[guidance]` (see the module doc)."""

    def __init__(self, keys: Any = "image", guidance: str = GUIDANCE_KEY,
                 channels: Sequence[str] = ("foreground", "background"), sigma: float = 2.0,
                 value_range: Sequence[float] = (0.0, 1.0), allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.guidance = guidance
        self.channels = list(channels)
        self.sigma = float(sigma)
        self.value_range = tuple(float(v) for v in value_range)

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        d = dict(data)
        clicks = d[self.guidance]
        for key in self.key_iterator(d):
            image = d[key]
            shape = tuple(image.shape[1:])
            maps = [guidance_channel(np.asarray(clicks.get(c, [])), shape, self.sigma, self.value_range)
                    for c in self.channels]
            stacked = torch.cat([torch.as_tensor(image).float().as_subclass(torch.Tensor),
                                 torch.from_numpy(np.stack(maps))], dim=0)
            d[key] = _cropped_image(stacked, image, np.asarray(image.affine) if isinstance(image, MetaTensor) else None)
        return d


# --------------------------------------------------------------------------------------------------- #
# post-transform
# --------------------------------------------------------------------------------------------------- #


def paste_to_input(probability: torch.Tensor, geometry: CropGeometry, threshold: float = 0.5
                   ) -> tuple[np.ndarray, list[list[int]]]:
    """Put a (1, *grid) probability map back on the input grid: uint8 mask of the input shape (Fortran
    order, as NIfTI stores it, so encoding it is a plain copy), and the covered input box
    `[[x0, x1], [y0, y1], [z0, z1]]` (end-exclusive)."""
    lo, hi = geometry.footprint()
    mask = np.zeros(geometry.input_shape, dtype=np.uint8, order="F")
    if np.any(hi <= lo):
        return mask, [[0, 0]] * 3
    if geometry.slice_index is None:
        crop = [[int(a), int(b)] for a, b in zip(lo, hi)]
    else:
        z = geometry.slice_index
        crop = [[int(lo[0]), int(hi[0])], [int(lo[1]), int(hi[1])], [z, z + 1]]
    box = _positive_box(probability[0], geometry, threshold, lo, hi)
    if box is None:
        return mask, crop
    box_lo, box_hi = box
    box_shape = tuple(int(b - a) for a, b in zip(box_lo, box_hi))
    n = len(box_shape)
    to_box = np.eye(n + 1)
    to_box[:n, n] = box_lo
    values = sample_grid(probability.float(), np.linalg.inv(geometry.matrix) @ to_box, box_shape,
                         padding_mode="zeros")[0]
    inside = (values >= threshold).numpy()
    region = tuple(slice(int(a), int(b)) for a, b in zip(box_lo, box_hi))
    if geometry.slice_index is not None:
        region = (*region, geometry.slice_index)
    mask[region] = inside
    return mask, crop


def _positive_box(probability: torch.Tensor, geometry: CropGeometry, threshold: float, lo: np.ndarray,
                  hi: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """The input box [lo, hi) outside which the interpolated probability is below `threshold`, or None when
    it is below everywhere.  Linear interpolation is a weighted mean of the neighbouring grid voxels, so an
    input voxel can only reach the threshold within one grid voxel of a grid voxel that does."""
    if threshold <= 0:
        return lo, hi
    above = foreground_box((probability >= threshold).numpy())
    if above is None:
        return None
    first, last = reached_range(geometry.matrix, [b.start - 1.0 for b in above], [b.stop for b in above])
    box_lo = np.maximum(first, lo)
    box_hi = np.minimum(last + 1, hi)
    if np.any(box_hi <= box_lo):
        return None
    return box_lo, box_hi


class PasteCropd(MapTransform):
    """Threshold the network output (probabilities) and paste it into a zero mask on the input grid;
    `result[crop]` = the input box the result covers (DeepGrow's optional `crop` param)."""

    def __init__(self, keys: Any = "pred", geometry: str = GEOMETRY_KEY, threshold: float = 0.5,
                 result: str = "result", crop: str | None = "crop", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.geometry = geometry
        self.threshold = float(threshold)
        self.result = result
        self.crop = crop

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        d = dict(data)
        geometry: CropGeometry = d[self.geometry]
        for key in self.key_iterator(d):
            value = d[key]
            tensor = plain_tensor(value)
            if tensor.ndim == len(geometry.grid_shape):
                tensor = tensor[None]
            mask, crop = paste_to_input(tensor[:1], geometry, self.threshold)
            d[key] = mask
            if self.crop:
                d.setdefault(self.result, {})[self.crop] = crop
        return d


class KeepClickedComponentsd(MapTransform):
    """Keep only the connected components that contain a foreground click (when any click lands in one);
    removes disconnected false positives away from what the user clicked.

    Placed before `PasteCropd` it works on the network grid (much smaller than the input, so it is the
    cheap place on the click path): components of `pred >= threshold`, clicks from the crop's guidance, and
    the probabilities of dropped components are zeroed.  Placed after it, it works on the uint8 mask on the
    input grid with the input-space `foreground` clicks."""

    def __init__(self, keys: Any = "pred", foreground: str = "foreground", threshold: float = 0.5,
                 guidance: str = GUIDANCE_KEY, geometry: str = GEOMETRY_KEY, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.foreground = foreground
        self.threshold = float(threshold)
        self.guidance = guidance
        self.geometry = geometry

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        d = dict(data)
        geometry: CropGeometry | None = d.get(self.geometry)
        for key in self.key_iterator(d):
            value = d[key]
            on_grid = geometry is not None and (value.ndim, *value.shape[1:]) == (
                len(geometry.grid_shape) + 1, *geometry.grid_shape)  # (1, *grid): before PasteCropd
            if on_grid:
                clicks = np.rint(np.asarray(d[self.guidance].get("foreground", []))).astype(int)
                probability = plain_tensor(value)
                dropped = _unclicked_components(probability[0].numpy() >= self.threshold, clicks)
                if dropped is not None:
                    box, where = dropped
                    kept = probability.clone()
                    kept[0][box][torch.from_numpy(where)] = 0.0
                    d[key] = MetaTensor(kept, meta=dict(value.meta)) if isinstance(value, MetaTensor) else kept
            else:
                clicks = np.asarray(d.get(self.foreground) or [], dtype=int).reshape(-1, 3)
                mask = np.asarray(value)
                if mask.ndim != 3:
                    continue
                dropped = _unclicked_components(mask > 0, clicks)
                if dropped is not None:
                    box, where = dropped
                    kept = mask.copy(order="K")
                    kept[box][where] = 0
                    d[key] = kept
        return d


def _unclicked_components(foreground: np.ndarray, clicks: np.ndarray
                          ) -> tuple[tuple[slice, ...], np.ndarray] | None:
    """(box, boolean map within the box) of the foreground components no click lands in; None when there is
    nothing to drop (no foreground, no click inside it, or every component clicked)."""
    clicks = clicks.reshape(-1, foreground.ndim)
    if not len(clicks):
        return None
    box = foreground_box(foreground)
    if box is None:
        return None
    components, count = ndimage.label(foreground[box])
    local = clicks - np.array([b.start for b in box])
    inside = np.all((local >= 0) & (local < np.array(components.shape)), axis=1)
    hit = {int(components[tuple(c)]) for c in local[inside]} - {0}
    if not hit or len(hit) == count:
        return None
    return box, (components > 0) & ~np.isin(components, sorted(hit))

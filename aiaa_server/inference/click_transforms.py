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

Clicks come from the request's `DeepgrowClicks` / `ExtremePoints` (parsed once, see `inference.interactive`)
when the pipeline data carries them; without them (training scripts, tests) from the transform's data keys.

Guidance (`AddGuidanceChannelsd`): one channel per click list, each the voxel-wise maximum of Gaussians
`exp(-d²/2σ²)` (σ in network voxels) centred on the clicks, in [0, 1]; with `value_range=[-1, 1]` the channel
is min-max rescaled to [-1, 1] (the DExtr3D / MONAI AddExtremePointsChannel convention).  An empty click list
gives a channel at the range's minimum.

The geometry and heat-map helpers live in `click_geometry`, the result helpers in `click_masks`; they are
re-exported here for the training scripts.  The transform classes must be defined in this module: the MMAR
allow-list (`mmar.safety`) accepts `aiaa.transforms.*` classes defined here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import MapTransform

from aiaa_server.errors import InvalidParams, ModelError
from aiaa_server.imaging.sampling import sample_grid
from aiaa_server.inference.click_geometry import (
    CropGeometry,
    CropPass,
    apply_matrix,
    box_matrix,
    deepgrow_centre,
    deepgrow_crop_affine,
    dextr_box,
    gaussian_heatmap,
    guidance_channel,
    keep_clicks_inside,
    slice_of_clicks,
    spacing_of,
)
from aiaa_server.inference.click_masks import paste_to_input, unclicked_components
from aiaa_server.inference.interactive import (
    CLICKS_KEY,
    DEEPGROW_KEYS,
    EXTREME_POINTS_KEY,
    DeepgrowClicks,
    ExtremePoints,
    Points,
)
from aiaa_server.inference.tensors import ORIGINAL_AFFINE, ORIGINAL_SHAPE, plain_tensor

__all__ = [
    "CROP_PASS_KEY", "GEOMETRY_KEY", "GUIDANCE_KEY", "AddGuidanceChannelsd", "CropGeometry", "CropPass",
    "DeepgrowCropd", "DeepgrowSliced", "ExtremePointsCropd", "KeepClickedComponentsd", "PasteCropd", "apply_matrix",
    "box_matrix", "deepgrow_centre", "deepgrow_crop_affine", "dextr_box", "gaussian_heatmap", "guidance_channel",
    "keep_clicks_inside", "paste_to_input", "sample_grid", "slice_of_clicks", "spacing_of",
]

GEOMETRY_KEY = "aiaa_crop_geometry"
GUIDANCE_KEY = "aiaa_guidance"
CROP_PASS_KEY = "aiaa_crop_pass"  # a CropPass: set by `crop_growth` for its coarser passes only


# --------------------------------------------------------------------------------------------------- #
# helpers for the transforms
# --------------------------------------------------------------------------------------------------- #


def _original_grid(image: Any, key: str) -> tuple[np.ndarray, tuple[int, int, int]]:
    if not isinstance(image, MetaTensor) or ORIGINAL_AFFINE not in image.meta:
        raise ModelError(f"{key!r} does not carry the input geometry; load it with LoadImaged first")
    return np.asarray(image.meta[ORIGINAL_AFFINE], dtype=np.float64), tuple(image.meta[ORIGINAL_SHAPE])  # type: ignore[return-value]


def _deepgrow_clicks(data: dict[str, Any], keys: Sequence[str]) -> DeepgrowClicks:
    """The request's parsed clicks when the transform reads the protocol's keys; else (training scripts, tests,
    configs naming other keys) the lists `data` holds under `keys`."""
    parsed = data.get(CLICKS_KEY)
    if isinstance(parsed, DeepgrowClicks) and tuple(keys) == DEEPGROW_KEYS:
        return parsed
    return DeepgrowClicks(*(data.get(key) or [] for key in keys))


def _extreme_points(data: dict[str, Any], key: str) -> Points:
    """Like `_deepgrow_clicks`, for the DExtr3D points (only the request's are known to be at least 6)."""
    parsed = data.get(CLICKS_KEY)
    if isinstance(parsed, ExtremePoints) and key == EXTREME_POINTS_KEY:
        return parsed.points
    return data.get(key) or []


def _voxel_points(points: Points, key: str, shape: Sequence[int]) -> np.ndarray:
    """`points` (of param `key`) as an (N, 3) array of input voxel indices; 400 naming the first point outside
    the image."""
    raw: Any = points
    if len(raw) and isinstance(raw[0], (int, float)):  # one flat point, as training scripts may pass it
        raw = [raw]
    if any(not isinstance(p, (list, tuple, np.ndarray)) or len(p) != 3 for p in raw):
        raise InvalidParams(f"{key}: points must be [x, y, z] voxel indices of the 3D image, got {raw!r}", key=key)
    array = np.asarray(raw, dtype=np.float64).reshape(-1, 3) if len(raw) else np.zeros((0, 3))
    for point in array:
        if np.any(point < 0) or np.any(point > np.asarray(shape) - 1):
            raise InvalidParams(
                f"{key}: point {[int(p) for p in point]} is outside the image (shape {list(shape)}); points are "
                "0-based [x, y, z] voxel indices of the uploaded image",
                key=key, point=[int(p) for p in point], shape=list(shape),
            )
    return array


def _click_arrays(data: dict[str, Any], keys: Sequence[str], shape: Sequence[int]
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(foreground, background, current_point) as (N, 3) input voxel indices; at least one click in all."""
    clicks = _deepgrow_clicks(data, keys)
    lists = (clicks.foreground, clicks.background, clicks.current_point)
    fg, bg, current = (_voxel_points(points, key, shape) for points, key in zip(lists, keys))
    return fg, bg, current


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
    """DeepGrow 3D: sample a fixed-size RAS grid at `pixdim` mm around the clicks; map the clicks into it.

    With a `CropPass` under `CROP_PASS_KEY` (a coarser pass of `inference.crop_growth`) the grid is sampled at
    `pixdim * scale` around the pass's centre, kept so that the clicks stay inside."""

    default_size = (96, 96, 96)
    default_pixdim = (2.0, 2.0, 2.0)

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        d = dict(data)
        key = self.first_key(d)
        original_affine, original_shape = _original_grid(d[key], key)
        fg, bg, current = _click_arrays(d, self.keys_clicks, original_shape)
        fg_world, bg_world, current_world = (apply_matrix(original_affine, p) for p in (fg, bg, current[-1:]))
        crop_pass: CropPass | None = d.pop(CROP_PASS_KEY, None)
        pixdim = self.pixdim * (crop_pass.scale if crop_pass is not None else 1.0)
        extent = pixdim * np.asarray(self.spatial_size)
        centre = deepgrow_centre(fg_world, bg_world, current_world if len(current) else None, extent)
        if crop_pass is not None:
            clicks = fg_world if len(fg_world) else np.concatenate([bg_world, current_world])
            centre = keep_clicks_inside(apply_matrix(original_affine, crop_pass.centre)[0], clicks, extent)
        crop_affine = deepgrow_crop_affine(centre, self.spatial_size, pixdim)
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
        fg, bg, current = _click_arrays(d, self.keys_clicks, original_shape)
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
        points = _voxel_points(_extreme_points(d, self.points), self.points, original_shape)
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
                dropped = unclicked_components(probability[0].numpy() >= self.threshold, clicks)
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
                dropped = unclicked_components(mask > 0, clicks)
                if dropped is not None:
                    box, where = dropped
                    kept = mask.copy(order="K")
                    kept[box][where] = 0
                    d[key] = kept
        return d

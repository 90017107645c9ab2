"""A DeepGrow 3D crop that grows: coarser passes while the mask reaches the crop's faces.

DeepGrow 3D (`DeepgrowCropd`) samples a fixed `spatial_size` grid at `pixdim` mm around the clicks (96³ at
2 mm: 192 mm), so a structure larger than that (a liver, a lung, a whole brain) comes back cut at the crop's
faces.  With `inference.crop_growth` (`CropGrowthConfig`) in the model's config, a click runs up to
`max_passes` passes:

1. pass 1 is the model's usual pass (the same crop, network and result as without crop growth);
2. when the thresholded network output (the probabilities `PasteCropd` thresholds, after the post-transforms
   before it) has a voxel within `border_voxels` of a crop face, at a place where that face lies inside the
   input volume (not beyond the volume's edge, where the structure simply ends), the next pass runs the
   pre-transforms from `DeepgrowCropd` on with the grid spacing `zoom` times coarser (same voxel count, so
   `zoom` times the extent, and the same network cost), centred on the mask's bounding box centre (moved as
   little as needed to keep the clicks inside, see `click_geometry.keep_clicks_inside`);
3. it stops when the mask no longer reaches an inner face, or after `max_passes`.

The passes are combined on the input grid: each pass's result wins where its grid covers the input (the
finest pass inside its crop), the coarser ones fill the rest.  A model's `KeepClickedComponentsd` on the
network grid decides, per pass, which mask is checked against the faces and centres the next pass; but when
several passes run, their results are pasted without it and the rule is applied once to the combined mask
(with the input-space foreground clicks): a part that only joins the clicked structure outside a finer crop
(the second arm of a U) is kept, and a piece that touches no click once the passes are combined is dropped.
The result JSON carries `crop_passes` (how many passes ran), and `crop` becomes the input box all passes
cover.  One pass gives exactly the result the model gives without `crop_growth` (plus `crop_passes`).

Each pass costs one network forward on the same grid shape plus one paste on the input grid; the passes,
the zoom and the border come from the (validated) config.  Shapes: network grids are (C, X, Y, Z), input
masks (X, Y, Z) in the input's voxel index order [x, y, z].
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from aiaa_server.errors import InvalidModel
from aiaa_server.imaging.masks import foreground_box
from aiaa_server.imaging.sampling import sample_grid
from aiaa_server.inference.click_geometry import CropGeometry, CropPass, apply_matrix
from aiaa_server.inference.click_transforms import (
    CROP_PASS_KEY,
    DeepgrowCropd,
    KeepClickedComponentsd,
    PasteCropd,
)
from aiaa_server.inference.tensors import plain_tensor
from aiaa_server.mmar.config import AIAAConfig, CropGrowthConfig

log = logging.getLogger(__name__)

PASSES_KEY = "crop_passes"  # in the result JSON: how many passes a click ran

Transform = Callable[[dict[str, Any]], dict[str, Any]]
Stage = Callable[[Sequence[Transform], dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class Stages:
    """How the pipeline runs transforms and its network (with its error mapping), so this module needs no
    pipeline: `pre` / `post` apply transforms in order, `infer` runs the network on the data."""

    pre: Stage
    infer: Transform
    post: Stage


@dataclass(frozen=True)
class _Part:
    """A finer pass's result where its grid covers the input: the input index box, the mask within it, and
    (for an oblique grid only) which voxels of the box the grid covers."""

    box: tuple[slice, ...]
    mask: np.ndarray
    covered: np.ndarray | None


def touches_inner_face(mask: np.ndarray, geometry: CropGeometry, border: int) -> bool:
    """Whether the mask reaches a face of its grid where that face lies inside the input volume.

    Args:
        mask: (X, Y, Z) boolean mask on the network grid of `geometry`.
        geometry: where the grid sits in the input.
        border: a voxel this close to a face (network voxels) reaches it.

    Returns:
        True when a foreground voxel within `border` of a face, projected onto that face, maps to input
        coordinates at least half a voxel inside the input's outermost voxel centres on every axis.
    """
    shape = mask.shape
    limit = np.asarray(geometry.input_shape, dtype=np.float64) - 1.5
    for axis in range(mask.ndim):
        for face in (0, shape[axis] - 1):
            slab = [slice(None)] * mask.ndim
            slab[axis] = slice(0, border) if face == 0 else slice(shape[axis] - border, None)
            points = np.argwhere(mask[tuple(slab)]).astype(np.float64)
            if not len(points):
                continue
            points[:, axis] = face
            mapped = apply_matrix(geometry.matrix, np.unique(points, axis=0))
            if np.any(np.all((mapped >= 0.5) & (mapped <= limit), axis=1)):
                return True
    return False


def mask_centre(mask: np.ndarray, geometry: CropGeometry) -> np.ndarray:
    """(3,) input voxel coordinates of the centre of the bounding box of `mask` ((X, Y, Z) on the grid of
    `geometry`, not empty)."""
    box = foreground_box(mask)
    assert box is not None
    centre = np.array([(b.start + b.stop - 1) / 2.0 for b in box])
    return apply_matrix(geometry.matrix, centre)[0]


def covered_part(mask: np.ndarray, geometry: CropGeometry) -> _Part | None:
    """The part of a pasted input mask that its grid covers: input voxels whose grid coordinates lie within
    the grid's outermost voxel centres (where pasting interpolated network voxels only, no padding).

    Args:
        mask: (X, Y, Z) the pass's result on the input grid.
        geometry: the pass's grid.

    Returns:
        the part (a box, exact when the grid's axes follow the input's, else with a `covered` map); None
        when the grid covers no input voxel.
    """
    m = np.asarray(geometry.matrix, dtype=np.float64)
    linear = m[:3, :3]
    last = np.asarray(geometry.grid_shape, dtype=np.float64) - 1
    if np.count_nonzero(np.abs(linear) > 1e-9 * np.abs(linear).max()) == 3:  # a scaled axis permutation
        ends = np.stack([m[:3, 3], linear @ last + m[:3, 3]])
        lo = np.maximum(np.ceil(ends.min(axis=0) - 1e-6), 0).astype(int)
        hi = np.minimum(np.floor(ends.max(axis=0) + 1e-6) + 1, geometry.input_shape).astype(int)
        if np.any(hi <= lo):
            return None
        box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        return _Part(box, np.array(mask[box]), None)
    lo, hi = geometry.footprint()
    if np.any(hi <= lo):
        return None
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    to_box = np.eye(4)
    to_box[:3, 3] = lo
    ones = torch.ones((1, *geometry.grid_shape))
    weight = sample_grid(ones, np.linalg.inv(m) @ to_box, tuple(int(b - a) for a, b in zip(lo, hi)),
                         padding_mode="zeros")[0]
    return _Part(box, np.array(mask[box]), (weight >= 1.0 - 1e-4).numpy())


@dataclass(frozen=True)
class CropGrowth:
    """A DeepGrow 3D model's growing crop, built once per model by `build_crop_growth`.

    Attributes:
        settings: the config's `inference.crop_growth`.
        before_crop: the request's pre-transforms before `DeepgrowCropd` (run once per click).
        from_crop: `DeepgrowCropd` and the pre-transforms after it (run per pass).
        before_paste: the post-transforms before `PasteCropd` (per pass), e.g. Activationsd and
            KeepClickedComponentsd.
        after_paste: the post-transforms after it (once, on the combined mask).
        crop, paste: the model's `DeepgrowCropd` and `PasteCropd`.
        keep: the `KeepClickedComponentsd` in `before_paste`, applied to the combined mask instead of the
            pasted passes when several run; None: none there (one after `PasteCropd` runs on the combined
            mask anyway).
        output_key: the network output's data key.
    """

    settings: CropGrowthConfig
    before_crop: list[Transform]
    from_crop: list[Transform]
    before_paste: list[Transform]
    after_paste: list[Transform]
    crop: DeepgrowCropd
    paste: PasteCropd
    keep: KeepClickedComponentsd | None
    output_key: str

    def run(self, data: dict[str, Any], stages: Stages) -> dict[str, Any]:
        """One click: the passes on growing crops, combined; returns the data for the writer.

        Args:
            data: the request's data after the cached image-only pre-transforms.
            stages: how to run transforms and the network.

        Returns:
            the first pass's data with `output_key` = the combined (X, Y, Z) uint8 mask on the input grid, and
            the result JSON's `crop` (the box all passes cover) and `crop_passes`.
        """
        base = stages.pre(self.before_crop, data)
        first: dict[str, Any] | None = None
        parts: list[_Part | None] = []
        boxes: list[tuple[np.ndarray, np.ndarray]] = []
        centre: np.ndarray | None = None
        settings = self.settings
        for index in range(settings.max_passes):
            d = dict(base)
            if centre is not None:
                d[CROP_PASS_KEY] = CropPass(settings.zoom ** index, centre)
            output = stages.infer(stages.pre(self.from_crop, d))
            d = stages.post(self.before_paste, output)
            geometry: CropGeometry = d[self.crop.geometry]
            grid_mask = self._grid_mask(d[self.output_key], geometry)
            grow = index + 1 < settings.max_passes and touches_inner_face(grid_mask, geometry, settings.border_voxels)
            log.debug("crop growth pass %d (x%.3g spacing): mask reaches an inner face: %s", index + 1,
                      settings.zoom ** index, grow)
            if grow:
                centre = mask_centre(grid_mask, geometry)
            if self.keep is not None and (index > 0 or grow):  # several passes: the rule runs on the combined mask
                d = stages.post([t for t in self.before_paste if t is not self.keep], output)
            d = stages.post([self.paste], d)
            boxes.append(geometry.footprint())
            if first is None:
                first = d
            if not grow:
                break
            parts.append(covered_part(np.asarray(d[self.output_key]), geometry))
        assert first is not None
        combined = np.asarray(d[self.output_key])
        for part in reversed(parts):  # coarse to fine: the finest pass wins where it covers the input
            if part is None:
                continue
            if part.covered is None:
                combined[part.box] = part.mask
            else:
                combined[part.box][part.covered] = part.mask[part.covered]
        out = dict(first)
        out[self.output_key] = combined
        if parts and self.keep is not None:
            out = stages.post([self.keep], out)
        result = dict(out.get(self.paste.result) or {})
        if self.paste.crop and len(boxes) > 1:
            lo = np.min([b[0] for b in boxes], axis=0)
            hi = np.max([b[1] for b in boxes], axis=0)
            result[self.paste.crop] = [[int(a), int(b)] for a, b in zip(lo, hi)]
        result[PASSES_KEY] = len(boxes)
        out[self.paste.result] = result
        return stages.post(self.after_paste, out)

    def _grid_mask(self, value: Any, geometry: CropGeometry) -> np.ndarray:
        tensor = plain_tensor(value)
        if tensor.ndim > len(geometry.grid_shape):
            tensor = tensor[0]
        return (tensor >= self.paste.threshold).numpy()


def _only(transforms: Sequence[Transform], kind: type, where: str) -> int:
    found = [i for i, t in enumerate(transforms) if isinstance(t, kind)]
    if len(found) != 1:
        raise InvalidModel(f"inference.crop_growth needs exactly one {kind.__name__} in {where}, found {len(found)}")
    return found[0]


def build_crop_growth(config: AIAAConfig, pre: Sequence[Transform], post: Sequence[Transform], cache_index: int
                      ) -> CropGrowth | None:
    """The growing crop of a model whose config has `inference.crop_growth` (None without it).

    Args:
        config: the model's config (already validated: crop growth only on DeepGrow 3D models).
        pre, post: the model's built pre- and post-transforms.
        cache_index: how many leading pre-transforms are cached per session (`cache_until`).

    Raises:
        InvalidModel: (422) not exactly one DeepgrowCropd (after the cached pre-transforms) and one PasteCropd
            (of the network output), or a `border_voxels` of half the crop's smallest size or more.
    """
    settings = config.inference.crop_growth
    if settings is None:
        return None
    crop_index = _only(pre, DeepgrowCropd, "pre_transforms")
    paste_index = _only(post, PasteCropd, "post_transforms")
    crop, paste = pre[crop_index], post[paste_index]
    assert isinstance(crop, DeepgrowCropd) and isinstance(paste, PasteCropd)
    output_key = config.inference.output
    if crop_index < cache_index:
        raise InvalidModel("inference.crop_growth: DeepgrowCropd must come after the cached pre-transforms "
                           f"(cache_until {config.cache_until!r})")
    if output_key not in paste.keys:
        raise InvalidModel(f"inference.crop_growth: PasteCropd must paste the network output {output_key!r}")
    if 2 * settings.border_voxels >= min(crop.spatial_size):
        raise InvalidModel(f"inference.crop_growth.border_voxels ({settings.border_voxels}) must be less than half "
                           f"DeepgrowCropd's smallest spatial_size ({min(crop.spatial_size)})")
    keeps = [t for t in post[:paste_index] if isinstance(t, KeepClickedComponentsd) and output_key in t.keys]
    if len(keeps) > 1:
        raise InvalidModel("inference.crop_growth: at most one KeepClickedComponentsd before PasteCropd")
    keep = keeps[0] if keeps else None
    after = list(post[paste_index + 1:])
    return CropGrowth(settings, list(pre[cache_index:crop_index]), list(pre[crop_index:]),
                      list(post[:paste_index]), after, crop, paste, keep, output_key)

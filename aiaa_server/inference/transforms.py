"""Clara's `aiaa.transforms.*` components, implemented here so 4.x configs run unchanged.

Configs name them `aiaa.transforms.Restored`, `aiaa.transforms.ExtremePointsd`, ... or by short name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import MapTransform, SpatialResample

from aiaa_server.errors import ModelError
from aiaa_server.imaging.io import read_volume
from aiaa_server.imaging.masks import bounding_box, extreme_points
from aiaa_server.inference.tensors import ORIGINAL_AFFINE, ORIGINAL_SHAPE, volume_to_tensor


class LoadImaged(MapTransform):
    """Loads a path, or passes through an image the server already decoded (uploads, sessions)."""

    def __init__(self, keys: Any, allow_missing_keys: bool = False, **_ignored: Any) -> None:
        """`keys`: the data keys to load; Clara's other arguments (reader, ...) are ignored."""
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        """A copy of `data` with paths under `keys` decoded by `volume_to_tensor`; other values unchanged."""
        d = dict(data)
        for key in self.key_iterator(d):
            if isinstance(d[key], (str, Path)):
                d[key] = volume_to_tensor(read_volume(Path(d[key])))
        return d


def _original_grid(reference: Any, ref_key: str) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    if not isinstance(reference, MetaTensor) or ORIGINAL_AFFINE not in reference.meta:
        raise ModelError(f"cannot restore the result: {ref_key!r} no longer carries its original geometry")
    source_affine = np.asarray(reference.affine, dtype=np.float64)
    return source_affine, np.asarray(reference.meta[ORIGINAL_AFFINE]), tuple(reference.meta[ORIGINAL_SHAPE])


def restore_to_grid(
    value: Any, source_affine: np.ndarray, target_affine: np.ndarray, target_shape: tuple[int, ...], mode: str
) -> np.ndarray:
    """Resample `value` (channel-first or not) from the model grid back onto the client's grid.

    Args:
        value: (C, *spatial) or (*spatial) tensor or array on the model grid.
        source_affine: the model grid's voxel → RAS affine.
        target_affine: the client grid's voxel → RAS affine.
        target_shape: the client grid's spatial shape, e.g. (X, Y, Z).
        mode: "nearest" (labels), or an interpolation mode of MONAI's `SpatialResample` such as "bilinear".

    Returns:
        A numpy array of `target_shape` (with the channel axis if `value` had one), zero outside the model
        grid; integer values stay integers (rounded after interpolation). An axis-aligned "nearest" restore
        of a float label map (whole numbers in [0, 255]) comes back as uint8 with the same values.
    """
    array = value.detach().cpu() if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))
    if isinstance(array, MetaTensor):
        array = array.as_tensor()
    added_channel = array.ndim == len(target_shape)
    if added_channel:
        array = array[None]
    same_grid = tuple(array.shape[1:]) == target_shape and np.allclose(source_affine, target_affine, atol=1e-6)
    fast = None if same_grid or mode != "nearest" else _axis_aligned_nearest(
        _as_small_labels(array), np.asarray(source_affine, dtype=np.float64), np.asarray(target_affine, dtype=np.float64), target_shape
    )
    if fast is not None:
        array = fast
    elif not same_grid:
        original_dtype = array.dtype
        resampler = SpatialResample(mode=mode, padding_mode="zeros", dtype=torch.float32)
        moved = resampler(
            MetaTensor(array.float(), affine=torch.as_tensor(source_affine)),
            dst_affine=torch.as_tensor(target_affine),
            spatial_size=target_shape,
        )
        array = moved.as_tensor()
        if not original_dtype.is_floating_point:
            array = array.round().to(original_dtype)
    result = array.numpy()
    return result[0] if added_channel else result


def _axis_aligned_nearest(array: torch.Tensor, source_affine: np.ndarray, target_affine: np.ndarray,
                         target_shape: tuple[int, ...]) -> torch.Tensor | None:
    """Nearest-neighbour resampling by per-axis index lookup when the grids differ only by per-axis scale,
    offset, flips and axis permutation; None otherwise. Same voxels as grid_sample nearest (zeros outside)
    except at exact half-voxel ties, which round up here (round-half-even would shrink a box at both ends).

    One `index_select` per axis, shrinking axes first, so nothing larger than the (C, *target_shape) output
    is allocated: no sampling grid, no index or validity arrays over the target; target voxels outside the
    source read an appended zero slice."""
    spatial = len(target_shape)
    xform = np.linalg.solve(source_affine, target_affine)  # target voxel -> source voxel
    linear, offset = xform[:spatial, :spatial], xform[:spatial, spatial]
    nonzero = np.abs(linear) > 1e-6 * np.abs(linear).max()
    if not (nonzero.sum(axis=0) == 1).all() or not (nonzero.sum(axis=1) == 1).all():
        return None
    source_of = [int(np.flatnonzero(nonzero[:, axis])[0]) for axis in range(spatial)]  # per target axis
    # source axes in target order, spatial axes reversed (views): the gathers then write the result in NIfTI's
    # Fortran order, which the encoder streams without a 30 MB-per-100-slices transposed copy
    out = array.permute(0, *[1 + a for a in reversed(source_of)])
    dim_of = [spatial - axis for axis in range(spatial)]  # the dim of `out` holding target axis `axis`
    growth = [target_shape[axis] / max(int(out.shape[dim_of[axis]]), 1) for axis in range(spatial)]
    for axis in sorted(range(spatial), key=lambda a: growth[a]):
        source_axis = source_of[axis]
        coords = linear[source_axis, axis] * np.arange(target_shape[axis]) + offset[source_axis]
        index = np.floor(coords + 0.5).astype(np.int64)  # ties round up: a box keeps its size
        size = int(out.shape[dim_of[axis]])
        if len(index) == size and np.array_equal(index, np.arange(size)):
            continue  # same voxels on this axis (e.g. slices kept by the model): nothing to gather
        inside = (index >= 0) & (index < size)
        if not inside.all():
            pad = list(out.shape)
            pad[dim_of[axis]] = 1
            out = torch.cat([out, out.new_zeros(pad)], dim=dim_of[axis])
            index = np.where(inside, index, size)
        out = out.index_select(dim_of[axis], torch.from_numpy(index))
    return out.contiguous().permute(0, *reversed(range(1, spatial + 1)))


def _as_small_labels(array: torch.Tensor) -> torch.Tensor:
    """`array` as uint8 when it holds only whole numbers in [0, 255] (a label map on the model grid), so the
    restored full-size result is 1 byte a voxel instead of 4; values unchanged. Otherwise `array`."""
    if not array.dtype.is_floating_point or array.numel() == 0:
        return array
    low, high = torch.aminmax(array)
    if low < 0 or high > 255 or not torch.equal(array, array.round()):
        return array
    return array.to(torch.uint8)


class Restored(MapTransform):
    """Undo the pre-transforms' resampling/reorientation/cropping: put results on the input's voxel grid."""

    def __init__(self, keys: Any, ref_image: str = "image", mode: str = "nearest", allow_missing_keys: bool = False,
                 **_ignored: Any) -> None:
        """`keys`: the results to restore; `ref_image`: the key of the model-grid image whose meta holds the
        input's geometry (see `volume_to_tensor`); `mode`: see `restore_to_grid`."""
        super().__init__(keys, allow_missing_keys)
        self.ref_image = ref_image
        self.mode = mode

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        """A copy of `data` with each key's value as a numpy array on the input's grid.

        Raises:
            ModelError: (500) `ref_image` is no longer a MetaTensor carrying the input's geometry.
        """
        d = dict(data)
        source_affine, target_affine, target_shape = _original_grid(d[self.ref_image], self.ref_image)
        for key in self.key_iterator(d):
            d[key] = restore_to_grid(d[key], source_affine, target_affine, target_shape, self.mode)
        return d


def _spatial_mask(value: Any) -> np.ndarray:
    array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    while array.ndim > 3 and array.shape[0] == 1:
        array = array[0]
    return array


class ExtremePointsd(MapTransform):
    """`result[points]` = the 6 extreme points of the foreground, [x, y, z] voxel ints."""

    def __init__(self, keys: Any, result: str = "result", points: str = "points", allow_missing_keys: bool = False,
                 **_ignored: Any) -> None:
        """`keys`: the mask ((X, Y, Z), leading singleton axes of a 4D one dropped); `result`: the data key of
        the result dict; `points`: the key of the points in it."""
        super().__init__(keys, allow_missing_keys)
        self.result = result
        self.points = points

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d.setdefault(self.result, {})[self.points] = extreme_points(_spatial_mask(d[key]))
        return d


class BoundingBoxd(MapTransform):
    """`result[bbox]` = `[[min x, y, z], [max x, y, z]]` of the foreground."""

    def __init__(self, keys: Any, result: str = "result", bbox: str = "bbox", allow_missing_keys: bool = False,
                 **_ignored: Any) -> None:
        """`keys`: the mask ((X, Y, Z), leading singleton axes of a 4D one dropped); `result`: the data key of
        the result dict; `bbox`: the key of the box in it."""
        super().__init__(keys, allow_missing_keys)
        self.result = result
        self.bbox = bbox

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d.setdefault(self.result, {})[self.bbox] = bounding_box(_spatial_mask(d[key]))
        return d


@dataclass
class WriterOutput:
    """A model's result: the result image as a numpy array (or None), and JSON-ready data.

    Attributes:
        image: the result image on the input grid, or None (image-less models: classification).
        json: the result JSON, only str/int/float/bool/None, lists and str-keyed dicts.
        json_key: the data key the JSON came from (a non-dict value `v` is `json[json_key]`).
    """

    image: np.ndarray | None
    json: dict[str, Any] = field(default_factory=dict)
    json_key: str = "result"


class Writer:
    """Picks the result image and result JSON out of the data; the service encodes them for the client."""

    def __init__(self, image: str | None = "pred", json: str = "result", **_ignored: Any) -> None:
        """`image`: the data key of the result image (None or empty: no image); `json`: the data key of the
        result dict. Clara's other writer arguments are ignored."""
        self.image_key = image
        self.json_key = json or "result"

    def __call__(self, data: dict[str, Any]) -> WriterOutput:
        """The result: the image (leading singleton axes of a 4D+ array dropped, as numpy), and the JSON value
        converted by `jsonable` (a non-dict value `v`, e.g. a classifier's probability tensor, becomes
        `{json: v}`; a missing or None value `{}`).

        Raises:
            ModelError: (500) the JSON value holds something JSON cannot carry; the message names its key
                and type.
        """
        image = None
        if self.image_key and data.get(self.image_key) is not None:
            image = _spatial_mask(data[self.image_key])
        result = data.get(self.json_key)
        if result is None:
            result = {}
        elif isinstance(result, dict):
            result = jsonable(result, self.json_key)
        else:
            result = {self.json_key: jsonable(result, self.json_key)}
        return WriterOutput(image=image, json=result, json_key=self.json_key)


def jsonable(value: Any, key: str = "result") -> Any:
    """`value` as plain JSON data: tensors (MetaTensors too) and numpy arrays as (nested) lists, numpy and
    0-d scalars as Python numbers, dicts with str keys, tuples and sets as lists; NaN and infinities as None.

    Args:
        value: what a model's pipeline left under the writer's `json` key.
        key: where `value` sits (dotted path), for the error message.

    Raises:
        ModelError: (500) something else (an object, bytes, a complex number), naming its key and type.
    """
    if isinstance(value, dict):
        return {str(k): jsonable(v, f"{key}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v, f"{key}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        value = (value.as_tensor() if isinstance(value, MetaTensor) else value).numpy()
    if isinstance(value, (np.ndarray, np.generic)):
        if value.dtype.kind not in "biuf":
            raise ModelError(f"the model's result {key!r} is an array of {value.dtype}, which JSON cannot carry",
                             key=key, type=str(value.dtype))
        value = value.tolist()
        return jsonable(value, key) if isinstance(value, list) else _number(value)
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return _number(value)
    if isinstance(value, Path):
        return str(value)
    kind = type(value).__name__
    raise ModelError(f"the model's result {key!r} is a {kind}, which JSON cannot carry", key=key, type=kind)


def _number(value: Any) -> Any:
    """A float that JSON can carry (NaN and infinities as None); ints and bools unchanged."""
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value

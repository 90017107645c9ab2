"""Training samples in network space: an image and its label through the MMAR's own inference pre-transforms.

The image is read as inference reads it (`read_volume` + `volume_to_tensor`), so it lands on exactly the grid
the served model sees. The label follows it through every transform that moves voxels (loading, channel
handling, Orientation, Spacing, resizing, cropping, padding), resampled nearest and padded with 0, and skips the
intensity transforms. A transform the trainer cannot place in either group is refused rather than guessed at:
a label silently misaligned with its image would train the model to be wrong.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.transforms.traits import LazyTrait

from aiaa_server.errors import BadRequest, InvalidParams
from aiaa_server.imaging.io import Volume, read_volume
from aiaa_server.inference.fast_paths import with_fast_paths
from aiaa_server.inference.pipeline import apply_transforms
from aiaa_server.inference.tensors import plain_tensor, volume_to_tensor
from aiaa_server.learning.spec import TrainItem
from aiaa_server.mmar.components import CustomCode, build_component, resolve_component
from aiaa_server.mmar.config import AIAAConfig, ComponentConfig, ModelType
from aiaa_server.mmar.loader import CONFIG_PATH, read_config
from aiaa_server.mmar.safety import check_untrusted_mmar

Transform = Callable[[dict[str, Any]], dict[str, Any]]

LABEL_KEY = "label"
MAX_LABELS = 255  # labels are kept as uint8 class indices
GRID_RTOL, GRID_ATOL_MM = 1e-4, 1e-3  # label and image affines that differ by float rounding are the same grid

# Transforms that move no voxel values between positions in a way that needs interpolation: the label simply
# goes along (MONAI's spatial and crop/pad transforms are recognised by their LazyTrait base and their module).
STRUCTURAL = frozenset({
    "LoadImaged", "EnsureChannelFirstd", "AsChannelFirstd", "AsChannelLastd", "EnsureTyped", "ToTensord",
    "SqueezeDimd", "Transposed", "Identityd",
})
# Image-only besides everything in monai.transforms.intensity: casts would turn label indices into floats.
IMAGE_ONLY = frozenset({"CastToTyped"})
SPATIAL_MODULE = "monai.transforms.spatial"
CROP_PAD_MODULE = "monai.transforms.croppad"
INTENSITY_MODULE = "monai.transforms.intensity"


@dataclass
class PreparedItem:
    """One training sample in network space.

    Attributes:
        id: the datastore image id.
        image: (C, *spatial) float32, what the network gets (axes as after the pre-transforms, e.g. RAS).
        label: (1, *spatial) uint8 class indices 0..len(labels), on the image's grid.
    """

    id: str
    image: torch.Tensor
    label: torch.Tensor


def load_training_config(model_dir: Path, trusted: bool = True) -> tuple[AIAAConfig, CustomCode | None]:
    """The MMAR's config, checked to be a trainable segmentation model, and its `custom/` code.

    Args:
        model_dir: the MMAR folder.
        trusted: False: the config is held to the upload allow-list and `custom/` is never used.

    Returns:
        `(config, custom)`; custom is None for an untrusted model.

    Raises:
        InvalidModel: an unreadable config, or (untrusted) one the allow-list refuses.
        BadRequest: not a segmentation model, a weight-free network, no labels or more than MAX_LABELS.
    """
    config = read_config(model_dir / CONFIG_PATH)
    if not trusted:
        check_untrusted_mmar(model_dir, config)
    if config.type is not ModelType.SEGMENTATION:
        raise BadRequest(f"only segmentation models can be trained; this one is a {config.type.value} model",
                         type=config.type.value)
    if config.inference.network is not None:
        raise BadRequest("a weight-free network (inference.network) has nothing to train")
    if not config.labels:
        raise BadRequest("the model's config lists no labels: the classes to train are unknown")
    if len(config.labels) > MAX_LABELS:
        raise BadRequest(f"at most {MAX_LABELS} labels can be trained; the config lists {len(config.labels)}")
    return config, CustomCode(model_dir) if trusted else None


def _keys(args: dict[str, Any]) -> list[str]:
    keys = args.get("keys", [])
    return [keys] if isinstance(keys, str) else list(keys)


def _per_key(value: Any, count: int) -> list[Any]:
    """`value` as one entry per key: a sequence of `count` entries as is, anything else repeated."""
    if isinstance(value, (list, tuple)) and len(value) == count:
        return list(value)
    return [value] * count


def _default(cls: Any, name: str) -> Any:
    try:
        parameter = inspect.signature(cls).parameters.get(name)
    except (TypeError, ValueError):
        return None
    return None if parameter is None or parameter.default is inspect.Parameter.empty else parameter.default


def _kind(cls: Any) -> str:
    """"image" (intensity: image only), "spatial" (interpolates), "croppad" (pads), "structural", or "unknown"."""
    name, module = getattr(cls, "__name__", ""), getattr(cls, "__module__", "")
    if name in IMAGE_ONLY or module.startswith(INTENSITY_MODULE):
        return "image"
    if name in STRUCTURAL:
        return "structural"
    if module.startswith(CROP_PAD_MODULE):
        return "croppad"
    if module.startswith(SPATIAL_MODULE) or (isinstance(cls, type) and issubclass(cls, LazyTrait)):
        return "spatial"
    return "unknown"


# Per-key arguments the label gets its own entry of; None: the image's entry.
LABEL_ARGS = {
    "spatial": {"mode": "nearest", "anti_aliasing": False, "align_corners": None, "padding_mode": None,
                "dtype": None},
    "croppad": {"mode": "constant"},
    "structural": {"dtype": None},
}


def _with_label(cls: Any, kind: str, args: dict[str, Any], image_key: str) -> dict[str, Any]:
    """`args` extended so the transform also runs on the label key, with the label's own per-key values."""
    keys = _keys(args)
    if image_key not in keys:
        return args
    extended = {**args, "keys": [*keys, LABEL_KEY]}
    for name, label_value in LABEL_ARGS.get(kind, {}).items():
        if name not in args and (label_value is None or _default(cls, name) is None):
            continue  # absent and nothing to override: the default applies to every key
        image_values = _per_key(args.get(name, _default(cls, name)), len(keys))
        own = image_values[keys.index(image_key)] if label_value is None else label_value
        extended[name] = [*image_values, own]
    return extended


def training_transforms(config: AIAAConfig, custom: CustomCode | None) -> list[Transform]:
    """The config's pre-transforms, rebuilt to carry `LABEL_KEY` along with the image.

    Args:
        config: the model's config.
        custom: its `custom/` code (None: not searched).

    Returns:
        The transforms, in the config's order (MONAI's slow ones wrapped as for inference: `with_fast_paths`).

    Raises:
        InvalidModel: a component that cannot be found or built.
        BadRequest: a pre-transform that is neither spatial nor intensity (e.g. custom code), or a config
            whose own keys use `LABEL_KEY`.
    """
    image_key = config.inference.input
    transforms = []
    for component in config.pre_transforms:
        cls, args = resolve_component(component.name, dict(component.args), custom)
        if LABEL_KEY in _keys(args):
            raise BadRequest(f"pre-transform {component.name!r} already uses the key {LABEL_KEY!r}")
        kind = _kind(cls)
        if kind == "unknown" and image_key in _keys(args):
            raise BadRequest(f"cannot train through pre-transform {component.name!r}: it is neither a MONAI "
                             "spatial, crop/pad or intensity transform, so where the label goes is unknown",
                             component=component.name)
        if kind == "image":
            transforms.append(build_component(component, custom))
        else:
            transforms.append(_build(component, _with_label(cls, kind, args, image_key), custom))
    return with_fast_paths(transforms)  # the image exactly as inference prepares it


def _build(component: ComponentConfig, args: dict[str, Any], custom: CustomCode | None) -> Transform:
    # `args` are already translated (AddChanneld's become EnsureChannelFirstd's); translating them again under
    # the config's name gives the same arguments, so the server's builder (pinned defaults, errors) is reused.
    return build_component(ComponentConfig(name=component.name, args=args), custom)


def _check_grid(image: Volume, label: Volume, item: TrainItem) -> None:
    if image.spatial_shape != label.spatial_shape:
        raise InvalidParams(f"label of {item.id!r} has shape {label.spatial_shape}, its image "
                            f"{image.spatial_shape}: a label must lie on its image's voxel grid", image=item.id)
    if not np.allclose(image.affine, label.affine, rtol=GRID_RTOL, atol=GRID_ATOL_MM):
        raise InvalidParams(f"label of {item.id!r} is not on its image's grid (different spacing, origin or "
                            "orientation in its header)", image=item.id)


def _check_values(label: Volume, classes: int, item: TrainItem) -> None:
    values = np.unique(np.asarray(label.array))
    if not np.array_equal(values, np.round(values)) or values.min() < 0 or values.max() >= classes:
        shown = ", ".join(str(v) for v in values[:8])
        raise InvalidParams(f"label of {item.id!r} must hold class indices 0..{classes - 1} "
                            f"(the model's labels); it holds {shown}", image=item.id)


def prepare_item(transforms: Sequence[Transform], config: AIAAConfig, item: TrainItem, max_voxels: int) -> PreparedItem:
    """Read an image and its label and run them through `transforms` (`training_transforms`).

    Args:
        transforms: the label-carrying pre-transforms.
        config: the model's config (input key, labels).
        item: the image and label files.
        max_voxels: bound on the preprocessed volume's voxels (per channel).

    Returns:
        The sample: image (C, *spatial) float32, label (1, *spatial) uint8, the same spatial shape.

    Raises:
        InvalidImage: an unreadable image or label.
        InvalidParams: a label not on its image's grid, or with values other than 0..len(labels).
        BadRequest: a preprocessed volume over `max_voxels`, or transforms that leave image and label on
            different grids.
    """
    return prepare_pair(transforms, item, len(config.labels) + 1, max_voxels, config.inference.input)


def prepare_pair(transforms: Sequence[Transform], item: TrainItem, classes: int, max_voxels: int,
                 image_key: str = "image") -> PreparedItem:
    """Read an image and its label as `image_key` and `LABEL_KEY` (each (X, Y, Z) MetaTensors, as the server's
    `LoadImaged` passes decoded images on) and run them through `transforms`, which name both keys.

    Args:
        transforms: transforms on `image_key` and `LABEL_KEY` (a training config's, or `training_transforms`).
        item: the image and label files.
        classes: label values allowed: 0..classes-1.
        max_voxels: bound on the preprocessed volume's voxels (per channel).
        image_key: the image's data key.

    Returns and Raises: as `prepare_item`.
    """
    image = read_volume(item.image, item.image.name)
    label = read_volume(item.label, item.label.name)
    _check_grid(image, label, item)
    _check_values(label, classes, item)
    data: dict[str, Any] = {image_key: volume_to_tensor(image), LABEL_KEY: volume_to_tensor(label)}
    data = apply_transforms(transforms, data, f"training pre-transform of {item.id!r}:", BadRequest)
    return _sample(item.id, data[image_key], data[LABEL_KEY], max_voxels)


def _sample(item_id: str, image: Any, label: Any, max_voxels: int) -> PreparedItem:
    image_tensor = plain_tensor(image).float().contiguous()
    label_tensor = plain_tensor(label)
    if image_tensor.shape[1:] != label_tensor.shape[1:] or label_tensor.shape[0] != 1:
        raise BadRequest(f"the pre-transforms leave {item_id!r} with image {tuple(image_tensor.shape)} and "
                         f"label {tuple(label_tensor.shape)}: not one label channel on the image's grid",
                         image=item_id)
    voxels = int(np.prod(image_tensor.shape[1:]))
    if voxels > max_voxels:
        raise BadRequest(f"{item_id!r} is {voxels} voxels after pre-processing, over the job's limit of "
                         f"{max_voxels}", image=item_id, voxels=voxels)
    return PreparedItem(item_id, image_tensor, label_tensor.round().to(torch.uint8).contiguous())

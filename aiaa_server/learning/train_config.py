"""An MMAR's own training config, `config/config_train.json` (Clara Train 4's MONAI-based shape), as far as a
fine-tuning job uses it.

Used: `train.pre_transforms` (keys `image` and `label`; the part before the first random transform runs once per
item and is cached, the random rest runs at every step, as Clara's `CacheDataset` did), `train.loss` (a MONAI
segmentation loss), `train.optimizer` (Adam, AdamW, SGD or MONAI's Novograd) and the top-level `learning_rate`,
with Clara's `"{name}"` references to top-level values resolved. Not used: epochs and validation settings (a job's
budget comes with its request, and its validation runs the serving pipeline, so the baseline and the candidate are
scored on what the server would answer), data lists, handlers, multi-GPU and AMP flags.

An uploaded model (untrusted) is held to the upload allow-list (`mmar.safety`) plus MONAI's random augmentation
transforms, and every argument is checked the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from monai.transforms import Randomizable
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from aiaa_server.errors import InvalidModel
from aiaa_server.inference.params import loads_bounded
from aiaa_server.mmar.components import CustomCode, build_component, translate_legacy
from aiaa_server.mmar.config import ComponentConfig
from aiaa_server.mmar.safety import check_arguments, check_component_name

TRAIN_CONFIG_PATH = Path("config") / "config_train.json"
MAX_TRAIN_CONFIG_BYTES = 4 * 2**20
# Augmentations an uploaded config may use besides the serving allow-list (names without the d / D suffix).
RANDOM_TRANSFORMS = frozenset({
    "RandCropByPosNegLabel", "RandCropByLabelClasses", "RandSpatialCrop", "RandSpatialCropSamples",
    "RandWeightedCrop", "RandFlip", "RandAxisFlip", "RandRotate90", "RandRotate", "RandZoom", "RandAffine",
    "Rand3DElastic", "RandShiftIntensity", "RandStdShiftIntensity", "RandScaleIntensity", "RandGaussianNoise",
    "RandGaussianSmooth", "RandAdjustContrast", "RandBiasField", "RandHistogramShift",
})
LOSSES = frozenset({"DiceLoss", "DiceCELoss", "DiceFocalLoss", "FocalLoss", "GeneralizedDiceLoss",
                    "GeneralizedDiceFocalLoss", "TverskyLoss"})
OPTIMIZERS = frozenset({"Adam", "AdamW", "SGD", "Novograd"})


class TrainConfig(BaseModel):
    """The parts of `config_train.json` a job uses (see the module docstring)."""

    model_config = ConfigDict(extra="ignore")

    pre_transforms: list[ComponentConfig] = Field(min_length=1, max_length=256)
    loss: ComponentConfig | None = None
    optimizer: ComponentConfig | None = None
    learning_rate: float | None = Field(None, gt=0, le=1, allow_inf_nan=False)


def _resolve_references(value: Any, variables: dict[str, Any]) -> Any:
    """Clara's `"{name}"` strings replaced by the top-level value `name` (scalars only)."""
    if isinstance(value, dict):
        return {key: _resolve_references(item, variables) for key, item in value.items()}
    if isinstance(value, list):
        return [_resolve_references(item, variables) for item in value]
    if isinstance(value, str) and value.startswith("{") and value.endswith("}") and value[1:-1] in variables:
        return variables[value[1:-1]]
    return value


def _short_base(name: str) -> str:
    short = translate_legacy(name, {})[0].rsplit(".", 1)[-1]
    return short[:-1] if short.endswith(("d", "D")) else short


def _check_untrusted(config: TrainConfig) -> None:
    for index, component in enumerate(config.pre_transforms):
        if _short_base(component.name) not in RANDOM_TRANSFORMS or "." in component.name.removeprefix("monai.transforms."):
            check_component_name(component.name)
        check_arguments(component, f"config_train.json train.pre_transforms[{index}]({component.name})")
    for part, allowed in (("loss", LOSSES), ("optimizer", OPTIMIZERS)):
        component = getattr(config, part)
        if component is None:
            continue
        if component.name not in allowed:
            raise InvalidModel(f"config_train.json train.{part} {component.name!r} is not one of "
                               f"{', '.join(sorted(allowed))}", component=component.name)
        check_arguments(component, f"config_train.json train.{part}")


def read_train_config(model_dir: Path, trusted: bool = True) -> TrainConfig | None:
    """The MMAR's `config/config_train.json`, or None when it has none.

    Args:
        model_dir: the MMAR folder.
        trusted: False: held to the upload allow-list (see the module docstring).

    Raises:
        InvalidModel: an unreadable or oversized file, no `train.pre_transforms`, or (untrusted) a component or
            argument an upload may not use.
    """
    path = model_dir / TRAIN_CONFIG_PATH
    if not path.is_file():
        return None
    if path.stat().st_size > MAX_TRAIN_CONFIG_BYTES:
        raise InvalidModel(f"{TRAIN_CONFIG_PATH} is larger than {MAX_TRAIN_CONFIG_BYTES // 2**20} MiB")
    raw = loads_bounded(path.read_bytes(), what=str(TRAIN_CONFIG_PATH), error=InvalidModel)
    if not isinstance(raw, dict) or not isinstance(raw.get("train"), dict):
        raise InvalidModel(f"{TRAIN_CONFIG_PATH} has no `train` section")
    variables = {key: value for key, value in raw.items() if isinstance(value, (int, float, str, bool))}
    train = _resolve_references(raw["train"], variables)
    try:
        config = TrainConfig.model_validate({**train, "learning_rate": variables.get("learning_rate")})
    except ValidationError as exc:
        raise InvalidModel(f"{TRAIN_CONFIG_PATH}: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}") from exc
    if not trusted:
        _check_untrusted(config)
    return config


def split_random(transforms: list[Any]) -> tuple[list[Any], list[Any]]:
    """`(deterministic, random)`: the transforms before the first random one (run once, cached), and the rest."""
    first = next((i for i, t in enumerate(transforms) if isinstance(t, Randomizable)), len(transforms))
    return transforms[:first], transforms[first:]


def build_pre_transforms(config: TrainConfig, custom: CustomCode | None) -> tuple[list[Any], list[Any]]:
    """The training pre-transforms, built, as `split_random` splits them.

    Raises:
        InvalidModel: a component that cannot be found or built.
    """
    return split_random([build_component(component, custom) for component in config.pre_transforms])


def build_loss(config: TrainConfig) -> torch.nn.Module | None:
    """The config's loss (one of LOSSES, from `monai.losses`); None when it names none.

    Raises:
        InvalidModel: another loss, or arguments its constructor refuses.
    """
    import monai.losses

    if config.loss is None:
        return None
    if config.loss.name not in LOSSES:
        raise InvalidModel(f"train.loss {config.loss.name!r} is not one of {', '.join(sorted(LOSSES))}")
    try:
        return getattr(monai.losses, config.loss.name)(**config.loss.args)
    except Exception as exc:
        raise InvalidModel(f"cannot build train.loss {config.loss.name!r}: {exc}") from exc


def optimizer_factory(config: TrainConfig) -> Any:
    """A `(parameters, learning_rate) -> Optimizer` for the config's optimiser; None when it names none.

    Its `lr` argument gives way to the job's learning rate; its other arguments are kept.

    Raises:
        InvalidModel: another optimiser.
    """
    import monai.optimizers

    if config.optimizer is None:
        return None
    name, args = config.optimizer.name, {k: v for k, v in config.optimizer.args.items() if k != "lr"}
    if name not in OPTIMIZERS:
        raise InvalidModel(f"train.optimizer {name!r} is not one of {', '.join(sorted(OPTIMIZERS))}")
    cls = monai.optimizers.Novograd if name == "Novograd" else getattr(torch.optim, name)

    def build(parameters: list[torch.nn.Parameter], learning_rate: float) -> torch.optim.Optimizer:
        try:
            return cls(parameters, lr=learning_rate, **args)
        except Exception as exc:
            raise InvalidModel(f"cannot build train.optimizer {name!r} with {args}: {exc}") from exc

    return build

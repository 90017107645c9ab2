"""What a job trains with, by model format: the network, the prepared items, the trainer's parts, and how the
trained network is written into the candidate folder.

* An MMAR trains its TorchScript `models/model.ts`. With a usable `config/config_train.json` (`train_config`)
  the training items go through its `train.pre_transforms` and it sets the loss and optimiser; without one (or
  when it cannot be used: the status says why) they go through the inference pre-transforms with the label carried
  along (`data.training_transforms`) and random foreground-biased crops of the inference `roi`. Validation always
  runs the serving pre-transforms and sliding window, so the baseline and the candidate are scored on what the
  server would answer.
* A MONAI bundle trains `network_def` from its serving weights with `configs/train.json`: `train#preprocessing`
  (its deterministic part cached, the random rest at every step), `loss`, `optimizer`, and `validate#preprocessing`
  with `validate#inferer` for the validation Dice (see `bundle_recipe`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from aiaa_server.bundles.layout import is_bundle
from aiaa_server.errors import AIAAError
from aiaa_server.learning.data import (
    PreparedItem,
    load_training_config,
    prepare_item,
    prepare_pair,
    training_transforms,
)
from aiaa_server.learning.spec import TrainSpec
from aiaa_server.learning.train_config import (
    TRAIN_CONFIG_PATH,
    TrainConfig,
    build_loss,
    build_pre_transforms,
    optimizer_factory,
    read_train_config,
)
from aiaa_server.learning.trainer import Trainer, TrainerOptions, TrainingParts, TransformSampler, load_network
from aiaa_server.mmar.components import CustomCode
from aiaa_server.mmar.config import AIAAConfig
from aiaa_server.mmar.loader import CONFIG_PATH, is_mmar

DEFAULT_LEARNING_RATE = 1e-4
SaveNetwork = Callable[[torch.nn.Module, Path], None]


@dataclass
class Recipe:
    """A job's trainer and data.

    Attributes:
        trainer: holds the network (serving weights), sampler, loss, optimiser and validation forward.
        train: the training items, prepared (the deterministic part of the training transforms applied).
        val: the validation items, prepared as serving prepares an image.
        save: writes the trained network into a candidate folder (a copy of the serving folder without `models/`).
        source: which training config the job uses, and why another was not (reported in the job status).
    """

    trainer: Trainer
    train: list[PreparedItem]
    val: list[PreparedItem]
    save: SaveNetwork
    source: str


def build_recipe(spec: TrainSpec, device: torch.device) -> Recipe:
    """The recipe for the model in `spec.model_dir`: an MMAR's, or a bundle's (an MMAR wins in a folder holding both,
    as when serving).

    Raises:
        BadRequest, InvalidModel, InvalidParams: the model or the data cannot be trained on (the message says why).
    """
    if is_bundle(spec.model_dir) and not is_mmar(spec.model_dir):
        from aiaa_server.learning.bundle_recipe import bundle_recipe

        return bundle_recipe(spec, device)
    return mmar_recipe(spec, device)


def save_torchscript(network: torch.nn.Module, folder: Path) -> None:
    """Write an MMAR's trained network as `models/model.ts`."""
    torch.jit.save(network, str(folder / "models" / "model.ts"))


def _usable_train_config(spec: TrainSpec, custom: CustomCode | None) -> tuple[TrainConfig | None, Any, str]:
    """`(config, built transforms, source)`: the MMAR's training config when it can be read and built."""
    try:
        config = read_train_config(spec.model_dir, trusted=spec.trusted)
        if config is None:
            return None, None, f"derived from {CONFIG_PATH.as_posix()} (no {TRAIN_CONFIG_PATH.as_posix()})"
        return config, build_pre_transforms(config, custom), TRAIN_CONFIG_PATH.as_posix()
    except AIAAError as exc:
        return None, None, (f"derived from {CONFIG_PATH.as_posix()} ({TRAIN_CONFIG_PATH.as_posix()} not used: "
                            f"{exc.message})")


def _options(spec: TrainSpec, config: AIAAConfig, learning_rate: float, device: torch.device) -> TrainerOptions:
    args = config.inference.args
    return TrainerOptions(
        classes=len(config.labels) + 1, inference=args, spatial_dims=config.spatial_dims,
        patch=spec.patch or (list(args.roi) if args.roi else None), samples_per_item=spec.samples_per_item,
        learning_rate=learning_rate, seed=spec.seed, device=device,
    )


def mmar_recipe(spec: TrainSpec, device: torch.device) -> Recipe:
    """An MMAR's recipe (see the module docstring).

    Raises:
        BadRequest, InvalidModel, InvalidParams: see `load_training_config`, `load_network` and `prepare_item`.
    """
    config, custom = load_training_config(spec.model_dir, trusted=spec.trusted)
    serving_transforms = training_transforms(config, custom)
    network = load_network(spec.model_dir, device)
    train_config, built, source = _usable_train_config(spec, custom)
    val = [prepare_item(serving_transforms, config, item, spec.max_voxels) for item in spec.val]
    if train_config is None:
        learning_rate = spec.learning_rate or DEFAULT_LEARNING_RATE
        trainer = Trainer(network, _options(spec, config, learning_rate, device))
        train = [prepare_item(serving_transforms, config, item, spec.max_voxels) for item in spec.train]
        return Recipe(trainer, train, val, save_torchscript, source)
    deterministic, random = built
    learning_rate = spec.learning_rate or train_config.learning_rate or DEFAULT_LEARNING_RATE
    parts = TrainingParts(sampler=TransformSampler(random, spec.seed), loss=build_loss(train_config),
                          optimizer=optimizer_factory(train_config))
    trainer = Trainer(network, _options(spec, config, learning_rate, device), parts)
    classes = len(config.labels) + 1
    train = [prepare_pair(deterministic, item, classes, spec.max_voxels) for item in spec.train]
    return Recipe(trainer, train, val, save_torchscript, source)

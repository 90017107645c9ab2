"""A MONAI bundle's recipe, read from its `configs/train.json` (or `.yaml`) as `monai.bundle run` reads it.

Used, with the serving overrides of `bundles.loader` (`bundle_root`, `device`, the pass-through `LoadImaged`):

* `network_def`, with the serving weights (the state dict the inference config's `CheckpointLoader` names, else
  `models/model.pt`); the candidate's weights are written back to that same file;
* `train#preprocessing` (a `Compose`, nested ones flattened): the transforms before the first random one run once
  per item and are cached, the rest at every step (MONAI's `CacheDataset` order);
* `loss` (default Dice + cross-entropy) and `optimizer`, built on the network being trained (default Adam); the
  job's learning rate, when the request gives one, replaces the optimiser's;
* `validate#preprocessing` (default: the cached part of `train#preprocessing`) and `validate#inferer` (default the
  top-level `inferer`, else one pass): the baseline and every epoch are scored with them.

Never built: data sets and loaders, trainers, evaluators, handlers. A bundle's config is code, so only a bundle
the operator installed (or an upload allowed to run code) is trained.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from aiaa_server.bundles.layout import METADATA_PATH, inference_config_path, train_config_path
from aiaa_server.bundles.loader import (
    bundle_imports,
    bundle_parser,
    load_state_dict_file,
    parsed_part,
    read_bundle_config,
    refuse_untrusted_bundle,
    weights_path,
)
from aiaa_server.bundles.metadata import read_metadata
from aiaa_server.errors import BadRequest, InvalidModel
from aiaa_server.learning.data import prepare_pair
from aiaa_server.learning.recipes import DEFAULT_LEARNING_RATE, Recipe
from aiaa_server.learning.spec import TrainSpec
from aiaa_server.learning.train_config import split_random
from aiaa_server.learning.trainer import Forward, Trainer, TrainerOptions, TrainingParts, TransformSampler
from aiaa_server.mmar.config import InferenceArgs


def _flat(transforms: Sequence[Any]) -> list[Any]:
    """A Compose's transforms with nested Composes expanded in place."""
    from monai.transforms import Compose

    flat: list[Any] = []
    for transform in transforms:
        flat += _flat(transform.transforms) if isinstance(transform, Compose) else [transform]
    return flat


def _transforms(part: Any, key: str) -> list[Any]:
    from monai.transforms import Compose

    if isinstance(part, Compose):
        return _flat(part.transforms)
    if isinstance(part, (list, tuple)):
        return _flat(part)
    raise InvalidModel(f"the bundle's {key!r} is a {type(part).__name__}, not a Compose or a list of transforms")


def _network(parser: Any, folder: Path, weights: Path, device: torch.device) -> torch.nn.Module:
    network = parsed_part(parser, "network_def", folder)
    if not isinstance(network, torch.nn.Module) or not list(network.parameters()):
        raise BadRequest(f"{folder.name}: network_def is not a torch module with parameters to train")
    try:
        network.load_state_dict(load_state_dict_file(weights))
    except RuntimeError as exc:
        raise InvalidModel(f"{folder.name}: {weights.name} does not fit network_def: {exc}") from exc
    return network.to(device)


def _optimizer(parser: Any, folder: Path, learning_rate: float | None) -> Any:
    """A factory building the config's `optimizer` on the trained network (its `@network` is that network)."""
    def build(parameters: list[torch.nn.Parameter], _rate: float) -> torch.optim.Optimizer:
        if "optimizer" not in parser:
            return torch.optim.Adam(parameters, lr=learning_rate or DEFAULT_LEARNING_RATE)
        optimizer = parsed_part(parser, "optimizer", folder)
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise InvalidModel(f"{folder.name}: the bundle's 'optimizer' is a {type(optimizer).__name__}")
        if learning_rate is not None:
            for group in optimizer.param_groups:
                group["lr"] = learning_rate
        return optimizer

    return build


def _predictor(parser: Any, folder: Path) -> Any:
    key = next((k for k in ("validate#inferer", "inferer") if k in parser), None)
    inferer = parsed_part(parser, key, folder) if key else None

    def predict(batch: torch.Tensor, forward: Forward) -> torch.Tensor:
        return forward(batch) if inferer is None else inferer(batch, forward)

    return predict


def _serving_weights(folder: Path, metadata: dict[str, Any], device: torch.device) -> Path:
    config_path = inference_config_path(folder)
    parser = bundle_parser(folder, read_bundle_config(config_path), metadata, device) if config_path else None
    found = weights_path(parser, folder) if parser is not None else None
    if found is None:
        raise BadRequest(f"{folder.name}: no state dict to train (models/model.pt with network_def); a bundle "
                         "served from model.ts or model.pt2 alone cannot be fine-tuned")
    return found


def bundle_recipe(spec: TrainSpec, device: torch.device) -> Recipe:
    """A bundle's recipe (see the module docstring).

    Raises:
        BadRequest: no train config, no trainable network or weights.
        InvalidModel: an untrusted bundle, or a config part that cannot be built.
        InvalidParams: labels not on their images' grids, or with values beyond the bundle's labels.
    """
    folder = spec.model_dir.resolve()
    if not spec.trusted:
        raise refuse_untrusted_bundle(folder)
    config_path = train_config_path(folder)
    if config_path is None:
        raise BadRequest(f"{folder.name}: the bundle has no configs/train.json (or .yaml) to train with")
    metadata = read_metadata(folder / METADATA_PATH)
    classes = len(metadata.labels) + 1
    with bundle_imports(folder):
        weights = _serving_weights(folder, metadata.model_dump(), device)
        parser = bundle_parser(folder, read_bundle_config(config_path), metadata.model_dump(), device)
        network = _network(parser, folder, weights, device)
        parser["network"] = network  # `@network` in the optimiser's params is the network trained here
        deterministic, random = split_random(_transforms(parsed_part(parser, "train#preprocessing", folder),
                                                         "train#preprocessing"))
        validate = (_transforms(parsed_part(parser, "validate#preprocessing", folder), "validate#preprocessing")
                    if "validate#preprocessing" in parser else deterministic)
        parts = TrainingParts(sampler=TransformSampler(random, spec.seed),
                              loss=parsed_part(parser, "loss", folder) if "loss" in parser else None,
                              optimizer=_optimizer(parser, folder, spec.learning_rate),
                              predictor=_predictor(parser, folder))
        options = TrainerOptions(classes=classes, inference=InferenceArgs(), spatial_dims=3, patch=None,
                                 samples_per_item=1, learning_rate=spec.learning_rate or DEFAULT_LEARNING_RATE,
                                 seed=spec.seed, device=device)
        trainer = Trainer(network, options, parts)
        train = [prepare_pair(deterministic, item, classes, spec.max_voxels) for item in spec.train]
        val = [prepare_pair(validate, item, classes, spec.max_voxels) for item in spec.val]
    relative = weights.relative_to(folder)

    def save(trained: torch.nn.Module, candidate: Path) -> None:
        (candidate / relative).parent.mkdir(parents=True, exist_ok=True)
        torch.save({k: v.detach().cpu() for k, v in trained.state_dict().items()}, candidate / relative)

    return Recipe(trainer, train, val, save, f"{config_path.relative_to(folder).as_posix()}")


"""Loading an MMAR folder (`config/config_aiaa.json` + a network in `models/` + optional `custom/`).

The network file, first found of `MODEL_FILES`: `models/model.pt2` (a `torch.export` program, `torch.export.save`),
`models/model.ts`, `models/model.pt` (TorchScript). With both `.pt2` and `.ts`, the local engine runs the `.pt2`
and Triton the `.ts` (Triton runs TorchScript only).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from aiaa_server.engines.base import EngineProvider
from aiaa_server.engines.factory import EngineFactory
from aiaa_server.engines.torchscript import TorchScriptPool
from aiaa_server.errors import InvalidModel, format_validation_errors
from aiaa_server.inference.crop_growth import build_crop_growth
from aiaa_server.inference.fast_paths import with_fast_paths
from aiaa_server.inference.params import loads_bounded
from aiaa_server.inference.pipeline import ModelPipeline
from aiaa_server.inference.transforms import Writer
from aiaa_server.mmar.components import CustomCode, build_component
from aiaa_server.mmar.config import AIAAConfig, ModelType
from aiaa_server.mmar.safety import check_untrusted_mmar

log = logging.getLogger(__name__)

CONFIG_PATH = Path("config") / "config_aiaa.json"
MODEL_FILES = (Path("models") / "model.pt2", Path("models") / "model.ts", Path("models") / "model.pt")
NETWORKLESS_TYPES = {ModelType.PIPELINE}


class ModelInfo(BaseModel):
    """A model as `GET /v1/models` shows it (protocol section 6)."""

    model_config = ConfigDict(extra="allow")

    name: str
    type: str
    labels: list[str]
    description: str
    version: str


@dataclass
class LoadedModel:
    """A model ready to serve: its name, MMAR folder, config, built pipeline and network file (`.pt2` or
    TorchScript; None for a pipeline model without a network, and for a weight-free `inference.network`)."""

    name: str
    path: Path
    config: AIAAConfig
    pipeline: ModelPipeline
    model_file: Path | None

    @property
    def info(self) -> ModelInfo:
        """The model as `GET /v1/models` lists it: name, type, labels, description, version, and the keys of
        `inference.meta_data` that do not clash with those."""
        extra: dict[str, Any] = dict(self.config.inference.meta_data)
        return ModelInfo(
            name=self.name,
            type=self.config.type.value,
            labels=list(self.config.labels),
            description=self.config.description,
            version=self.config.version,
            **{k: v for k, v in extra.items() if k not in ModelInfo.model_fields},
        )


def is_mmar(folder: Path) -> bool:
    """Whether `folder` holds `config/config_aiaa.json`."""
    return (folder / CONFIG_PATH).is_file()


def read_config(path: Path) -> AIAAConfig:
    """Read and validate a `config_aiaa.json` file (JSON nesting and number literals bounded).

    Raises:
        InvalidModel: an unreadable file, invalid JSON, or a config that does not fit the schema.
    """
    try:
        raw = loads_bounded(path.read_bytes(), what=path.name, error=InvalidModel)
    except OSError as exc:
        raise InvalidModel(f"cannot read {path.name}: {exc}") from exc
    return parse_config(raw)


def parse_config(raw: Any) -> AIAAConfig:
    """Validate decoded `config_aiaa.json` JSON against the schema.

    Raises:
        InvalidModel: not a JSON object, or invalid fields (all of them listed).
    """
    if not isinstance(raw, dict):
        raise InvalidModel("config_aiaa.json must hold a JSON object")
    try:
        return AIAAConfig.model_validate(raw)
    except ValidationError as exc:
        raise InvalidModel(f"invalid config_aiaa.json: {format_validation_errors(exc)}") from exc


def find_model_file(folder: Path) -> Path | None:
    """The MMAR's network file: `models/model.pt2` (torch.export), else `models/model.ts`, else `models/model.pt`
    (TorchScript); None when none exists."""
    for relative in MODEL_FILES:
        if (folder / relative).is_file():
            return folder / relative
    return None


def needs_model_file(config: AIAAConfig) -> bool:
    """Whether the config's model runs a network file (torch.export or TorchScript): not a pipeline model, not
    a weight-free `inference.network`."""
    return config.type not in NETWORKLESS_TYPES and config.inference.network is None


def build_network(config: AIAAConfig, custom: CustomCode | None = None) -> Any | None:
    """The weight-free network the config's `inference.network` names (None when it names none), built with
    `keys` = `inference.input` and `output` = `inference.output` unless its args give them.

    Raises:
        InvalidModel: an unknown component, or arguments it refuses.
    """
    network = config.inference.network
    if network is None:
        return None
    args = {"keys": config.inference.input, "output": config.inference.output, **network.args}
    return build_component(network.model_copy(update={"args": args}), custom)


def _cache_index(config: AIAAConfig) -> int:
    """How many leading pre-transforms depend on the image only (per `cache_until`)."""
    names = [c.name.rsplit(".", 1)[-1] for c in config.pre_transforms]
    if config.cache_until is None:
        return 0
    if config.cache_until.upper() == "ALL":
        return len(names)
    wanted = config.cache_until.rsplit(".", 1)[-1]
    if wanted not in names:
        raise InvalidModel(f"cache_until names {config.cache_until!r}, which is not one of the pre_transforms")
    # "up to and including it" — but the named transform itself usually reads request params (clicks),
    # so the cache stops just before it.
    return names.index(wanted)


def load_mmar(
    folder: Path,
    engines: EngineProvider | TorchScriptPool,
    default_device: str = "cpu",
    name: str | None = None,
    trusted: bool = True,
) -> LoadedModel:
    """Build a model from an MMAR folder; raises InvalidModel naming what is wrong.

    `engines` picks the model's engine (local or Triton); a bare TorchScriptPool runs it locally.
    `trusted=False` (uploaded models without --allow_uploaded_code) checks the config against the upload
    allow-list (`mmar.safety`, which also refuses a `models/model.pt2`: loading one unpickles) before any
    component is imported or built. A config naming a weight-free `inference.network` gets that transform in
    place of an engine (and needs no network file).

    Args:
        folder: the MMAR folder.
        engines: builds the model's engine.
        default_device: the device when the config names none ("cpu", "cuda", "cuda:N").
        name: the model name; None: the folder's name.
        trusted: False for uploads held to the allow-list (no `custom/` code, allowed components only).

    Raises:
        InvalidModel: (422) no config or network, an invalid or disallowed config, a component that cannot be
            built, an unknown `cache_until`, an `inference.crop_growth` the transforms cannot serve, or an
            engine that cannot be created.
    """
    if isinstance(engines, TorchScriptPool):
        engines = EngineFactory(engines, default_device)
    folder = folder.resolve()
    if not is_mmar(folder):
        raise InvalidModel(f"{folder.name}: no {CONFIG_PATH.as_posix()} found")
    config = read_config(folder / CONFIG_PATH)
    if not trusted:
        check_untrusted_mmar(folder, config)
    custom = CustomCode(folder)
    pre = with_fast_paths([build_component(c, custom) for c in config.pre_transforms])
    post = with_fast_paths([build_component(c, custom) for c in config.post_transforms])
    writer = build_component(config.writer, custom) if config.writer is not None else Writer(
        image=config.inference.output, json="result"
    )
    cache_index = _cache_index(config)
    growth = build_crop_growth(config, pre, post, cache_index)
    args = config.inference.args
    network = build_network(config, custom)
    model_file = find_model_file(folder) if network is None else None
    engine = None
    if network is None and (needs_model_file(config) or model_file is not None):
        if model_file is None:
            raise InvalidModel(f"{folder.name}: no network found: models/model.pt2 (torch.export) or "
                               "models/model.ts (TorchScript)")
        engine = engines.create(name or folder.name, model_file, config, device=args.sw_device or args.device)
    pipeline = ModelPipeline(
        name=name or folder.name,
        config=config,
        pre_transforms=pre,
        post_transforms=post,
        writer=writer,
        engine=engine,
        args=args,
        cache_index=cache_index,
        network=network,
        growth=growth,
    )
    return LoadedModel(name=name or folder.name, path=folder, config=config, pipeline=pipeline, model_file=model_file)

"""Serving a MONAI bundle with its own pipeline, read by MONAI's `ConfigParser` as `monai.bundle run` reads it.

What is read from `configs/inference.json` (or `.yaml`): `preprocessing`, `inferer`, `postprocessing` and
`network_def`, with the overrides the model zoo's configs expect for serving:

* `bundle_root` is the bundle's folder, `device` the server's device, `dataset_dir` the bundle's folder (never
  read), `load_pretrain` false (the weights come from the bundle, never from a download);
* `LoadImaged` takes the image the server already decoded (any upload format, or a session's) instead of
  reading a file: it becomes `aiaa_server.inference.transforms.LoadImaged`, which passes decoded images through;
* image writers (`SaveImaged`, `SaveImage`) are dropped: the server encodes the result itself;
* data sets, data loaders, evaluators and handlers are never built;
* inside `preprocessing` and `postprocessing` (plain `Compose`), MONAI's `Spacingd`, `AsDiscreted` and
  `ScaleIntensityRangePercentilesd` run through the same fast paths as an MMAR's (`inference.fast_paths`; same
  results, and an `Invertd` still inverts through the configured MONAI transforms).

The weights: the file the config's `CheckpointLoader` names (`checkpointloader` or a handler), else
`models/model.pt`, as a state dict (`torch.load(weights_only=True)`: pickled code is refused) loaded strictly
into `network_def`; without those, `models/model.pt2` or `models/model.ts` through the server's engines.

A bundle's config is code: `$` expressions are evaluated and `_target_` names imported when it is read, so an
uploaded bundle is refused unless the operator allowed uploaded code (`trusted`). The data keys are MONAI's
(`image` in, `pred` out), as the bundle's own evaluator uses them.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from aiaa_server.bundles.layout import METADATA_PATH, NETWORK_FILES, WEIGHTS_PATH, inference_config_path
from aiaa_server.bundles.metadata import BundleMetadata, read_metadata
from aiaa_server.bundles.serving import IMAGE_KEY, PRED_KEY, BundleInference, ClicksAsGuidance, ResultOnInputGrid
from aiaa_server.engines.base import Engine, EngineProvider, ModuleEngine
from aiaa_server.engines.factory import EngineFactory
from aiaa_server.engines.torchscript import TorchScriptPool, resolve_device
from aiaa_server.errors import InvalidModel
from aiaa_server.inference.fast_paths import with_fast_paths
from aiaa_server.inference.params import loads_bounded
from aiaa_server.inference.pipeline import ModelPipeline
from aiaa_server.inference.transforms import Writer
from aiaa_server.mmar.config import AIAAConfig, ModelType
from aiaa_server.mmar.loader import LoadedModel

MAX_CONFIG_BYTES = 16 * 2**20
SERVING_LOADER = "aiaa_server.inference.transforms.LoadImaged"
LOADER_TARGETS = frozenset({"LoadImaged", "LoadImageD", "LoadImageDict"})
WRITER_TARGETS = frozenset({"SaveImage", "SaveImaged", "SaveImageD", "SaveImageDict"})
BUNDLE_FORMAT = "monai_bundle"
_IMPORT_LOCK = threading.Lock()  # sys.path and the bundles' `scripts` package are process-wide


def refuse_untrusted_bundle(folder: Path) -> InvalidModel:
    """The refusal of an uploaded bundle when uploaded code is not allowed."""
    return InvalidModel(
        f"{folder.name} is a MONAI bundle; its config is code ($ expressions are evaluated and _target_ names "
        "imported when it is read), so uploaded bundles are served only when the server runs with "
        "--allow_uploaded_code", format=BUNDLE_FORMAT, needs="--allow_uploaded_code",
    )


def _target_name(node: dict[str, Any]) -> str | None:
    target = node.get("_target_")
    return target.rsplit(".", 1)[-1] if isinstance(target, str) else None


def serving_config(node: Any) -> Any:
    """A copy of a raw bundle config with image loaders swapped for the server's pass-through loader and
    image writers removed from every list they appear in."""
    if isinstance(node, dict):
        copied = {key: serving_config(value) for key, value in node.items()}
        if _target_name(node) in LOADER_TARGETS:
            copied["_target_"] = SERVING_LOADER
        return copied
    if isinstance(node, list):
        return [serving_config(item) for item in node
                if not (isinstance(item, dict) and _target_name(item) in WRITER_TARGETS)]
    return node


def read_bundle_config(path: Path) -> dict[str, Any]:
    """The raw inference config (JSON bounded like every config; YAML through MONAI's reader).

    Raises:
        InvalidModel: an unreadable or oversized file, invalid JSON/YAML, or not a mapping.
    """
    from monai.bundle import ConfigParser

    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise InvalidModel(f"{path.name} is larger than {MAX_CONFIG_BYTES // 2**20} MiB")
        if path.suffix == ".json":
            raw = loads_bounded(path.read_bytes(), what=path.name, error=InvalidModel)
        else:
            raw = ConfigParser.load_config_file(path)
    except InvalidModel:
        raise
    except Exception as exc:
        raise InvalidModel(f"cannot read {path.name}: {exc}") from exc
    if not isinstance(raw, dict):
        raise InvalidModel(f"{path.name} must hold a mapping")
    return raw


@contextlib.contextmanager
def bundle_imports(folder: Path) -> Iterator[None]:
    """While building: the bundle's own `scripts` package importable (as `monai.bundle run` makes it), then
    forgotten again, so each bundle gets its own."""
    if not (folder / "scripts").is_dir():
        yield
        return
    with _IMPORT_LOCK:
        for name in [m for m in sys.modules if m == "scripts" or m.startswith("scripts.")]:
            del sys.modules[name]
        sys.path.insert(0, str(folder))
        try:
            yield
        finally:
            sys.path.remove(str(folder))
            for name in [m for m in sys.modules if m == "scripts" or m.startswith("scripts.")]:
                del sys.modules[name]


def bundle_parser(folder: Path, raw: dict[str, Any], metadata: dict[str, Any], device: torch.device) -> Any:
    """MONAI's `ConfigParser` over a raw bundle config (`serving_config` applied) with the serving overrides of
    the module docstring; call it and parse its parts inside `bundle_imports(folder)`."""
    from monai.bundle import ConfigParser

    parser = ConfigParser(serving_config(raw))
    parser.read_meta(metadata)
    overrides = {"bundle_root": str(folder), "device": device, "dataset_dir": str(folder), "load_pretrain": False}
    for key, value in overrides.items():
        if key == "bundle_root" or key in parser:
            parser[key] = value
    return parser


def parsed_part(parser: Any, key: str, folder: Path) -> Any:
    """The parsed config part `key` (e.g. `train#preprocessing`); InvalidModel naming it when it cannot be built."""
    try:
        return parser.get_parsed_content(key)
    except Exception as exc:
        raise InvalidModel(f"{folder.name}: cannot build the bundle's {key!r}: {exc}", part=key) from exc


def _checkpoint_ids(parser: Any) -> list[str]:
    """Config ids of the `load_path` of each `CheckpointLoader` (`checkpointloader`, then handlers)."""
    ids = []
    for key in ("checkpointloader",):
        node = parser.get(key)
        if isinstance(node, dict) and "load_path" in node:
            ids.append(f"{key}#load_path")
    handlers = parser.get("handlers")
    if isinstance(handlers, list):
        ids += [f"handlers#{i}#load_path" for i, h in enumerate(handlers)
                if isinstance(h, dict) and _target_name(h) == "CheckpointLoader" and "load_path" in h]
    return ids


def weights_path(parser: Any, folder: Path) -> Path | None:
    """The state dict the bundle's CheckpointLoader names (inside the bundle), else `models/model.pt`; None
    when neither exists."""
    for config_id in _checkpoint_ids(parser):
        value = parsed_part(parser, config_id, folder)
        candidate = Path(str(value))
        candidate = (candidate if candidate.is_absolute() else folder / candidate).resolve()
        if candidate.is_relative_to(folder) and candidate.is_file():
            return candidate
    default = folder / WEIGHTS_PATH
    return default if default.is_file() else None


def load_state_dict_file(path: Path) -> dict[str, Any]:
    """A state dict saved by `torch.save` (or a checkpoint holding one under "model"), loaded without pickle
    code (`weights_only=True`).

    Raises:
        InvalidModel: the file holds code, is not a state dict, or cannot be read.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InvalidModel(f"{path.name} is not a loadable state dict (weights_only): {exc}", file=path.name) from exc
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InvalidModel(f"{path.name} does not hold a state dict of tensors", file=path.name)
    return state


def _engine(folder: Path, parser: Any, name: str, config: AIAAConfig, engines: EngineProvider,
            device: torch.device) -> tuple[Engine, Path]:
    weights = weights_path(parser, folder)
    if weights is not None and "network_def" in parser:
        network = parsed_part(parser, "network_def", folder)
        if not isinstance(network, torch.nn.Module):
            raise InvalidModel(f"{folder.name}: network_def is a {type(network).__name__}, not a torch module")
        try:
            network.load_state_dict(load_state_dict_file(weights))
        except RuntimeError as exc:
            raise InvalidModel(f"{folder.name}: {weights.name} does not fit network_def: {exc}") from exc
        return ModuleEngine(network.to(device).eval(), device, name), weights
    for relative in NETWORK_FILES:
        if (folder / relative).is_file():
            return engines.create(name, folder / relative, config, device=str(device)), folder / relative
    raise InvalidModel(f"{folder.name}: no network: models/model.pt with network_def, models/model.pt2 or "
                       "models/model.ts")


def bundle_config(metadata: BundleMetadata) -> AIAAConfig:
    """The model as the rest of the server sees it: type, labels, description and version from the metadata."""
    meta_data: dict[str, Any] = {"format": BUNDLE_FORMAT}
    if metadata.model_type is ModelType.DEEPGROW:
        meta_data["deepgrow"] = "3D"
    inference: dict[str, Any] = {"input": IMAGE_KEY, "output": PRED_KEY, "meta_data": meta_data}
    shapes = metadata.declared_shapes
    if shapes is not None and metadata.is_classification:  # (C_in, *spatial) -> (C_out,): one score per class
        meta_data["spatial_dims"] = len(shapes[0]) - 1
        shapes = (shapes[0], shapes[1][:1])
    if shapes is not None:  # the upload's dry run (and a Triton model config) use the declared patch
        inference["AIAA"] = {"triton_model_config": {
            "max_batch_size": 1, "input": [{"name": "INPUT__0", "dims": shapes[0]}],
            "output": [{"name": "OUTPUT__0", "dims": shapes[1]}]}}
    return AIAAConfig.model_validate({
        "version": metadata.version, "type": metadata.model_type.value, "labels": metadata.labels,
        "description": metadata.description or metadata.name or metadata.task or "", "inference": inference,
    })


def load_bundle(folder: Path, engines: EngineProvider | TorchScriptPool, default_device: str = "cpu",
                name: str | None = None, trusted: bool = True) -> LoadedModel:
    """Build a served model from a MONAI bundle folder (see the module docstring).

    Args:
        folder: the bundle folder (`configs/metadata.json`, `configs/inference.json|yaml`, `models/`).
        engines: builds the engine of a `model.pt2` / `model.ts` network; a bare TorchScriptPool runs it locally.
        default_device: the device to run on ("cpu", "cuda", "cuda:N"; CUDA falls back to CPU).
        name: the model name; None: the folder's name.
        trusted: False for an upload without --allow_uploaded_code: refused, since the config is code.

    Raises:
        InvalidModel: (422) an untrusted bundle, unreadable metadata or config, a part that cannot be built,
            or weights that are missing or do not fit the network.
    """
    folder = folder.resolve()
    if not trusted:
        raise refuse_untrusted_bundle(folder)
    if isinstance(engines, TorchScriptPool):
        engines = EngineFactory(engines, default_device)
    config_path = inference_config_path(folder)
    if config_path is None:
        raise InvalidModel(f"{folder.name}: no configs/inference.json or .yaml found")
    metadata = read_metadata(folder / METADATA_PATH)
    model_name = name or folder.name
    config = bundle_config(metadata)
    device = resolve_device(None, default_device)
    with bundle_imports(folder):
        parser = bundle_parser(folder, read_bundle_config(config_path), metadata.model_dump(), device)
        preprocessing = parsed_part(parser, "preprocessing", folder)
        inferer = parsed_part(parser, "inferer", folder)
        postprocessing = parsed_part(parser, "postprocessing", folder) if "postprocessing" in parser else None
        engine, model_file = _engine(folder, parser, model_name, config, engines, device)
    interactive = config.type is ModelType.DEEPGROW
    classifier = config.type is ModelType.CLASSIFICATION  # probabilities, no image: nothing to restore
    # the preprocessing and postprocessing Compose run with the MMARs' fast paths inside (copies: an Invertd keeps
    # the configured preprocessing, and inverts through MONAI's own transforms)
    pre = with_fast_paths([ClicksAsGuidance(metadata.labels), preprocessing] if interactive else [preprocessing])
    post = with_fast_paths([*([postprocessing] if postprocessing is not None else []),
                            *([] if classifier else [ResultOnInputGrid()])])
    pipeline = ModelPipeline(
        name=model_name, config=config, pre_transforms=pre, post_transforms=post,
        writer=Writer(image=None, json=PRED_KEY) if classifier else Writer(image=PRED_KEY, json="result"),
        engine=None, args=config.inference.args,
        cache_index=0 if interactive else 1, network=BundleInference(inferer, engine),
    )
    return LoadedModel(name=model_name, path=folder, config=config, pipeline=pipeline, model_file=model_file)

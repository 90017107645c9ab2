"""Checking an upload before it is served: assembling the MMAR from its parts, schema, allowed code, dry run."""

from __future__ import annotations

import logging
import os
import zipfile
from pathlib import Path
from typing import Any

import torch

from aiaa_server.bundles.layout import METADATA_PATH, is_bundle
from aiaa_server.bundles.loader import bundle_config, refuse_untrusted_bundle
from aiaa_server.bundles.metadata import read_metadata
from aiaa_server.engines.exported import looks_like_exported_program
from aiaa_server.engines.torchscript import TorchScriptPool
from aiaa_server.errors import BadRequest, InvalidModel
from aiaa_server.inference.params import loads_bounded
from aiaa_server.mmar.archives import ArchiveLimits, extract_archive, locate_mmar_root
from aiaa_server.mmar.config import AIAAConfig, ModelType
from aiaa_server.mmar.folders import load_model_folder
from aiaa_server.mmar.loader import (
    CONFIG_PATH,
    MODEL_FILES,
    LoadedModel,
    find_model_file,
    is_mmar,
    needs_model_file,
    parse_config,
)
from aiaa_server.mmar.safety import check_untrusted_mmar

log = logging.getLogger(__name__)

MODEL_TS = Path("models") / "model.ts"
MODEL_PT2 = Path("models") / "model.pt2"
MAX_CONFIG_BYTES = 16 * 2**20
MAX_DRY_RUN_VOXELS = 256**3


def _looks_like_mmar_zip(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            return any(n.replace("\\", "/").endswith(CONFIG_PATH.as_posix()) for n in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _looks_like_torchscript(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names)


# ------------------------------------------------------------------------------------- assembling


def read_uploaded_config(path: Path) -> dict[str, Any]:
    """The uploaded `config_aiaa.json` as decoded JSON, once it has passed the schema.

    Raises:
        InvalidModel: (422) over MAX_CONFIG_BYTES, not UTF-8, invalid or too deeply nested JSON, or a config
            that does not fit the schema.
    """
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise InvalidModel(f"config_aiaa.json is larger than {MAX_CONFIG_BYTES // 2**20} MiB")
    try:
        raw = loads_bounded(path.read_bytes().decode("utf-8"), what="config_aiaa.json", error=InvalidModel)
    except UnicodeDecodeError as exc:
        raise InvalidModel(f"config is not valid JSON: {exc}") from exc
    parse_config(raw)
    return raw


def assemble_mmar(staging: Path, config_part: Path | None, data_part: Path | None, limits: ArchiveLimits) -> Path:
    """Turn the uploaded parts into an MMAR folder inside `staging` (forms a, b and c of the protocol).

    The forms: `config` alone, `config` + `data` (a TorchScript file, stored as `models/model.ts`, or a
    `torch.export` program, stored as `models/model.pt2`), or `data` alone (a zip or tar of an MMAR, which may
    hold `models/model.pt2` and/or `models/model.ts`). The parts are moved into the MMAR (an archive is deleted
    once extracted). A `.pt2` is loaded only with `--allow_uploaded_code` (`precheck_mmar`: it unpickles).

    Args:
        staging: the upload's private staging folder.
        config_part: the uploaded `config_aiaa.json`, or None.
        data_part: the uploaded network or MMAR archive, or None.
        limits: bounds on the archive's entries and extracted bytes.

    Returns:
        The MMAR folder, inside `staging`.

    Raises:
        BadRequest: (400) nothing uploaded, a TorchScript or torch.export `data` without `config`, or a zipped
            MMAR with one.
        InvalidModel: (422) an invalid config, or a `data` beside it that is a pickle or not a model archive.
        InvalidArchive: (400) an unreadable or unsafe archive, or one holding no MMAR.
        ArchiveTooLarge: (413) an archive over `limits`.
    """
    if config_part is None and data_part is None:
        raise BadRequest("nothing uploaded: send multipart `config` (config_aiaa.json) and/or `data` "
                         "(model.ts, model.pt2, or a zipped MMAR)")
    if config_part is None:
        assert data_part is not None
        if _looks_like_torchscript(data_part) or looks_like_exported_program(data_part):
            raise BadRequest("data is a model file (TorchScript or torch.export), not a zipped MMAR: send its "
                             "config_aiaa.json as `config` too")
        extracted = staging / "extract"
        extract_archive(data_part, extracted, limits)
        data_part.unlink()
        return locate_mmar_root(extracted)
    read_uploaded_config(config_part)
    mmar = staging / "mmar"
    (mmar / CONFIG_PATH.parent).mkdir(parents=True)
    os.replace(config_part, mmar / CONFIG_PATH)
    if data_part is not None:
        _check_network_file(data_part)
        target = MODEL_PT2 if looks_like_exported_program(data_part) else MODEL_TS
        (mmar / target.parent).mkdir(parents=True)
        os.replace(data_part, mmar / target)
    return mmar


def _check_network_file(path: Path) -> None:
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:1] == b"\x80":
        raise InvalidModel("data is a pickled checkpoint, not TorchScript: export the network with "
                           "torch.jit.script/trace and torch.jit.save (pickles are never loaded)")
    if head[:4] != b"PK\x03\x04":
        raise InvalidModel("data is not a TorchScript model or torch.export program (torch.jit.save and "
                           "torch.export.save write zip archives)")
    if _looks_like_mmar_zip(path):
        raise BadRequest("data is a zipped MMAR: upload it alone as `data`, without `config`")


# ------------------------------------------------------------------------------------- validation


def _dims_known(dims: list[int]) -> bool:
    return bool(dims) and all(d > 0 for d in dims)


def dry_run_shapes(config: AIAAConfig) -> tuple[tuple[int, ...], tuple[int, ...] | None] | None:
    """(input shape, expected output shape or None) the config declares, or None where it declares none.

    The first `triton_model_config` (TRITON, then AIAA) whose first input has fixed dims gives them (with a
    batch axis of 1 when `max_batch_size` > 0); else a segmentation model's `roi` gives (1, 1, *roi).
    """
    for backend in (config.inference.TRITON, config.inference.AIAA):
        tmc = backend.triton_model_config if backend is not None else None
        if tmc is None or not tmc.input or not _dims_known(tmc.input[0].dims):
            continue
        batch = (1,) if tmc.max_batch_size > 0 else ()
        out = tuple(batch + tuple(tmc.output[0].dims)) if tmc.output and _dims_known(tmc.output[0].dims) else None
        return tuple(batch + tuple(tmc.input[0].dims)), out
    roi = config.inference.args.roi
    if config.type is ModelType.SEGMENTATION and roi and len(roi) == config.spatial_dims and _dims_known(roi):
        return (1, 1, *roi), None
    return None


def dry_run(model: LoadedModel) -> None:
    """Run the network once on zeros of the declared input shape; refuse models that fail or mis-shape.

    Skipped for models without a network or a declared shape, and inputs over MAX_DRY_RUN_VOXELS.

    Raises:
        InvalidModel: (422) the network fails or returns no tensor, its output differs from the declared
            output shape, or (none declared) a dense model changes the spatial size.
    """
    engine = model.pipeline.engine or getattr(model.pipeline.network, "engine", None)  # a bundle's network
    shapes = dry_run_shapes(model.config)
    if engine is None or shapes is None:
        return
    shape, expected = shapes
    voxels = 1
    for d in shape:
        voxels *= d
    if voxels > MAX_DRY_RUN_VOXELS:
        log.info("model %s: dry run skipped (input %s too large)", model.name, list(shape))
        return
    try:
        output = engine(torch.zeros(shape, dtype=torch.float32, device=engine.device))
    except Exception as exc:
        raise InvalidModel(f"dry run failed: the network does not accept an input of shape {list(shape)}: {exc}",
                           input_shape=list(shape)) from exc
    if not isinstance(output, torch.Tensor):
        raise InvalidModel(f"dry run failed: the network returned {type(output).__name__}, not a tensor")
    got = tuple(output.shape)
    if expected is not None and got != expected:
        raise InvalidModel(f"dry run failed: output shape {list(got)} differs from the declared {list(expected)}",
                           input_shape=list(shape), output_shape=list(got))
    if expected is None and config_is_dense(model.config) and got[2:] != shape[2:]:
        raise InvalidModel(
            f"dry run failed: input {list(shape)} gave output {list(got)}; a segmentation network must keep "
            "the spatial size", input_shape=list(shape), output_shape=list(got),
        )


def config_is_dense(config: AIAAConfig) -> bool:
    """Whether the network outputs a voxel map of its input's spatial size (segmentation, annotation, deepgrow)."""
    return config.type in (ModelType.SEGMENTATION, ModelType.ANNOTATION, ModelType.DEEPGROW)


def precheck_mmar(mmar: Path, allow_code: bool) -> AIAAConfig:
    """The checks that need no code at all: schema, allowed components and arguments, network present.
    Cheap, so the server runs them itself before it starts a sandbox for the rest. A MONAI bundle is refused
    outright without `allow_code` (its config is code); with it, its metadata is checked.

    Args:
        mmar: the staged MMAR folder.
        allow_code: `--allow_uploaded_code`: skip the upload allow-list.

    Returns:
        The parsed config.

    Raises:
        InvalidModel: (422) no or an invalid config, a disallowed component or argument, without `allow_code`
            a `models/model.pt2` with no TorchScript file beside it, or no network file for a model type that
            needs one (all but pipeline models and weight-free networks); an uploaded bundle without
            `allow_code`, or its invalid metadata.
    """
    if not is_mmar(mmar) and is_bundle(mmar):
        if not allow_code:
            raise refuse_untrusted_bundle(mmar)
        return bundle_config(read_metadata(mmar / METADATA_PATH))
    if not is_mmar(mmar):
        raise InvalidModel(f"no {CONFIG_PATH.as_posix()} in the upload")
    config = parse_config(read_uploaded_config(mmar / CONFIG_PATH))
    if not allow_code:
        drop_untrusted_program(mmar)
        check_untrusted_mmar(mmar, config)
    if needs_model_file(config) and find_model_file(mmar) is None:
        raise InvalidModel(f"a {config.type.value} model needs its network: send `data` "
                           "(models/model.ts, TorchScript)")
    return config


def drop_untrusted_program(mmar: Path) -> None:
    """Without `--allow_uploaded_code`: delete an uploaded `models/model.pt2` that has a TorchScript file beside
    it, so the upload is served from that file and the `.pt2` is never loaded (`torch.export.load` unpickles, so
    it could run code; see `mmar.safety`). A `.pt2` alone stays, for `check_untrusted_mmar` to refuse."""
    program = mmar / MODEL_PT2
    if program.is_file() and any((mmar / name).is_file() for name in MODEL_FILES if name != MODEL_PT2):
        program.unlink()
        log.warning("upload %s: models/model.pt2 dropped (torch.export programs are loaded only with "
                    "--allow_uploaded_code); serving its TorchScript file", mmar.name)


def validate_mmar(mmar: Path, name: str, allow_code: bool, default_device: str) -> LoadedModel:
    """Full check of a staged MMAR: `precheck_mmar`, network load (`.pt2` or TorchScript), dry run. Returns the
    trial load.

    Args:
        mmar: the staged MMAR folder.
        name: the model name.
        allow_code: `--allow_uploaded_code`: `custom/` code and any component are allowed.
        default_device: the device when the config names none.

    Raises:
        InvalidModel: (422) whatever check fails first, naming it.
    """
    precheck_mmar(mmar, allow_code)
    # A private pool: nothing is shared yet.
    model = load_model_folder(mmar, TorchScriptPool(), default_device, name=name, trusted=allow_code)
    dry_run(model)
    return model

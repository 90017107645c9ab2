"""What an uploaded (untrusted) config may name: an allow-list of components and a check of every argument.

MONAI turns many string arguments into code: `LoadImage(reader="os.system")` calls `pydoc.locate` on the
string, bundle-style configs evaluate `$expressions` and `_target_` names, dtype strings go through
lookups. Checking the component's class is therefore not enough: every value that reaches a constructor
is checked too, before anything is imported or instantiated.

Rules for an upload (operator-provided model folders are trusted and skip them):

* components: only the classes of `aiaa_server.inference.transforms` / `click_transforms` /
  `classical_transforms` (named `aiaa.transforms.X` or by short name) and the pure tensor transforms listed
  in `MONAI_TRANSFORMS` (named by short name, `monai.transforms.X`, a `monai.transforms.*` sub-module path,
  or `monai.apps.deepgrow.transforms.X`). IO transforms (readers, writers), `Lambda` and anything else are
  out. A weight-free `inference.network` may only be a class of `classical_transforms` (`RegionGrowd`), its
  arguments checked like any component's (and range-checked by the class itself when the model loads).
* arguments (recursively, keys too): no `$`/`@`/`%` expressions or references, no `_target_`-style keys,
  no dunder names, no dotted path whose first part is an importable module, no bare name of a callable
  builtin (`eval`, `open`, ...) beyond a few harmless words, no absolute, home or `..` paths, no argument
  named like a path (`output_dir`, `*_file`, ...), and dtype arguments only from `SAFE_DTYPES`.
* network: no `models/model.pt2`. `torch.export.load` unpickles parts of the archive (`torch.load(...,
  weights_only=False)` and `pickle.loads` in torch's `torch/export/pt2_archive/_package.py`), so a crafted
  `.pt2` runs code as it loads: it is uploaded code. TorchScript (`models/model.ts`) loads without pickle code.
  (An upload with both is served from its `model.ts`: `validation.drop_untrusted_program` deletes the `.pt2`.)
"""

from __future__ import annotations

import builtins
import importlib.util
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from aiaa_server.errors import InvalidModel
from aiaa_server.mmar.components import translate_legacy
from aiaa_server.mmar.config import AIAAConfig, ComponentConfig

MAX_ARG_DEPTH = 16
ALLOW_FLAG = "--allow_uploaded_code"
EXPORTED_PROGRAM = Path("models") / "model.pt2"

# Pure array/tensor transforms (each also allowed with its dictionary suffix d / D / Dict).
MONAI_TRANSFORMS = frozenset({
    # intensity
    "ScaleIntensity", "ScaleIntensityRange", "ScaleIntensityRangePercentiles", "NormalizeIntensity",
    "ThresholdIntensity", "ShiftIntensity", "ClipIntensityPercentiles", "MaskIntensity", "HistogramNormalize",
    # spatial
    "Spacing", "Orientation", "Resize", "Zoom", "Flip", "Rotate90", "SpatialPad", "BorderPad", "DivisiblePad",
    "CropForeground", "CenterSpatialCrop", "SpatialCrop", "ResizeWithPadOrCrop", "Transpose",
    # utility
    "EnsureChannelFirst", "EnsureType", "CastToType", "ToTensor", "ToNumpy", "SqueezeDim", "ConcatItems",
    "CopyItems", "DeleteItems", "SelectItems", "Identity", "SplitDim", "RepeatChannel", "AddCoordinateChannels",
    "AsChannelLast",
    # post-processing
    "Activations", "AsDiscrete", "KeepLargestConnectedComponent", "FillHoles", "RemoveSmallObjects",
    "LabelFilter", "LabelToContour",
    # monai.apps.deepgrow.transforms
    "AddGuidanceSignald", "AddInitialSeedPointd", "SpatialCropForegroundd", "AddGuidanceFromPointsd",
    "SpatialCropGuidanced", "ResizeGuidanced", "RestoreLabeld", "Fetch2DSliced", "FindAllValidSlicesd",
    "FindDiscrepancyRegionsd",
})
DICT_SUFFIXES = ("d", "D", "Dict")
NETWORK_MODULE = "aiaa_server.inference.classical_transforms"
OUR_TRANSFORM_MODULES = ("aiaa_server.inference.transforms", "aiaa_server.inference.click_transforms",
                         NETWORK_MODULE)
MONAI_PREFIXES = ("monai.transforms.", "monai.apps.deepgrow.transforms.")

SAFE_DTYPES = frozenset({
    "bool", "uint8", "int8", "uint16", "int16", "uint32", "int32", "int64", "float16", "float32", "float64",
    "float", "int", "np.float32", "np.float64", "np.uint8", "np.int16", "np.int32", "np.int64",
    "numpy.float32", "numpy.float64", "numpy.uint8", "numpy.int16", "numpy.int32", "numpy.int64",
    "torch.float32", "torch.float64", "torch.float16", "torch.uint8", "torch.int16", "torch.int32", "torch.int64",
})
# Builtin callables that MONAI option values legitimately spell (reductions, type names).
HARMLESS_BUILTINS = frozenset({
    "sum", "max", "min", "abs", "all", "any", "round", "float", "int", "bool", "str", "list", "dict", "tuple", "set",
    "range", "slice", "len", "filter", "map", "zip", "format",
})
CONFIG_KEYWORDS = frozenset({"_target_", "_requires_", "_disabled_", "_mode_", "_desc_"})
PATH_ARGUMENT = re.compile(r"(^|_)(dir|directory|path|file|filename|folder|root)s?$", re.IGNORECASE)
DOTTED_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$")
IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
RESULT_ARGUMENTS = frozenset({"image", "json"})  # aiaa.transforms.Writer's keys: data keys, not paths


def _refuse(message: str, **details: object) -> InvalidModel:
    return InvalidModel(f"{message}; uploads may not run code unless the server runs with {ALLOW_FLAG}",
                        **details)


def _monai_base(short: str) -> str | None:
    """The allow-list entry a MONAI short name stands for (`Spacingd` → `Spacing`), or None."""
    if short in MONAI_TRANSFORMS:
        return short
    for suffix in DICT_SUFFIXES:
        if short.endswith(suffix) and short[: -len(suffix)] in MONAI_TRANSFORMS:
            return short[: -len(suffix)]
    return None


def _our_transform(short: str, modules: tuple[str, ...] = OUR_TRANSFORM_MODULES) -> bool:
    for module_name in modules:
        module = sys.modules.get(module_name) or importlib.import_module(module_name)
        found = getattr(module, short, None)
        if isinstance(found, type) and found.__module__ == module_name and not short.startswith("_"):
            return True
    return False


def check_component_name(name: str) -> None:
    """Refuse a component an upload may not use, from its name alone (nothing is imported for it).

    Allowed: our transform classes (as `aiaa.transforms.X`, `aiaa.apps.X` or short name), and the entries of
    MONAI_TRANSFORMS (with a d / D / Dict suffix too) by short name or under `monai.transforms.` /
    `monai.apps.deepgrow.transforms.`; legacy names are translated first.

    Raises:
        InvalidModel: (422) any other name.
    """
    name, _ = translate_legacy(name, {})
    short = name.rsplit(".", 1)[-1]
    if name.startswith("aiaa."):
        allowed = name.startswith(("aiaa.transforms.", "aiaa.apps.")) and _our_transform(short)
    elif name.startswith(MONAI_PREFIXES) or "." not in name:
        allowed = _monai_base(short) is not None or ("." not in name and _our_transform(short))
        allowed = allowed and all(IDENTIFIER.match(part) for part in name.split("."))
    else:
        allowed = False
    if not allowed:
        raise _refuse(f"component {name!r} is not allowed in an uploaded model (only MONAI's array transforms "
                      "and aiaa.* components; no readers, writers, lambdas or other code)", component=name)


def _is_importable_root(name: str) -> bool:
    root = name.split(".", 1)[0]
    if root in sys.modules or hasattr(builtins, root):
        return True
    try:
        return importlib.util.find_spec(root) is not None  # a top-level spec: finds, never executes
    except (ImportError, ValueError):
        return True  # undecidable: treat as code


def string_names_code(value: str) -> str | None:
    """Why a string argument could reach code or the file system, or None when it is plain data.

    Returns:
        A reason for the message ("a dunder name", "a file system path", ...) for expressions and references
        (`$`, `@`, `%`), dunders, dotted names of importable modules, names of builtin callables outside
        HARMLESS_BUILTINS, and absolute, home, drive or `..` paths; else None.
    """
    text = value.strip()
    if text[:1] in ("$", "@", "%"):
        return "an expression or reference ($, @, %)"
    if "__" in text:
        return "a dunder name"
    if DOTTED_NAME.match(text) and _is_importable_root(text):
        return "a dotted name of importable code"
    if IDENTIFIER.match(text) and text not in HARMLESS_BUILTINS and callable(getattr(builtins, text, None)):
        return "the name of a builtin callable"
    if text.startswith(("/", "~", "\\")) or re.match(r"^[A-Za-z]:[\\/]", text) or ".." in text.replace("\\", "/").split("/"):
        return "a file system path"
    return None


def _walk(value: Any, where: str, depth: int = 0) -> Iterator[tuple[str, Any, bool]]:
    """(location, value, is_key) for every key and leaf below `value` (bounded depth)."""
    if depth > MAX_ARG_DEPTH:
        raise InvalidModel(f"{where}: arguments nested deeper than {MAX_ARG_DEPTH} levels", argument=where)
    if isinstance(value, dict):
        for key, item in value.items():
            yield f"{where}.{key}", key, True
            yield from _walk(item, f"{where}.{key}", depth + 1)
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _walk(item, f"{where}[{index}]", depth + 1)
    else:
        yield where, value, False


def check_arguments(component: ComponentConfig, where: str) -> None:
    """Refuse argument values an upload may not pass (see the module docstring).

    Args:
        component: the config entry; its `args` and its extra keys are checked, recursively.
        where: the entry's location for messages, e.g. `pre_transforms[2](Spacingd)`.

    Raises:
        InvalidModel: (422) a dtype outside SAFE_DTYPES, a path-like argument, a config keyword key
            (`_target_`, ...), a string that names code or a path, or nesting deeper than MAX_ARG_DEPTH.
    """
    args = {**component.args, **(component.model_extra or {})}
    for key, value in args.items():
        location = f"{where}.{key}"
        if "dtype" in key.lower() and value is not None and not (isinstance(value, str) and value in SAFE_DTYPES):
            raise _refuse(f"{location}: dtype {value!r} is not one of {', '.join(sorted(SAFE_DTYPES))}",
                          argument=location)
        if PATH_ARGUMENT.search(key) and key not in RESULT_ARGUMENTS and value not in (None, "", False):
            raise _refuse(f"{location}: uploaded models may not name files or folders", argument=location)
    for location, item, is_key in _walk(args, where):
        if is_key and str(item) in CONFIG_KEYWORDS:
            raise _refuse(f"{location}: {item!r} keys instantiate code", argument=location)
        if isinstance(item, str):
            reason = string_names_code(item)
            if reason is not None:
                raise _refuse(f"{location}: {item!r} is {reason}", argument=location, value=item[:200])


def check_upload_config(config: AIAAConfig) -> None:
    """Every component and argument of an uploaded config, before anything is imported or built.

    Checks the pre/post-transforms, the writer (only `aiaa.transforms.Writer`), the weight-free network (only
    `aiaa.transforms.*` classes of NETWORK_MODULE), the inference backends (only `aiaa.inference.*`) and `$`
    expressions anywhere among the config's extra keys.

    Raises:
        InvalidModel: (422) the first thing an upload may not use, naming where it is.
    """
    sections = {"pre_transforms": config.pre_transforms, "post_transforms": config.post_transforms}
    for section, components in sections.items():
        for index, component in enumerate(components):
            check_component_name(component.name)
            check_arguments(component, f"{section}[{index}]({component.name})")
    if config.writer is not None:
        if config.writer.name.rsplit(".", 1)[-1] != "Writer" or not _our_transform("Writer"):
            raise _refuse(f"writer {config.writer.name!r} is not allowed (use aiaa.transforms.Writer)",
                          component=config.writer.name)
        check_component_name(config.writer.name)
        check_arguments(config.writer, f"writer({config.writer.name})")
    network = config.inference.network
    if network is not None:
        short = network.name.rsplit(".", 1)[-1]
        if not (network.name in (short, f"aiaa.transforms.{short}") and _our_transform(short, (NETWORK_MODULE,))):
            raise _refuse(f"inference.network {network.name!r} is not allowed (only the weight-free networks of "
                          "aiaa.transforms, such as aiaa.transforms.RegionGrowd)", component=network.name)
        check_arguments(network, f"inference.network({network.name})")
    for backend_name, backend in (("AIAA", config.inference.AIAA), ("TRITON", config.inference.TRITON)):
        if backend is None:
            continue
        if not backend.name.startswith("aiaa.inference."):
            raise _refuse(f"inference.{backend_name}.name {backend.name!r} is not an aiaa.inference.* backend",
                          component=backend.name)
        check_arguments(backend, f"inference.{backend_name}")
    for location, item, _ in _walk(config.model_extra or {}, "config"):
        if isinstance(item, str) and item.strip()[:1] == "$":
            raise _refuse(f"{location}: expressions are not allowed", argument=location)


def check_untrusted_mmar(folder: Path, config: AIAAConfig) -> None:
    """An uploaded MMAR: no `custom/` code, no `models/model.pt2`, and a config that passes `check_upload_config`.

    Raises:
        InvalidModel: (422) a `custom/` folder holding any file, a `models/model.pt2` (torch.export programs
            unpickle as they load: see the module docstring), or a config `check_upload_config` refuses.
    """
    custom = folder / "custom"
    if custom.is_dir() and any(p.is_file() for p in custom.rglob("*")):
        raise _refuse("the MMAR has a custom/ folder (Python code)", folder="custom/")
    if (folder / EXPORTED_PROGRAM).exists():
        raise _refuse(f"the MMAR has {EXPORTED_PROGRAM.as_posix()}: torch.export.load unpickles it, which can run "
                      "code (upload the network as TorchScript, models/model.ts, instead)", file=EXPORTED_PROGRAM.as_posix())
    check_upload_config(config)


__all__ = ["MONAI_TRANSFORMS", "SAFE_DTYPES", "check_component_name", "check_untrusted_mmar", "check_upload_config", "string_names_code"]

"""Building pipeline components (transforms, writers) from `{"name", "args"}` entries.

Names may be short MONAI names (`Spacingd`), fully qualified dotted paths (`monai.transforms.Spacingd`,
`mypkg.MyTransform`), Clara's own `aiaa.transforms.*` names (served by our implementations), or classes
from the MMAR's `custom/` folder (`custom.CropAroundPointsd`, `my_module.MyTransform`). Transforms removed
from MONAI but used by real Clara 4.x configs are translated to their current equivalents.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiaa_server.errors import InvalidModel
from aiaa_server.mmar.config import ComponentConfig

# Modules searched, in order, for short names and for `aiaa.*` / `monai.*` names that no longer exist.
_SHORT_NAME_MODULES = (
    "aiaa_server.inference.transforms",
    "aiaa_server.inference.click_transforms",
    "aiaa_server.inference.classical_transforms",
    "monai.transforms",
    "monai.apps.deepgrow.transforms",
)


def _add_channel(args: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    args = {k: v for k, v in args.items() if k in ("keys", "allow_missing_keys")}
    return "EnsureChannelFirstd", {**args, "channel_dim": "no_channel"}


def _as_channel_first(args: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    args = dict(args)
    args["channel_dim"] = args.pop("channel_dim", -1)
    return "EnsureChannelFirstd", args


def _as_discrete(args: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    args = dict(args)
    threshold_values = args.pop("threshold_values", None)
    logit_thresh = args.pop("logit_thresh", 0.5)
    if threshold_values and "threshold" not in args:
        args["threshold"] = logit_thresh
    n_classes = args.pop("n_classes", None)
    if args.get("to_onehot") is True:
        args["to_onehot"] = n_classes
    elif args.get("to_onehot") is False:
        args["to_onehot"] = None
    return "AsDiscreted", args


def _largest_cc(args: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    args = {k: v for k, v in args.items() if k in ("keys", "applied_labels", "independent", "connectivity")}
    args.setdefault("applied_labels", [1])
    return "KeepLargestConnectedComponentd", args


# Old name → function giving (current name, translated args).
COMPAT_TRANSLATIONS: dict[str, Callable[[dict[str, Any]], tuple[str, dict[str, Any]]]] = {
    "AddChanneld": _add_channel,
    "AsChannelFirstd": _as_channel_first,
    "AsDiscreted": _as_discrete,
    "LargestCCd": _largest_cc,
    # The server decodes uploads itself (and caches them per session); our LoadImaged passes them through.
    "LoadImaged": lambda args: ("LoadImaged", args),
}


class CustomCode:
    """The MMAR's `custom/` folder imported as a private package, so two models' modules never clash."""

    def __init__(self, mmar_dir: Path) -> None:
        self.folder = mmar_dir / "custom"
        digest = hashlib.sha1(str(mmar_dir.resolve()).encode()).hexdigest()[:12]
        self.package = f"aiaa_custom_{digest}"
        self._registered = False

    @property
    def exists(self) -> bool:
        """Whether the MMAR has a `custom/` folder."""
        return self.folder.is_dir()

    def module_names(self) -> list[str]:
        """The top-level modules of `custom/`: its `*.py` files, then its packages (folders with `__init__.py`)."""
        if not self.exists:
            return []
        return sorted(p.stem for p in self.folder.glob("*.py") if p.stem != "__init__") + sorted(
            p.name for p in self.folder.iterdir() if p.is_dir() and (p / "__init__.py").exists()
        )

    def _register(self) -> None:
        if self._registered:
            return
        init = self.folder / "__init__.py"
        if init.exists():
            spec = importlib.util.spec_from_file_location(
                self.package, init, submodule_search_locations=[str(self.folder)]
            )
            assert spec is not None and spec.loader is not None
            package = importlib.util.module_from_spec(spec)
            sys.modules[self.package] = package
            spec.loader.exec_module(package)
        else:
            package = types.ModuleType(self.package)
            package.__path__ = [str(self.folder)]
            sys.modules[self.package] = package
        self._registered = True

    def find(self, dotted: str) -> type | None:
        """Resolve `custom.X`, `custom.module.X` or `module.X` against the custom folder.

        Imports (so runs) the folder's code: a bare `X` is looked up in `__init__.py`, then in every module.

        Returns:
            The object found, or None (no `custom/` folder, or no such module or name).
        """
        if not self.exists:
            return None
        parts = dotted.split(".")
        if parts[0] == "custom":
            parts = parts[1:]
        if not parts:
            return None
        self._register()
        if len(parts) == 1:
            package = sys.modules[self.package]
            if hasattr(package, parts[0]):
                return getattr(package, parts[0])
            for module_name in self.module_names():
                module = importlib.import_module(f"{self.package}.{module_name}")
                if hasattr(module, parts[0]):
                    return getattr(module, parts[0])
            return None
        module_path, attr = ".".join(parts[:-1]), parts[-1]
        if module_path.split(".")[0] not in self.module_names():
            return None
        module = importlib.import_module(f"{self.package}.{module_path}")
        return getattr(module, attr, None)


def _import_dotted(dotted: str) -> Any | None:
    module_path, _, attr = dotted.rpartition(".")
    if not module_path:
        return None
    try:
        module = importlib.import_module(module_path)
    except ImportError:
        return None
    return getattr(module, attr, None)


def _find_short(name: str) -> Any | None:
    for module_path in _SHORT_NAME_MODULES:
        module = importlib.import_module(module_path)
        if hasattr(module, name):
            return getattr(module, name)
    return None


def _lookup(name: str, short: str, custom: CustomCode | None) -> Any | None:
    in_custom = custom.find if custom is not None else (lambda _name: None)
    if "." not in name:
        return _find_short(name) or in_custom(name)
    if name.startswith("aiaa."):
        return _find_short(short)
    if name.startswith("custom."):
        return in_custom(name)
    found = in_custom(name) or _import_dotted(name)
    if found is None and name.startswith("monai."):  # moved between MONAI modules over the years
        found = _find_short(short)
    return found


def translate_legacy(name: str, args: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(name, args) with Clara-era names translated to their current equivalents; others unchanged.

    Applies to short, `monai.*` and `aiaa.*` names whose last part is in COMPAT_TRANSLATIONS (`AddChanneld`,
    `AsChannelFirstd`, `AsDiscreted`, `LargestCCd`, `LoadImaged`).
    """
    short = name.rsplit(".", 1)[-1]
    if ("." not in name or name.startswith(("monai.", "aiaa."))) and short in COMPAT_TRANSLATIONS:
        return COMPAT_TRANSLATIONS[short](args)
    return name, args


def resolve_component(name: str, args: dict[str, Any], custom: CustomCode | None = None) -> tuple[Any, dict[str, Any]]:
    """Find the class a config names and the arguments to build it with (after compat translation).

    Args:
        name: a short name (searched in our transforms, then MONAI's, then `custom/`), an `aiaa.*` name
            (searched by its last part the same way, without `custom/`), a `custom.*` name, or a dotted path
            (a `custom/` module first, then any importable module).
        args: the constructor arguments from the config.
        custom: the MMAR's `custom/` code; None: not searched.

    Raises:
        InvalidModel: nothing of that name is found.
    """
    name, args = translate_legacy(name, args)
    short = name.rsplit(".", 1)[-1]
    found = _lookup(name, short, custom)
    if found is None:
        raise InvalidModel(
            f"unknown component {name!r}: not a MONAI transform, an aiaa.* component, "
            "an importable dotted path, or a class in the MMAR's custom/ folder",
            component=name,
        )
    return found, args


# MONAI announces (FutureWarning, at every build) that these defaults will change; passing today's value keeps
# the configs' meaning when it does, and keeps the warning out of every server start.
_RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))
PINNED_DEFAULTS: dict[str, dict[str, Any]] = {"Orientation": {"labels": _RAS_LABELS},
                                              "Orientationd": {"labels": _RAS_LABELS}}


def build_component(config: ComponentConfig, custom: CustomCode | None = None) -> Any:
    """Instantiate the component a config entry names with its `args` (see `resolve_component`).

    Raises:
        InvalidModel: an unknown name, or a constructor that fails with these arguments.
    """
    cls, args = resolve_component(config.name, dict(config.args), custom)
    args = {**PINNED_DEFAULTS.get(getattr(cls, "__name__", ""), {}), **args}
    try:
        return cls(**args)
    except Exception as exc:
        raise InvalidModel(f"cannot build {config.name!r} with args {config.args}: {exc}", component=config.name) from exc

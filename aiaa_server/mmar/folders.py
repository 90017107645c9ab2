"""Which model format a folder holds (a Clara MMAR or a MONAI bundle), and loading either."""

from __future__ import annotations

from pathlib import Path

from aiaa_server.bundles.layout import is_bundle
from aiaa_server.bundles.loader import load_bundle
from aiaa_server.engines.base import EngineProvider
from aiaa_server.engines.torchscript import TorchScriptPool
from aiaa_server.mmar.loader import LoadedModel, is_mmar, load_mmar


def is_model_folder(folder: Path) -> bool:
    """Whether `folder` holds an MMAR (`config/config_aiaa.json`) or a MONAI bundle (`configs/metadata.json`
    and `configs/inference.json|yaml`)."""
    return is_mmar(folder) or is_bundle(folder)


def load_model_folder(folder: Path, engines: EngineProvider | TorchScriptPool, default_device: str = "cpu",
                      name: str | None = None, trusted: bool = True) -> LoadedModel:
    """Load the MMAR or bundle in `folder` (an MMAR wins where a folder holds both); see `load_mmar` and
    `load_bundle` for the arguments.

    Raises:
        InvalidModel: (422) neither format, or whatever the format's loader refuses.
    """
    if not is_mmar(folder) and is_bundle(folder):
        return load_bundle(folder, engines, default_device, name=name, trusted=trusted)
    return load_mmar(folder, engines, default_device, name=name, trusted=trusted)

"""Where a MONAI bundle keeps its files, and telling a bundle folder from an MMAR (no heavy imports)."""

from __future__ import annotations

from pathlib import Path

METADATA_PATH = Path("configs") / "metadata.json"
INFERENCE_CONFIGS = tuple(Path("configs") / f"inference.{ext}" for ext in ("json", "yaml", "yml"))
TRAIN_CONFIGS = tuple(Path("configs") / f"train.{ext}" for ext in ("json", "yaml", "yml"))
WEIGHTS_PATH = Path("models") / "model.pt"
NETWORK_FILES = (Path("models") / "model.pt2", Path("models") / "model.ts")


def _first_file(folder: Path, candidates: tuple[Path, ...]) -> Path | None:
    return next((folder / relative for relative in candidates if (folder / relative).is_file()), None)


def inference_config_path(folder: Path) -> Path | None:
    """The bundle's inference config (`configs/inference.json`, else `.yaml`, else `.yml`); None when absent."""
    return _first_file(folder, INFERENCE_CONFIGS)


def train_config_path(folder: Path) -> Path | None:
    """The bundle's training config (`configs/train.json`, else `.yaml`, else `.yml`); None when absent."""
    return _first_file(folder, TRAIN_CONFIGS)


def is_bundle(folder: Path) -> bool:
    """Whether `folder` holds a MONAI bundle: `configs/metadata.json` and an inference config."""
    return (folder / METADATA_PATH).is_file() and inference_config_path(folder) is not None

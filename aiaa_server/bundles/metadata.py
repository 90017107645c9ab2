"""A bundle's `configs/metadata.json`: what `GET /v1/models` shows of it (name, version, description, labels,
type), read as bounded JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from aiaa_server.errors import InvalidModel, format_validation_errors
from aiaa_server.inference.params import loads_bounded
from aiaa_server.mmar.config import ModelType

MAX_METADATA_BYTES = 4 * 2**20
BACKGROUND_NAMES = frozenset({"background", "_background_", "bg"})
CLASS_OUTPUT_FORMATS = frozenset({"classes", "probabilities", "logits"})  # output `type`/`format` of a classifier


class TensorFormat(BaseModel):
    """One entry of `network_data_format.inputs` / `outputs`.

    Attributes:
        num_channels: channels of the tensor (an image's intensity channels plus any guidance channels).
        spatial_shape: the patch or input shape, as the model zoo writes it (numbers or strings like "16*n").
        channel_def: channel index (as a string) -> what the channel holds, e.g. {"0": "background", "1": "spleen"}.
    """

    model_config = ConfigDict(extra="allow")

    num_channels: int | None = Field(None, ge=1, le=4096)
    spatial_shape: list[Any] = Field(default_factory=list, max_length=4)
    channel_def: dict[str, str] = Field(default_factory=dict, max_length=4096)


class NetworkDataFormat(BaseModel):
    model_config = ConfigDict(extra="allow")

    inputs: dict[str, TensorFormat] = Field(default_factory=dict)
    outputs: dict[str, TensorFormat] = Field(default_factory=dict)


class BundleMetadata(BaseModel):
    """The fields of `configs/metadata.json` the server reads; the rest is kept as is (extra)."""

    model_config = ConfigDict(extra="allow")

    version: str = "0"
    name: str | None = None
    description: str = ""
    task: str | None = None
    network_data_format: NetworkDataFormat = Field(default_factory=NetworkDataFormat)

    @property
    def labels(self) -> list[str]:
        """The first output's channel names in channel order, background left out (a classifier keeps all:
        each is a class)."""
        output = next(iter(self.network_data_format.outputs.values()), None)
        if output is None:
            return []
        ordered = sorted(output.channel_def.items(), key=lambda kv: int(kv[0]) if kv[0].isdigit() else 1 << 30)
        if self.is_classification:
            return [name for _, name in ordered]
        return [name for _, name in ordered if name.strip().lower() not in BACKGROUND_NAMES]

    @property
    def is_classification(self) -> bool:
        """True when the metadata says classification: the first output's `type` or `format` is "classes",
        "probabilities" or "logits" (the model zoo's classifiers), or the `task` names classification."""
        output = next(iter(self.network_data_format.outputs.values()), None)
        extra = (output.model_extra or {}) if output is not None else {}
        kinds = {str(extra.get(key, "")).strip().lower() for key in ("type", "format")}
        return bool(kinds & CLASS_OUTPUT_FORMATS) or "classif" in (self.task or "").lower()

    @property
    def guidance_channels(self) -> int:
        """How many input channels the image does not account for (DeepEdit-style click channels): the first
        input's `num_channels` minus its `channel_def` entries (0 when either is missing)."""
        first = next(iter(self.network_data_format.inputs.values()), None)
        if first is None or first.num_channels is None or not first.channel_def:
            return 0
        return max(first.num_channels - len(first.channel_def), 0)

    @property
    def declared_shapes(self) -> tuple[list[int], list[int]] | None:
        """([C_in, *spatial], [C_out, *spatial]) of the first input and output where the metadata gives their
        channels and a spatial shape of plain numbers (the model zoo also writes forms like "16*n"); else None."""
        inputs, outputs = self.network_data_format.inputs, self.network_data_format.outputs
        first, out = next(iter(inputs.values()), None), next(iter(outputs.values()), None)
        if first is None or out is None or first.num_channels is None or out.num_channels is None:
            return None
        spatial = first.spatial_shape
        if not spatial or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in spatial):
            return None
        return [first.num_channels, *spatial], [out.num_channels, *spatial]

    @property
    def model_type(self) -> ModelType:
        """`classification` (see `is_classification`), `deepgrow` for an interactive bundle (guidance channels
        beside the image), else `segmentation`."""
        if self.is_classification:
            return ModelType.CLASSIFICATION
        return ModelType.DEEPGROW if self.guidance_channels > 0 else ModelType.SEGMENTATION


def read_metadata(path: Path) -> BundleMetadata:
    """Read and validate `configs/metadata.json` (size, JSON nesting and numbers bounded).

    Raises:
        InvalidModel: an unreadable, oversized or invalid file, or fields that do not fit.
    """
    try:
        if path.stat().st_size > MAX_METADATA_BYTES:
            raise InvalidModel(f"{path.name} is larger than {MAX_METADATA_BYTES // 2**20} MiB")
        raw = loads_bounded(path.read_bytes(), what=path.name, error=InvalidModel)
    except OSError as exc:
        raise InvalidModel(f"cannot read {path.name}: {exc}") from exc
    if not isinstance(raw, dict):
        raise InvalidModel(f"{path.name} must hold a JSON object")
    if "version" in raw and raw["version"] is not None:
        raw["version"] = str(raw["version"])
    try:
        return BundleMetadata.model_validate(raw)
    except ValidationError as exc:
        raise InvalidModel(f"invalid {path.name}: {format_validation_errors(exc)}") from exc

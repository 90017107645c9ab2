"""Typed schema of `config/config_aiaa.json` (Clara 4.x form, tolerant of 3.x leftovers)."""

from __future__ import annotations

import enum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DEVICE_PATTERN = r"^(cpu|cuda|cuda:[0-9]{1,2}|mps)$"
MAX_ROI_SIZE = 1024
MAX_CROP_PASSES = 5
MAX_CROP_ZOOM = 4.0
MAX_CROP_BORDER = 16
MAX_BATCH_SLICES = 1024  # a 2D classifier on a volume: one full pipeline run per slice


class ModelType(str, enum.Enum):
    """A model's `type` in config_aiaa.json, matched case-insensitively (`"Segmentation"` is accepted)."""

    SEGMENTATION = "segmentation"
    ANNOTATION = "annotation"
    DEEPGROW = "deepgrow"
    CLASSIFICATION = "classification"
    OTHERS = "others"
    PIPELINE = "pipeline"

    @classmethod
    def _missing_(cls, value: object) -> ModelType | None:
        if isinstance(value, str):
            lowered = value.strip().lower()
            for member in cls:
                if member.value == lowered:
                    return member
        return None


class ComponentConfig(BaseModel):
    """`{"name": ..., "args": {...}}`: a transform, inference backend or writer named by class.

    `name` is stripped and must not be empty (see `mmar.components` for the names accepted); other keys are kept.
    """

    model_config = ConfigDict(extra="allow")

    name: str
    args: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _non_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("component name must not be empty")
        return value.strip()


class TensorConfig(BaseModel):
    """One input or output of `triton_model_config`: its `name`, Triton `data_type` (`TYPE_FP32`, ...) and
    `dims` (-1: any size; without the batch axis when `max_batch_size` > 0)."""

    model_config = ConfigDict(extra="allow")

    name: str
    data_type: str = "TYPE_FP32"
    dims: list[int]


class TritonModelConfig(BaseModel):
    """`inference.TRITON.triton_model_config`: Triton's model configuration as JSON; keys not declared here
    (`instance_group`, `parameters`, ...) pass through to the generated `config.pbtxt`."""

    model_config = ConfigDict(extra="allow")

    platform: str = "pytorch_libtorch"
    max_batch_size: int = 1
    input: list[TensorConfig] = Field(default_factory=list)
    output: list[TensorConfig] = Field(default_factory=list)


class BackendConfig(ComponentConfig):
    """The `AIAA` or `TRITON` section of `inference`."""

    name: str = "aiaa.inference.PyTorchInference"
    triton_model_config: TritonModelConfig | None = None


class InferenceArgs(BaseModel):
    """The arguments our inference step understands (`inference.AIAA.args`).

    Attributes:
        scanning_window: run the network by sliding window (MONAI `sliding_window_inference`).
        roi: window size in voxels per spatial axis, 1 to 1024 each, at most 3; required with scanning_window.
        overlap: fraction of a window overlapping its neighbours, in [0, 1).
        sw_batch_size: windows per network call, 1 to 64 (also Triton's derived `max_batch_size`).
        mode: how overlapping windows blend: "constant" or "gaussian".
        device: the device the network runs on: "cpu", "cuda", "cuda:N" or "mps"; None: the server's.
        sw_device: as `device`, and takes precedence over it.
        precision: the forward's precision, "float32", "float16" or "bfloat16" (autocast); None: the server's
            `--precision`.
    """

    model_config = ConfigDict(extra="allow")

    scanning_window: bool = False
    roi: list[Annotated[int, Field(ge=1, le=MAX_ROI_SIZE)]] | None = Field(None, max_length=3)
    overlap: float = Field(0.25, ge=0.0, lt=1.0)
    sw_batch_size: int = Field(1, ge=1, le=64)
    mode: str = "constant"
    device: str | None = Field(None, pattern=DEVICE_PATTERN)
    sw_device: str | None = Field(None, pattern=DEVICE_PATTERN)
    precision: Literal["float32", "float16", "bfloat16"] | None = None

    @model_validator(mode="after")
    def _roi_when_scanning(self) -> InferenceArgs:
        if self.scanning_window and not self.roi:
            raise ValueError("scanning_window needs a roi, e.g. [160, 160, 160]")
        return self


class CropGrowthConfig(BaseModel):
    """`inference.crop_growth` of a DeepGrow 3D model: coarser passes when the mask reaches the crop's faces
    (see `aiaa_server.inference.crop_growth`).  Absent: one pass, as without it.

    Attributes:
        max_passes: passes at most per click, 1 to MAX_CROP_PASSES (1: growth never runs a second pass).
        zoom: each further pass samples DeepgrowCropd's `spatial_size` voxels at `zoom` times the previous
            pass's `pixdim`, so its crop spans `zoom` times the extent; above 1, at most MAX_CROP_ZOOM.
        border_voxels: the mask "reaches a face" when it has a voxel this close to it (network voxels, 1 to
            MAX_CROP_BORDER; less than half the crop's smallest `spatial_size`, checked when the model loads).
    """

    model_config = ConfigDict(extra="forbid")

    max_passes: int = Field(3, ge=1, le=MAX_CROP_PASSES)
    zoom: float = Field(2.0, gt=1.0, le=MAX_CROP_ZOOM, allow_inf_nan=False)
    border_voxels: int = Field(2, ge=1, le=MAX_CROP_BORDER)


class InferenceConfig(BaseModel):
    """The `inference` section: the network's input and output data keys, `meta_data` shown by
    `GET /v1/models`, the `AIAA` (local) and optional `TRITON` backend sections, and `network`: a weight-free
    network, i.e. a transform (`{"name", "args"}`, e.g. `aiaa.transforms.RegionGrowd`) run on the
    pre-processed data in place of a TorchScript model (such a model needs no `models/model.ts` and always
    runs in the server's process, never on Triton); `crop_growth`: a DeepGrow 3D model's growing crop
    (`CropGrowthConfig`), None: a single crop."""

    model_config = ConfigDict(extra="allow")

    input: str = "image"
    output: str = "model"
    meta_data: dict[str, Any] = Field(default_factory=dict)
    AIAA: BackendConfig = Field(default_factory=BackendConfig)
    TRITON: BackendConfig | None = None
    network: ComponentConfig | None = None
    crop_growth: CropGrowthConfig | None = None

    @model_validator(mode="after")
    def _check_args(self) -> InferenceConfig:
        self.args  # noqa: B018 - validates the AIAA args at load time, not at the first request
        return self

    @property
    def args(self) -> InferenceArgs:
        """`AIAA.args` validated (already checked when the config was parsed)."""
        return InferenceArgs.model_validate(self.AIAA.args)


class AIAAConfig(BaseModel):
    """`config_aiaa.json`.

    Attributes:
        version: the model version, as a string (4.x configs give a number).
        type: what kind of model it is.
        labels: label names in label-value order; a dict `{"1": "spleen"}` or `{"spleen": 1}` is accepted.
        description: free text shown by `GET /v1/models`.
        pre_transforms: run on the request data before the network.
        inference: the network's keys and arguments.
        post_transforms: run on the network output.
        writer: picks the result; None: `aiaa.transforms.Writer` of `inference.output`.
        cache_until: the pre-transforms before the one named here depend on the image only and are cached
            per session ("ALL": all of them); None: none are.
    """

    model_config = ConfigDict(extra="allow")

    version: str = "1"
    type: ModelType = ModelType.SEGMENTATION
    labels: list[str] = Field(default_factory=list)
    description: str = ""
    pre_transforms: list[ComponentConfig] = Field(default_factory=list)
    inference: InferenceConfig = Field(default_factory=InferenceConfig)
    post_transforms: list[ComponentConfig] = Field(default_factory=list)
    writer: ComponentConfig | None = None
    cache_until: str | None = None

    @field_validator("version", mode="before")
    @classmethod
    def _version_as_string(cls, value: Any) -> str:
        # 4.x configs carry `"version": 1`; the C++ client only parses a string.
        return str(value) if value is not None else "1"

    @model_validator(mode="after")
    def _crop_growth_needs_deepgrow_3d(self) -> AIAAConfig:
        if self.inference.crop_growth is not None and (self.type is not ModelType.DEEPGROW or self.spatial_dims != 3):
            raise ValueError("inference.crop_growth applies to DeepGrow 3D models only (type \"deepgrow\", "
                             "inference.meta_data.deepgrow \"3D\")")
        return self

    @model_validator(mode="after")
    def _slice_batch_needs_2d_classification(self) -> AIAAConfig:
        meta = self.inference.meta_data
        if "batch" not in meta and "max_slices" not in meta:
            return self
        if meta.get("batch") != "slices":
            raise ValueError('inference.meta_data.batch: the only value is "slices" (a 2D classifier applied to '
                             "each slice of a 3D volume)")
        if self.type is not ModelType.CLASSIFICATION or self.spatial_dims != 2:
            raise ValueError('inference.meta_data.batch "slices" applies to 2D classification models only (type '
                             '"classification", inference.meta_data.spatial_dims 2)')
        limit = meta.get("max_slices", MAX_BATCH_SLICES)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_BATCH_SLICES:
            raise ValueError(f"inference.meta_data.max_slices: a whole number from 1 to {MAX_BATCH_SLICES}")
        return self

    @property
    def slice_batch_limit(self) -> int | None:
        """The most slices of a 3D volume this 2D classifier takes one by one (`meta_data.batch: "slices"`,
        `meta_data.max_slices`, default and cap MAX_BATCH_SLICES); None: the model takes no slice batch."""
        meta = self.inference.meta_data
        return int(meta.get("max_slices", MAX_BATCH_SLICES)) if meta.get("batch") == "slices" else None

    @field_validator("labels", mode="before")
    @classmethod
    def _labels_as_strings(cls, value: Any) -> list[str]:
        if value is None:
            return []
        if isinstance(value, dict):  # {"1": "spleen", ...} or {"spleen": 1, ...}
            items = sorted(value.items(), key=lambda kv: int(kv[0]) if str(kv[0]).isdigit() else int(kv[1]))
            return [str(v) if str(k).isdigit() else str(k) for k, v in items]
        return [str(v) for v in value]

    @property
    def spatial_dims(self) -> int:
        """2 for deepgrow models unless `meta_data.deepgrow` says 3D, else `meta_data.spatial_dims` (default 3)."""
        deepgrow = str(self.inference.meta_data.get("deepgrow", "")).upper()
        if self.type is ModelType.DEEPGROW and "3D" not in deepgrow:
            return 2
        return int(self.inference.meta_data.get("spatial_dims", 3))

"""A model's pipeline: pre-transforms → network (whole image or sliding window) → post-transforms → writer
(for a DeepGrow 3D model with `inference.crop_growth`, the request's part pass after pass on growing crops:
`crop_growth`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from monai.data import MetaTensor
from monai.inferers import sliding_window_inference
from monai.transforms import EnsureChannelFirstd, Orientationd

from aiaa_server.engines.base import Engine
from aiaa_server.errors import AIAAError, IncompatibleInput, ModelError
from aiaa_server.imaging.io import Volume
from aiaa_server.inference.crop_growth import CropGrowth, Stages
from aiaa_server.inference.fast_paths import opened
from aiaa_server.inference.fast_spacing import FastSpacingd
from aiaa_server.inference.heap import release_free_heap
from aiaa_server.inference.tensors import plain_tensor, volume_to_tensor
from aiaa_server.inference.transforms import LoadImaged, WriterOutput
from aiaa_server.mmar.config import AIAAConfig, InferenceArgs

Transform = Callable[[dict[str, Any]], dict[str, Any]]
# pre-transforms that only move voxels (any dtype in, the same dtype out), allowed before the model-grid Spacingd
_VOXEL_MOVING_TRANSFORMS = (LoadImaged, EnsureChannelFirstd, Orientationd)
# network inputs from this size on (16 MiB of float32) return freed heap around the forward; a click's crop is smaller
_TRIM_VOXELS = 2**22


def _transform_name(transform: object) -> str:
    return type(getattr(transform, "wrapped", transform)).__name__  # a fast-path wrapper reports what it wraps


def apply_transforms(transforms: Sequence[Transform], data: dict[str, Any], stage: str,
                     error: type[AIAAError], consume: bool = False) -> dict[str, Any]:
    """`data` through `transforms`; a failure other than an AIAAError becomes `error` naming the stage and transform.

    `consume`: empty `data` once the first transform has returned its own dict, so that the caller's references
    (every frame above holds that dict) do not keep the input image alive after a transform replaced it."""
    given = data
    for transform in transforms:
        try:
            data = transform(data)
            if consume and given and data is not given:
                given.clear()
        except AIAAError:
            raise
        except Exception as exc:
            cause = exc.__cause__ or exc  # MONAI wraps failures in "applying transform ..." RuntimeErrors
            raise error(f"{stage} {_transform_name(transform)} failed: {cause}", stage=stage) from exc
    return data


@dataclass
class ModelPipeline:
    """Everything needed to run one model; built once per model and shared by all requests.

    Attributes:
        name: the model name.
        config: the MMAR's config.
        pre_transforms: built from `pre_transforms`, run in order on the request's data dict.
        post_transforms: built from `post_transforms`.
        writer: picks the result image and JSON out of the data.
        engine: runs the network; None for a pipeline model without one, and for a weight-free network.
        args: `inference.AIAA.args` (sliding window, device).
        cache_index: see the field's comment and `preprocess_image`.
        network: a weight-free network (the config's `inference.network`): a transform run on the data in
            place of the engine, which writes `output_key` itself; None: the engine runs.
        growth: the growing crop of a DeepGrow 3D model (`inference.crop_growth`); None: one pass.
    """

    name: str
    config: AIAAConfig
    pre_transforms: list[Transform]
    post_transforms: list[Transform]
    writer: Callable[[dict[str, Any]], WriterOutput]
    engine: Engine | None
    args: InferenceArgs
    cache_index: int = 0  # pre_transforms[:cache_index] depend only on the image (cacheable per session)
    network: Transform | None = None
    growth: CropGrowth | None = None

    @property
    def input_key(self) -> str:
        """The data key the network reads (`inference.input`, "image" by default)."""
        return self.config.inference.input

    @property
    def output_key(self) -> str:
        """The data key the network output is stored under (`inference.output`, "model" by default)."""
        return self.config.inference.output

    @property
    def converts_on_model_grid(self) -> bool:
        """Whether the pre-transforms only move voxels around (channel, orientation) before a `Spacingd`
        that resamples `input_key` into float32 on the model grid: then the input may stay in its integer
        type until that resampling (see `input_tensor`). A bundle's preprocessing `Compose` is looked into."""
        for transform in opened(self.pre_transforms):
            if isinstance(transform, FastSpacingd):
                return self.input_key in transform.wrapped.keys
            if type(transform) not in _VOXEL_MOVING_TRANSFORMS:
                return False
        return False

    def input_tensor(self, volume: Volume) -> MetaTensor:
        """The decoded `volume` as this pipeline's input (`volume_to_tensor`): float32, or the stored int8 /
        uint8 / int16 when `converts_on_model_grid` (a 512×512×300 int16 CT is then 150 MiB instead of 300
        MiB, and no full-size float32 copy is ever made); the model sees the same float32 values."""
        return volume_to_tensor(volume, keep_integers=self.converts_on_model_grid)

    def preprocess_image(self, data: dict[str, Any]) -> dict[str, Any]:
        """The image-only part of pre-processing: the pre-transforms before the one `cache_until` names (all
        of them for "ALL", none without it); sessions cache its result.

        Raises:
            IncompatibleInput: (422) a transform fails on this input.
        """
        return apply_transforms(self.pre_transforms[: self.cache_index], data, "pre-transform", IncompatibleInput)

    def preprocess_request(self, data: dict[str, Any], consume: bool = False) -> dict[str, Any]:
        """The rest of pre-processing (what reads the request: clicks, parameters), after `preprocess_image`.
        `consume`: `data` is emptied after the first transform (see `apply_transforms`).

        Raises:
            IncompatibleInput: (422) a transform fails on this input.
        """
        return apply_transforms(self.pre_transforms[self.cache_index :], data, "pre-transform", IncompatibleInput,
                                consume=consume)

    def infer(self, data: dict[str, Any]) -> dict[str, Any]:
        """Run the network on `data[input_key]`, a (C, *spatial) image, as a batch of one (by sliding window
        when `args.scanning_window`), and store its (C_out, *spatial) output on the CPU under `output_key`
        (a MetaTensor with the input's meta, affine included, when the input is one). A weight-free `network`
        transform runs on the whole data dict instead and stores its own output.

        Raises:
            InvalidParams: (400) the weight-free network refuses the request's params (e.g. its clicks).
            ModelError: (500) no network, or the network failed (or wrote no `output_key`).
            ServiceUnavailable: (503) the engine's server (Triton) cannot be reached.
        """
        if self.network is not None:
            data = apply_transforms([self.network], data, "network", ModelError)
            if self.output_key not in data:
                raise ModelError(f"the network of model {self.name!r} wrote no {self.output_key!r}")
            return data
        if self.engine is None:
            raise ModelError(f"model {self.name!r} has no network to run")
        image = data[self.input_key]
        batch = plain_tensor(image).float()[None]
        large = batch.numel() >= _TRIM_VOXELS
        if large:
            release_free_heap()  # what pre-processing freed (resampling slabs), before the forward's peak
        try:
            output = self._forward(batch)[0].cpu()
        except AIAAError:
            raise
        except Exception as exc:
            raise ModelError(f"inference failed for model {self.name!r}: {exc}") from exc
        finally:
            if large:
                release_free_heap()  # the windows' activations, before post-processing allocates full-size masks
        if isinstance(image, MetaTensor):
            output = MetaTensor(output, meta=dict(image.meta))  # meta carries the affine
        data[self.output_key] = output
        return data

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        assert self.engine is not None
        if not self.args.scanning_window:
            return self.engine(batch)
        assert self.args.roi is not None
        roi = list(self.args.roi)[-(batch.ndim - 2) :]
        with torch.inference_mode():
            return sliding_window_inference(
                batch,
                roi_size=roi,
                sw_batch_size=self.args.sw_batch_size,
                predictor=self.engine,
                overlap=self.args.overlap,
                mode=self.args.mode,
                sw_device=self.engine.device,
                device=torch.device("cpu"),
            )

    def postprocess(self, data: dict[str, Any]) -> WriterOutput:
        """Run the post-transforms, then the writer.

        Raises:
            ModelError: (500) a post-transform or the writer failed.
        """
        return self._write(apply_transforms(self.post_transforms, data, "post-transform", ModelError))

    def _write(self, data: dict[str, Any]) -> WriterOutput:
        try:
            return self.writer(data)
        except AIAAError:
            raise
        except Exception as exc:
            raise ModelError(f"writer failed for model {self.name!r}: {exc}") from exc

    def run_request(self, data: dict[str, Any]) -> WriterOutput:
        """Everything after `preprocess_image`: `preprocess_request`, `infer`, `postprocess`; with `growth`, its
        passes on growing crops (see `crop_growth`), combined on the input grid, then the writer.

        Without `growth`, `data` is consumed: it is emptied once the first pre-transform has copied it, so the
        request's input image is freed as soon as a transform (the model-grid `Spacingd`) replaces it. Pass a
        dict of the request's own (values may be shared, e.g. a session's cached tensors: they are not touched).

        Raises:
            IncompatibleInput: (422) a pre-transform fails on this input.
            ModelError: (500) the network, a post-transform or the writer failed.
        """
        if self.growth is None:
            return self.postprocess(self.infer(self.preprocess_request(data, consume=True)))
        stages = Stages(
            pre=lambda transforms, d: apply_transforms(transforms, d, "pre-transform", IncompatibleInput),
            infer=self.infer,
            post=lambda transforms, d: apply_transforms(transforms, d, "post-transform", ModelError),
        )
        return self._write(self.growth.run(data, stages))

    def run(self, data: dict[str, Any]) -> WriterOutput:
        """The whole pipeline on one request's data, nothing cached: pre-transforms, network, post, writer."""
        return self.run_request(self.preprocess_image(data))

"""The inference service: resolves the model and the image, runs the pipeline off the event loop, and
encodes the result on the client's grid in the requested format."""

from __future__ import annotations

import enum
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from aiaa_server.errors import BadRequest, IncompatibleInput, ModelError, SessionExpired
from aiaa_server.imaging.formats import ImageFormat
from aiaa_server.imaging.io import Volume, encode_volume, read_image
from aiaa_server.imaging.limits import DEFAULT_LIMITS, DecodeLimits
from aiaa_server.imaging.masks import label_centroids
from aiaa_server.inference.interactive import MAX_CLICKS
from aiaa_server.inference.params import RequestParams, ResultOptions
from aiaa_server.inference.pipeline import ModelPipeline
from aiaa_server.inference.pool import InferencePool, Lane
from aiaa_server.inference.slice_batch import check_slice_count, classify_slices
from aiaa_server.inference.transforms import WriterOutput
from aiaa_server.mmar.config import AIAAConfig, ModelType
from aiaa_server.services.classification import NOT_FROM_DICOM_SR, classification_answer
from aiaa_server.services.dicom_seg import NOT_FROM_DICOM, SEG_MEDIA_TYPE, seg_bytes
from aiaa_server.sessions import SessionNotFound, SessionStore

log = logging.getLogger(__name__)


class ServedModel(Protocol):
    """What the service needs of a model (the loader's `LoadedModel` is one)."""

    name: str
    config: AIAAConfig
    pipeline: ModelPipeline


class ModelLookup(Protocol):
    """Where the service finds models by name (the `ModelRegistry` is one); raises NotFound."""

    def get(self, name: str | None) -> ServedModel: ...


class Endpoint(str, enum.Enum):
    SEGMENTATION = "segmentation"
    INFERENCE = "inference"
    DEXTR3D = "dextr3d"
    DEEPGROW = "deepgrow"


# Which model types each endpoint serves (`/v1/inference` serves every type).
ENDPOINT_TYPES: dict[Endpoint, set[ModelType]] = {
    Endpoint.SEGMENTATION: {ModelType.SEGMENTATION, ModelType.OTHERS, ModelType.PIPELINE},
    Endpoint.DEXTR3D: {ModelType.ANNOTATION},
    Endpoint.DEEPGROW: {ModelType.DEEPGROW, ModelType.PIPELINE},
    Endpoint.INFERENCE: set(ModelType),
}


@dataclass(frozen=True)
class ImageUpload:
    path: Path
    filename: str


@dataclass
class InferenceRequest:
    """One call; `params` as the client sent them (JSON-decoded), parsed by the service into `RequestParams`."""

    endpoint: Endpoint
    model: str | None
    params: dict[str, Any]
    upload: ImageUpload | None = None
    session_id: str | None = None
    keep_box: tuple[slice, ...] | None = None  # result voxels outside this box are cleared (an ROI)
    dicom_headers: Path | None = None  # the upload's DICOM series headers (DICOM SEG results); sessions know theirs
    centroids: bool = False  # also report each label's mean voxel index (MONAI Label's `centroids`)
    report: str | None = None  # "fhir": a classification as a FHIR R4 Observation (classification models only)


@dataclass
class InferenceResult:
    params: dict[str, Any]
    image: bytes | None = None
    filename: str | None = None
    media_type: str = "application/octet-stream"
    latencies: dict[str, float] = field(default_factory=dict)  # seconds: pre, infer (model + post), write, total
    centroids: dict[int, list[int]] = field(default_factory=dict)  # label value -> [x, y, z], when asked


INTERACTIVE_TYPES = {ModelType.ANNOTATION, ModelType.DEEPGROW}


def _lane(request: InferenceRequest, model: ServedModel) -> Lane:
    """Clicks (deepgrow, dextr3d, anything on a session) go first; auto-segmentations queue behind them."""
    interactive = (
        request.session_id is not None
        or request.endpoint in (Endpoint.DEEPGROW, Endpoint.DEXTR3D)
        or model.config.type in INTERACTIVE_TYPES
    )
    return Lane.INTERACTIVE if interactive else Lane.BATCH


def _safe_stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "image"


class InferenceService:
    def __init__(
        self, registry: ModelLookup, pool: InferencePool, gzip_level: int = 1,
        sessions: SessionStore | None = None, max_clicks: int = MAX_CLICKS,
        limits: DecodeLimits = DEFAULT_LIMITS,
    ) -> None:
        self.registry = registry
        self.limits = limits
        self.pool = pool
        self.gzip_level = gzip_level
        self.sessions = sessions
        self.max_clicks = max_clicks

    async def run(self, request: InferenceRequest) -> InferenceResult:
        """Run `request` on its model (in the pool) and encode the result.

        Raises:
            BadRequest: (400) no model named, a model of another endpoint, bad params, no image.
            NotFound: (404) no model of that name.
            SessionExpired: (440) the session is unknown or expired.
        """
        if not request.model:
            raise BadRequest("missing query parameter `model`: add ?model=NAME (see GET /v1/models)", parameter="model")
        model = self.registry.get(request.model)
        self._check_endpoint(request.endpoint, model)
        params = RequestParams.parse(request.params, model.config.type, max_clicks=self.max_clicks)
        if request.report == "fhir" and model.config.type is not ModelType.CLASSIFICATION:
            raise BadRequest(f"output=fhir is for classification models; model {model.name!r} is a "
                             f"{model.config.type.value} model", model=model.name, output="fhir")
        lane = _lane(request, model)
        label = request.endpoint.value
        if request.session_id:  # the session image wins over an uploaded file (protocol section 5)
            if self.sessions is None:
                raise SessionExpired("Session Expired", session_id=request.session_id)
        elif request.upload is None:
            raise BadRequest("no image uploaded: send the image as a multipart file part, or use session_id")
        return await self.pool.run(lane, self._run_sync, model, request, params, label=label)

    @staticmethod
    def _check_endpoint(endpoint: Endpoint, model: ServedModel) -> None:
        if model.config.type not in ENDPOINT_TYPES[endpoint]:
            raise BadRequest(
                f"model {model.name!r} is a {model.config.type.value} model; /v1/{endpoint.value} serves "
                f"{', '.join(sorted(t.value for t in ENDPOINT_TYPES[endpoint]))} models "
                "(use /v1/inference for any model)",
                model=model.name,
            )

    def _run_sync(self, model: ServedModel, request: InferenceRequest, params: RequestParams) -> InferenceResult:
        started = time.perf_counter()
        headers = self._dicom_headers(request, params.result, model.config.type)
        volume, image_data, source = self._prepared_image(model, request)
        prepared = time.perf_counter()
        pipeline = model.pipeline
        if _by_slices(model, volume):
            output = classify_slices(pipeline, volume, params.pipeline_data())
        else:  # a fresh dict per request: cached image data is never mutated
            if request.session_id is None and pipeline.converts_on_model_grid:
                volume = volume.without_voxels()  # the input tensor holds the voxels; the volume keeps the geometry
            data = {**params.pipeline_data(), **image_data}
            image_data = {}  # run_request empties `data` as the transforms replace the image: hold no other reference
            output = pipeline.run_request(data)
        inferred = time.perf_counter()
        if model.config.type is ModelType.CLASSIFICATION:
            result = self._classified(model, volume, output, params.result, request.report, headers)
        else:
            image = output.image if request.keep_box is None else _cleared_outside(output.image, request.keep_box)
            result = self._encode(model, volume, image, output.json, params.result, headers)
            if request.centroids and image is not None:
                result.centroids = label_centroids(image, len(model.config.labels))
        done = time.perf_counter()
        result.latencies = {"pre": prepared - started, "infer": inferred - prepared, "write": done - inferred,
                            "total": done - started}
        log.info("%s %s on %s %s: %.3f s", request.endpoint.value, model.name, source, volume.spatial_shape,
                 done - started)
        return result

    def _dicom_headers(self, request: InferenceRequest, options: ResultOptions, kind: ModelType) -> Path | None:
        """The source series' headers when the result is a DICOM SEG or SR (400 before any work when there are
        none), or a FHIR Observation (which references the study when there is one)."""
        dicom = options.output_format(ImageFormat.NIFTI_GZ) is ImageFormat.DICOM
        if not dicom and request.report != "fhir":
            return None
        headers = request.dicom_headers
        if request.session_id and self.sessions is not None:
            try:
                headers = self.sessions.dicom_headers(request.session_id)
            except SessionNotFound as exc:
                raise SessionExpired("Session Expired", session_id=request.session_id) from exc
        if headers is None and dicom:
            raise BadRequest(NOT_FROM_DICOM_SR if kind is ModelType.CLASSIFICATION else NOT_FROM_DICOM,
                             result_extension=".dcm")
        return headers

    def _prepared_image(self, model: ServedModel, request: InferenceRequest) -> tuple[Volume, dict[str, Any], str]:
        """The volume and its image-only pre-processing: from the session's cache (decoded and pre-processed
        once per session and model), else decoded from the upload. Returns (volume, data, source label)."""
        pipeline = model.pipeline
        if request.session_id:
            assert self.sessions is not None
            session_id = request.session_id
            try:
                self.sessions.touch(session_id)
                volume = self.sessions.volume(session_id)
            except SessionNotFound as exc:
                raise SessionExpired("Session Expired", session_id=session_id) from exc
            self._check_dimensions(model, volume)
            if _by_slices(model, volume):  # each slice is pre-processed as it is classified
                return volume, {}, f"session {session_id}"
            cached = self.sessions.preprocessed(
                session_id, model.name, pipeline,
                lambda: pipeline.preprocess_image({pipeline.input_key: pipeline.input_tensor(volume)}),
            )
            return volume, cached, f"session {session_id}"
        assert request.upload is not None
        allow_png = model.config.type is ModelType.CLASSIFICATION and model.config.spatial_dims == 2
        volume = read_image(request.upload.path, request.upload.filename, limits=self.limits, allow_png=allow_png)
        self._check_dimensions(model, volume)
        if _by_slices(model, volume):
            return volume, {}, volume.name
        return volume, pipeline.preprocess_image({pipeline.input_key: pipeline.input_tensor(volume)}), volume.name

    @staticmethod
    def _check_dimensions(model: ServedModel, volume: Volume) -> None:
        wanted = model.config.spatial_dims
        shape = volume.spatial_shape
        effective = sum(1 for s in shape if s > 1)
        if model.config.type is ModelType.DEEPGROW and volume.array.ndim != 3:
            # DeepGrow 2D too: its clicks are [x, y, z] and it segments the clicked slice of the volume.
            raise IncompatibleInput(
                f"model {model.name!r} (DeepGrow {wanted}D) takes a 3D volume and [x, y, z] clicks, "
                f"got an image of shape {list(shape)}",
                model=model.name, shape=list(shape),
            )
        if model.config.type is ModelType.CLASSIFICATION and wanted == 2 and effective > 2:
            limit = model.config.slice_batch_limit
            if limit is not None and volume.array.ndim == 3:
                check_slice_count(volume, limit, model.name)
                return
            raise IncompatibleInput(
                f"model {model.name!r} classifies 2D images, got an image of shape {list(shape)} (a 2D model "
                'takes a volume slice by slice only where its config says inference.meta_data.batch "slices")',
                model=model.name, shape=list(shape),
            )
        if volume.array.ndim < wanted or (wanted == 3 and effective < 3):
            raise IncompatibleInput(
                f"model {model.name!r} expects a 3D volume, got an image of shape {list(shape)}",
                model=model.name, shape=list(shape),
            )

    def _classified(self, model: ServedModel, volume: Volume, output: WriterOutput, options: ResultOptions,
                    report: str | None, headers: Path | None) -> InferenceResult:
        """A classification model's answer: its JSON, and the DICOM SR or FHIR Observation when asked for."""
        if options.output_format(ImageFormat.NIFTI_GZ) is ImageFormat.DICOM:
            report = "dicom_sr"
        config = model.config
        answer = classification_answer(output, config.labels, model.name, str(config.version), image_name=volume.name,
                                       report=report, headers=headers, limits=self.limits)
        return InferenceResult(params=answer.result.model_dump(exclude_none=True), image=answer.payload,
                               filename=answer.filename, media_type=answer.media_type)

    def _encode(self, model: ServedModel, volume: Volume, image: Any, json_result: dict[str, Any],
                options: ResultOptions, headers: Path | None = None) -> InferenceResult:
        if image is None:
            return InferenceResult(params=json_result)
        if tuple(image.shape) != volume.spatial_shape:
            raise ModelError(
                f"model {model.name!r} produced a result of shape {list(image.shape)} for an input of shape "
                f"{list(volume.spatial_shape)}; its post_transforms must restore the input grid "
                "(e.g. aiaa.transforms.Restored)",
            )
        fmt = options.output_format(volume.format)
        if fmt is ImageFormat.DICOM:
            names = dict(enumerate(model.config.labels, start=1))
            payload = seg_bytes(image, volume, headers, names, self.limits, model.name, str(model.config.version))
            return InferenceResult(params=json_result, image=payload, media_type=SEG_MEDIA_TYPE,
                                   filename=f"{_safe_stem(volume.name)}_{_safe_stem(model.name)}_seg.dcm")
        payload = encode_volume(
            image, volume, fmt, dtype=options.dtype, compress=options.compress(fmt), gzip_level=self.gzip_level
        )
        filename = f"{_safe_stem(volume.name)}_{_safe_stem(model.name)}{fmt.value}"
        return InferenceResult(params=json_result, image=payload, filename=filename, media_type=fmt.media_type)


def _by_slices(model: ServedModel, volume: Volume) -> bool:
    """True when `model` is a 2D classifier taking `volume`, a 3D one, slice by slice (`slice_batch`)."""
    return model.config.slice_batch_limit is not None and sum(1 for s in volume.spatial_shape if s > 1) > 2


def _cleared_outside(image: Any, box: tuple[slice, ...]) -> Any:
    """`image` with every voxel outside `box` set to 0 (None stays None)."""
    if image is None:
        return None
    array = np.asarray(image)
    kept = np.zeros_like(array)
    kept[box] = array[box]
    return kept


__all__ = ["Endpoint", "ImageFormat", "ImageUpload", "InferenceRequest", "InferenceResult", "InferenceService"]

"""The MONAI Label protocol on the server's own models, sessions, pool and datastore: `/info/`, `/infer/{model}`
and `/activelearning/{strategy}` as MONAI Label 0.8 clients (3D Slicer, OHIF v3, MITK) call them.

MONAI Label params map onto the AIAA pipeline: `foreground`/`background` are DeepGrow clicks as in AIAA; the
points of the label being edited (`params[<label>]`, DeepEdit style) are its foreground clicks; a DExtr3D model
takes the foreground clicks as its extreme points; `roi` [x0, x1, y0, y1, z0, z1] clears the result outside.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiaa_server import __version__
from aiaa_server.datastore import STRATEGIES
from aiaa_server.errors import BadRequest, InvalidParams
from aiaa_server.mmar.config import AIAAConfig, ModelType
from aiaa_server.mmar.registry import ModelRegistry
from aiaa_server.services.datastore import DatastoreService
from aiaa_server.services.inference import Endpoint, ImageUpload, InferenceRequest, InferenceResult, InferenceService
from aiaa_server.services.training import TrainingService, TrainParams
from aiaa_server.services.uncertainty import UncertaintyScorer

log = logging.getLogger(__name__)

STRATEGY_DESCRIPTIONS = {
    "first": "the first image (by id) without a final label that no other annotator holds",
    "random": "a random image without a final label that no other annotator holds",
    "uncertainty": "the image without a final label, held by no other annotator, that the serving segmentation "
                   "model is least sure about (mean voxel entropy of its softmax output; images not scored yet "
                   "come last, by id)",
}
# MONAI Label model types the clients know (Slicer: segmentation, deepgrow, deepedit, scribbles, detection).
MONAI_TYPES = {ModelType.SEGMENTATION: "segmentation", ModelType.DEEPGROW: "deepgrow",
               ModelType.ANNOTATION: "deepgrow", ModelType.PIPELINE: "segmentation"}
ROI_LENGTH = 6
# MONAI Label params that steer the request here and are not passed on to the model's transforms.
CLIENT_ONLY_PARAMS = ("label", "roi", "slice", "restore_label_idx", "client_id", "reset_state")


@dataclass
class MonaiInferRequest:
    """One `POST /infer/{model}`: the image as a datastore id (or SeriesInstanceUID), an upload or a session."""

    model: str
    params: dict[str, Any]
    image: str | None = None
    upload: ImageUpload | None = None
    session_id: str | None = None
    report: str | None = None  # "fhir": a classification as a FHIR Observation


class MonaiLabelService:
    """What the MONAI Label routes need: the app info, inference with MONAI Label params, active learning."""

    def __init__(self, registry: ModelRegistry, inference: InferenceService, datastore: DatastoreService,
                 training: TrainingService, uncertainty: UncertaintyScorer | None = None) -> None:
        self.registry = registry
        self.inference = inference
        self.datastore = datastore
        self.training = training
        self.uncertainty = uncertainty

    async def info(self) -> dict[str, Any]:
        """MONAI Label's app info: models with type, labels, dimension; strategies; datastore totals."""
        models = {name: {**model_info(model.config), **self.training.serving_figures(name)}
                  for name in self.registry.names() if (model := self.registry.find(name)) is not None}
        trainers = {name: {"description": f"fine-tune {name} from the datastore's final labels",
                           "config": TrainParams().model_dump()}
                    for name in models if self.training.trainable(name)}
        labels = list(dict.fromkeys(label for info in models.values() for label in info["labels"]))
        stats = await self.datastore.stats()
        return {
            "name": "aiaa-server", "version": __version__,
            "description": "AI-assisted annotation server (NVIDIA Clara AIAA and MONAI Label protocols)",
            "labels": labels, "models": models, "trainers": trainers, "scoring": {},
            "train_stats": self.training.train_stats(),
            "strategies": {name: {"description": STRATEGY_DESCRIPTIONS[name]} for name in STRATEGIES},
            "datastore": stats.model_dump(),
        }

    async def infer(self, request: MonaiInferRequest) -> InferenceResult:
        """Run `request` on the pool; the result's params carry `label_names` and `latencies` as MONAI Label's do.

        Raises:
            BadRequest: (400) no image, session or file; bad params. NotFound: (404) no such model or image.
        """
        model = self.registry.get(request.model)
        params = aiaa_params(request.params, model.config)
        upload, headers = request.upload, None
        if request.session_id is None and upload is None:
            if not request.image:
                raise BadRequest("no image: add ?image=ID (a datastore image), upload the part `file`, or add "
                                 "?session_id=", parameter="image")
            found = await self.datastore.image_info(request.image)
            upload = ImageUpload(path=Path(found.path), filename=found.name)
            headers = await self.datastore.dicom_headers(found.id)
        result = await self.inference.run(InferenceRequest(
            endpoint=Endpoint.INFERENCE, model=model.name, params=params, upload=upload,
            session_id=request.session_id, keep_box=roi_box(request.params.get("roi")), centroids=True,
            dicom_headers=headers, report=request.report))
        if model.config.type is ModelType.CLASSIFICATION:  # its answer names its labels already
            result.params = {**result.params, "latencies": result.latencies}
            return result
        labels = {name: index for index, name in enumerate(model.config.labels, start=1)}
        centroids = {f"label_{value}": [str(value), *map(str, point)] for value, point in result.centroids.items()}
        result.params = {**result.params, "label_names": labels, "latencies": result.latencies,
                         "centroids": centroids}
        return result

    async def next_sample(self, strategy: str, body: dict[str, Any]) -> dict[str, Any]:
        """MONAI Label's next sample: `{"id": ..., **image info}`, or `{}` when every image is done or held."""
        if strategy not in STRATEGIES:
            raise BadRequest(f"unknown strategy {strategy!r}: use one of {', '.join(STRATEGIES)}")
        client_id = body.get("client_id")
        lock = body.get("lock_seconds")
        if lock is not None and (isinstance(lock, bool) or not isinstance(lock, int | float)):
            raise InvalidParams("lock_seconds must be a number of seconds", key="lock_seconds")
        scores = self.uncertainty.scores() if strategy == "uncertainty" and self.uncertainty is not None else None
        chosen = await self.datastore.next_sample(strategy, client_id if isinstance(client_id, str) else None, lock,
                                                  scores)
        if chosen is None:
            return {}
        return {"id": chosen.id, **chosen.monai_info()}


def model_info(config: AIAAConfig) -> dict[str, Any]:
    """One model in `/info/`: MONAI Label type, labels `{name: value}`, dimension, description, config.

    A segmentation label's value is its voxel value (from 1; 0 is background). A classifier's is its output
    channel (from 0, every class kept), as MONAI Label's classification tasks give it (`ClassificationWriter`
    names channel `idx` by this map)."""
    description = config.description
    if config.type is ModelType.ANNOTATION:
        description = (description + " (DExtr3D: send at least 6 extreme points as foreground clicks)").strip()
    first = 0 if config.type is ModelType.CLASSIFICATION else 1
    return {
        "type": MONAI_TYPES.get(config.type, config.type.value),
        "labels": {name: index for index, name in enumerate(config.labels, start=first)},
        "dimension": config.spatial_dims,
        "description": description,
        "version": config.version,
        "config": {},
    }


def aiaa_params(params: dict[str, Any], config: AIAAConfig) -> dict[str, Any]:
    """MONAI Label infer params as the model's AIAA params (see the module docstring)."""
    dropped = {*CLIENT_ONLY_PARAMS, *(name for name in config.labels if name != "background")}
    out = {key: value for key, value in params.items() if key not in dropped}
    if config.type not in (ModelType.DEEPGROW, ModelType.ANNOTATION):
        return out
    label = params.get("label")
    if not params.get("foreground") and isinstance(label, str) and isinstance(params.get(label), list):
        out["foreground"] = params[label]
    if config.type is ModelType.ANNOTATION and "points" not in params:
        out["points"] = out.get("foreground") or []
    return out


def roi_box(roi: Any) -> tuple[slice, ...] | None:
    """MONAI Label's `roi` ([x0, x1, y0, y1, z0, z1] voxel indices, ends included) as a box; None: no ROI.

    Raises:
        InvalidParams: (400) not six non-negative integers with each start at most its end.
    """
    if roi is None or roi == []:
        return None
    if (not isinstance(roi, list) or len(roi) != ROI_LENGTH
            or not all(isinstance(v, int | float) and not isinstance(v, bool) and 0 <= v < 2**31 for v in roi)):
        raise InvalidParams("roi must be [x0, x1, y0, y1, z0, z1]: six non-negative voxel indices", key="roi")
    starts, ends = [round(v) for v in roi[0::2]], [round(v) for v in roi[1::2]]
    if any(start > end for start, end in zip(starts, ends, strict=True)):
        raise InvalidParams("roi: each start must be at most its end ([x0, x1, y0, y1, z0, z1])", key="roi")
    return tuple(slice(start, end + 1) for start, end in zip(starts, ends, strict=True))

"""The serving segmentation model's uncertainty on the datastore's unlabelled images, for the `uncertainty`
active-learning strategy (`/activelearning/uncertainty`).

A background task of the app (`run_forever`) looks at the datastore every `interval_s` seconds and scores each
image without a `final` label that has no score for the weights being served, one image at a time, through the
inference pool's BATCH lane: clicks always go first, and a round ends early while requests wait in the pool, so
scoring only uses idle time. The score is the mean voxel entropy of the network's softmax output, divided by
log(number of classes): 0 is certain, 1 is a coin toss on every voxel.

Scores are kept in memory, one per unlabelled image (a replaced image's file differs, so it is scored again), and
hold for one `LoadedModel` object: a promotion or rollback loads a new object under the same name, and the first
look that sees it (`scores`, or the next round) forgets every score (`refresh`) and scoring starts over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from concurrent.futures import Future
from pathlib import Path

import torch

from aiaa_server.errors import AIAAError, ModelError, ServiceUnavailable
from aiaa_server.imaging.io import read_volume
from aiaa_server.imaging.limits import DecodeLimits
from aiaa_server.inference.params import RequestParams
from aiaa_server.inference.pool import InferencePool, Lane
from aiaa_server.inference.tensors import plain_tensor
from aiaa_server.mmar.config import ModelType
from aiaa_server.mmar.loader import LoadedModel
from aiaa_server.mmar.registry import ModelRegistry
from aiaa_server.services.datastore import DatastoreService, ImageFile

log = logging.getLogger(__name__)

PROBABILITY_TOLERANCE = 1e-3  # channel sums this close to 1 (all values >= 0): the output is already probabilities


def mean_entropy(output: torch.Tensor) -> float:
    """The mean voxel entropy of a network's (C, *spatial) output, divided by log(C), in [0, 1].

    The output is taken as logits and softmaxed over its channels, unless it already is probabilities (every
    value >= 0, channels summing to 1); one channel is a sigmoid's logit (two classes).
    """
    values = output.detach().float()
    if values.shape[0] == 1:
        positive = torch.sigmoid(values)
        probabilities = torch.cat([1 - positive, positive])
    elif values.min() >= 0 and bool(((values.sum(0) - 1).abs() <= PROBABILITY_TOLERANCE).all()):
        probabilities = values
    else:
        probabilities = torch.softmax(values, dim=0)
    classes = probabilities.shape[0]
    entropy = torch.special.entr(probabilities).sum(0).mean().item()
    return min(max(entropy / math.log(classes), 0.0), 1.0)


def image_uncertainty(model: LoadedModel, path: Path, limits: DecodeLimits) -> float:
    """Score one image file with `model` as an automatic segmentation request without params would run it, up
    to the network's raw output (no post-transforms). Runs on a pool worker.

    Raises:
        PayloadTooLarge: (413) the image is over `limits`. InvalidImage: (400) it does not decode.
        IncompatibleInput, ModelError: the model cannot take it, or failed; ModelError also for a non-finite score.
    """
    pipeline = model.pipeline
    volume = read_volume(path, path.name, limits=limits)
    data = pipeline.preprocess_image({pipeline.input_key: pipeline.input_tensor(volume)})
    request = RequestParams.parse({}, model.config.type).pipeline_data()
    with torch.inference_mode():
        data = pipeline.infer(pipeline.preprocess_request({**request, **data}))
        score = mean_entropy(plain_tensor(data[pipeline.output_key]))
    if not math.isfinite(score):
        raise ModelError(f"model {model.name!r} gave a non-finite output on {path.name}")
    return score


class UncertaintyScorer:
    """Scores of the serving model on the unlabelled images (see the module docstring).

    Args:
        registry: the served models; the scored one is looked up by name at every look.
        pool: the inference pool (scoring runs in its BATCH lane).
        datastore: the datastore service (images without a `final` label; its decode limits bound every image).
        model_name: the segmentation model to score with; None: the first served segmentation model by name.
        interval_s: seconds between rounds.
    """

    def __init__(self, registry: ModelRegistry, pool: InferencePool, datastore: DatastoreService,
                 model_name: str | None, interval_s: float) -> None:
        self.registry = registry
        self.pool = pool
        self.datastore = datastore
        self.model_name = model_name
        self.interval_s = interval_s
        self.limits = datastore.limits
        self.refreshes = 0  # how many times the scores were forgotten for new weights
        self.scored = 0  # images scored since the start
        self._model: LoadedModel | None = None
        self._scores: dict[str, tuple[tuple[int, int, int], float]] = {}  # id -> (file stamp, score)
        self._skipped: dict[str, tuple[int, int, int]] = {}  # id -> file stamp of an image that cannot be scored
        self._wake = asyncio.Event()
        self._in_flight: Future[float] | None = None
        self._closed = False
        self._unusable = False  # no model can score now (logged once)

    # ---- what the strategy reads ------------------------------------------------------------------------------

    def scores(self) -> dict[str, float]:
        """Image id -> score, for the weights served now (none right after a promotion)."""
        self._current()
        return {image_id: score for image_id, (_stamp, score) in self._scores.items()}

    @property
    def kept(self) -> int:
        """How many scores are kept (a plain read, safe from any thread: the metrics scrape)."""
        return len(self._scores)

    @property
    def model(self) -> LoadedModel | None:
        """The model the kept scores belong to."""
        return self._model

    def serving_model(self) -> LoadedModel | None:
        """The segmentation model that scores: `model_name`, or the first served segmentation model by name."""
        names = [self.model_name] if self.model_name else self.registry.names()
        for name in names:
            model = self.registry.find(name)
            if model is not None and model.config.type is ModelType.SEGMENTATION:
                return model
        return None

    def refresh(self) -> None:
        """Forget every score (and every skipped image) and score again for the weights served now (on the event
        loop, like every method here that changes the scores)."""
        model = self.serving_model()
        if self._scores or self._model is not None:
            self.refreshes += 1
        self._model = model
        self._scores.clear()
        self._skipped.clear()
        self._wake.set()
        if model is not None:
            log.info("uncertainty: scoring the datastore's unlabelled images with %s (%s)", model.name, model.path)

    def _current(self) -> LoadedModel | None:
        """The serving model; a different object than the scores' (a promotion) refreshes them first."""
        model = self.serving_model()
        if model is not self._model:
            self.refresh()
        if model is None and not self._unusable:
            log.warning("uncertainty: nothing to score with: %s", f"model {self.model_name!r} is not a served "
                        "segmentation model" if self.model_name else "no segmentation model is served")
        self._unusable = model is None
        return model

    # ---- the background task ----------------------------------------------------------------------------------

    async def run_forever(self) -> None:
        """Rounds every `interval_s` seconds (sooner after a refresh), until cancelled or closed."""
        while not self._closed:
            try:
                await self.run_once()
            except Exception:  # a bad round must never stop the task
                log.exception("uncertainty: scoring round failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval_s)
            self._wake.clear()

    async def run_once(self) -> int:
        """One round: score each unlabelled image that has no score for the serving weights; returns how many
        were scored. It ends early when the weights change, when requests wait in the pool, or on a full pool."""
        model = self._current()
        if model is None or self._closed:
            return 0
        images = await self.datastore.unlabelled()
        self._keep_only({image.id for image in images})
        done = 0
        for image in images:
            if self._closed or self._current() is not model:
                break
            if self._known(image):
                continue
            if self.pool.depth() > 0:
                log.debug("uncertainty: requests are waiting in the pool; scoring goes on next round")
                break
            try:
                score = await self._score(model, image)
            except ServiceUnavailable as exc:
                log.debug("uncertainty: pool unavailable (%s); scoring goes on next round", exc.message)
                break
            except Exception as exc:  # noqa: BLE001 - an image that cannot be scored is skipped, and said so
                reason = exc.message if isinstance(exc, AIAAError) else f"{type(exc).__name__}: {exc}"
                log.warning("uncertainty: %s skipped (until it changes or the weights do): %s", image.id, reason)
                self._skipped[image.id] = image.stamp
                continue
            if self._model is model:  # not refreshed while it ran
                self._scores[image.id] = (image.stamp, score)
                self.scored += 1
                done += 1
        if done:
            log.info("uncertainty: %d image(s) scored with %s; %d scored in all", done, model.name, len(self._scores))
        return done

    async def _score(self, model: LoadedModel, image: ImageFile) -> float:
        future = self.pool.submit(Lane.BATCH, image_uncertainty, model, image.path, self.limits, label="uncertainty")
        self._in_flight = future
        try:
            return await asyncio.wrap_future(future)
        finally:
            self._in_flight = None

    def _known(self, image: ImageFile) -> bool:
        kept = self._scores.get(image.id)
        return (kept is not None and kept[0] == image.stamp) or self._skipped.get(image.id) == image.stamp

    def _keep_only(self, ids: set[str]) -> None:
        """Drop what belongs to images gone or labelled: the kept entries never outnumber the datastore's images."""
        for kept in (self._scores, self._skipped):
            for image_id in [image_id for image_id in kept if image_id not in ids]:
                del kept[image_id]

    def close(self) -> None:
        """Stop scoring: no new round or image; a queued image is dropped (a running one finishes on its worker).
        Call it on the event loop (or when no task runs)."""
        self._closed = True
        self._wake.set()
        future = self._in_flight
        if future is not None:
            future.cancel()

"""Learning from saved labels: a queue of fine-tuning jobs, each run in its own limited process
(`python -m aiaa_server.learning.job`), every result kept as a version, promoted only when it is better.

A job trains from the datastore's `final` labels with a validation split fixed by image id, starting from the
weights being served. It writes a new version (`mmar.versions`); the version is served (hot swap: requests in
flight finish on the old model) only when its validation Dice beats the serving weights' on the same split.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from aiaa_server.bundles.layout import train_config_path
from aiaa_server.errors import BadRequest, Conflict, InvalidModel, ServiceUnavailable
from aiaa_server.learning.spec import TrainItem, TrainSpec, TrainStatus, read_status
from aiaa_server.learning.split import validation_split
from aiaa_server.mmar.config import ModelType
from aiaa_server.mmar.registry import ModelRegistry
from aiaa_server.mmar.versions import ModelVersions, VersionInfo
from aiaa_server.services.datastore import DatastoreService
from aiaa_server.services.job_process import job_env, limited, signal_group

log = logging.getLogger(__name__)

POLL_S = 1.0
STOP_GRACE_S = 30.0
MIN_IMPROVEMENT = 1e-6  # a candidate must beat the serving Dice by more than rounding noise


class TrainParams(BaseModel):
    """A training request's params (MONAI Label's `POST /train/{model}` body)."""

    max_epochs: int = Field(10, ge=1, le=1000, description="epochs at most")
    time_budget_s: float | None = Field(None, gt=0, le=7 * 24 * 3600.0,
                                        description="no new epoch starts after this many seconds")
    learning_rate: float | None = Field(None, gt=0, le=1.0,
                                        description="default: the model's training config's, else 1e-4")
    val_split: float = Field(0.2, gt=0, lt=1, description="share of the labelled images kept for validation")


@dataclass(frozen=True)
class TrainingLimits:
    """Bounds on training: the job process's threads and memory, how many jobs may wait, volume size."""

    threads: int = 1
    memory_bytes: int = 8 << 30
    max_queue: int = 8
    max_voxels: int = 256**3


@dataclass
class TrainJob:
    """One queued, running or finished job, in MONAI Label's task shape (`to_json`)."""

    model: str
    params: TrainParams
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    status: str = "SUBMITTED"
    submitted: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    progress: TrainStatus | None = None
    result: dict[str, Any] = field(default_factory=dict)
    details: deque[str] = field(default_factory=lambda: deque(maxlen=20))
    process: asyncio.subprocess.Process | None = None
    stop_requested: bool = False

    def to_json(self) -> dict[str, Any]:
        progress = self.progress.model_dump() if self.progress is not None else None
        return {"id": self.id, "model": self.model, "status": self.status, "request": self.params.model_dump(),
                "submitted_ts": _ts(self.submitted), "start_ts": _ts(self.started), "end_ts": _ts(self.finished),
                "progress": progress, "result": self.result, "details": list(self.details)}


def _ts(seconds: float | None) -> str | None:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds)) if seconds is not None else None


class TrainingService:
    """The job queue, the job processes, versions and promotion.

    Args:
        registry: the served models (a promotion loads the new version into it).
        datastore: where the labelled images come from.
        versions: the versions store (`<workspace>/models`).
        work_dir: where job specs and status files live (one folder per job).
        limits: process and queue bounds.
        untrusted: model folders whose models (and their versions) load under the upload allow-list.
        device: where jobs train (the server's `--device`).
    """

    def __init__(self, registry: ModelRegistry, datastore: DatastoreService, versions: ModelVersions,
                 work_dir: Path, limits: TrainingLimits, untrusted: tuple[Path, ...] = (), device: str = "cpu") -> None:
        self.registry = registry
        self.device = device
        self.datastore = datastore
        self.versions = versions
        self.work_dir = work_dir
        self.limits = limits
        self.untrusted = untrusted
        self.jobs: list[TrainJob] = []
        self.originals: dict[str, Path] = {}
        self._queue: asyncio.Queue[TrainJob] = asyncio.Queue()
        self._current: TrainJob | None = None
        self._inference_busy = False

    # ---- models and versions ----------------------------------------------------------------------------------

    def trainable(self, name: str) -> bool:
        """A segmentation MMAR with a TorchScript network, or a bundle with a train config."""
        model = self.registry.find(name)
        if model is None or model.config.type is not ModelType.SEGMENTATION:
            return False
        folder = self._original(name)
        return (folder / "models" / "model.ts").is_file() or train_config_path(folder) is not None

    def restore_serving(self) -> None:
        """After the scan: remember each model's original folder and serve the version its pointer names."""
        for name in self.registry.names():
            model = self.registry.find(name)
            if model is None:
                continue
            self.originals.setdefault(name, model.path)
            self.versions.clean_staging(name)
            serving = self.versions.serving(name)
            if serving:
                self._load(name, serving)

    def promote(self, name: str, version: int) -> dict[str, Any]:
        """Serve `version` of `name` (0: the original folder); also a rollback.

        Raises:
            NotFound: (404) no such model or version. InvalidModel: (422) the version does not load.
        """
        self.registry.get(name)
        self._load(name, version)
        self.versions.set_serving(name, version)
        return self.versions_of(name)

    def versions_of(self, name: str) -> dict[str, Any]:
        self.registry.get(name)
        return {"model": name, "serving": self.versions.serving(name),
                "versions": [info.model_dump() for info in self.versions.list(name)]}

    def serving_figures(self, name: str) -> dict[str, Any]:
        """What `/v1/models` and `/info/` show about the weights being served: version and validation Dice."""
        serving, dice = self.versions.serving_figures(name)
        if not serving:
            return {}
        return {"trained_version": serving, "validation_dice": dice}

    def train_stats(self) -> dict[str, Any]:
        """MONAI Label's `train_stats` (what Slicer's progress bar reads) of the running or last job, by model."""
        job = self._current or self.last()
        if job is None or job.progress is None:
            return {}
        progress = job.progress
        total_time = (job.finished - job.started) if job.finished and job.started else None
        return {job.model: {"epoch": progress.epoch, "total_epochs": progress.max_epochs,
                            "best_metric": progress.best_dice or 0.0, "baseline_metric": progress.baseline_dice,
                            "total_time": total_time, "status": job.status}}

    def _original(self, name: str) -> Path:
        model = self.registry.find(name)
        return self.originals.get(name) or (model.path if model is not None else Path("/nonexistent"))

    def _trusted(self, name: str) -> bool:
        original = self._original(name)
        return not any(original.is_relative_to(root) for root in self.untrusted)

    def _load(self, name: str, version: int) -> None:
        original = self._original(name)
        folder = original if version == 0 else Path(self.versions.get(name, version).path)
        if self.registry.load(folder, name=name, trusted=self._trusted(name)) is None:
            raise InvalidModel(f"version {version} of {name!r} does not load: {self.registry.load_errors.get(name)}")

    # ---- the queue --------------------------------------------------------------------------------------------

    async def submit(self, name: str, params: TrainParams) -> TrainJob:
        """Queue a job for `name` (it runs after the jobs before it; a full queue answers 503).

        Raises:
            NotFound: (404) no such model. BadRequest: (400) a model that cannot be trained here.
            Conflict: (409) fewer than 2 labelled images. ServiceUnavailable: (503) the queue is full.
        """
        self.registry.get(name)
        if not self.trainable(name):
            raise BadRequest(f"model {name!r} cannot be trained here: training takes segmentation MMARs whose "
                             "network is TorchScript (models/model.ts) and MONAI bundles with configs/train.json",
                             model=name)
        stats = await self.datastore.stats()
        if stats.completed < 2:
            raise Conflict(f"training needs at least 2 images with a final label; the datastore has {stats.completed}")
        waiting = sum(1 for job in self.jobs if job.status == "SUBMITTED")
        if waiting >= self.limits.max_queue:
            raise ServiceUnavailable(f"{waiting} training jobs are waiting already; try again later", retry_after=60)
        job = TrainJob(model=name, params=params)
        self.jobs.append(job)
        del self.jobs[:-100]  # the history kept for GET /train/?all=true
        self._queue.put_nowait(job)
        log.info("training job %s for %s queued (%s)", job.id, name, params.model_dump())
        return job

    def current(self) -> TrainJob | None:
        return self._current

    def last(self) -> TrainJob | None:
        return self.jobs[-1] if self.jobs else None

    async def stop(self) -> TrainJob | None:
        """Stop the running job (SIGTERM, then SIGKILL after a grace period) and drop the waiting ones."""
        for job in self.jobs:
            if job.status == "SUBMITTED":
                job.status, job.finished = "STOPPED", time.time()
        job = self._current
        if job is None:
            return self.last()
        job.stop_requested = True
        if job.process is not None and job.process.returncode is None:
            signal_group(job.process, signal.SIGTERM)
            signal_group(job.process, signal.SIGCONT)  # a job frozen for a click handles its SIGTERM once thawed
            asyncio.get_running_loop().call_later(STOP_GRACE_S, signal_group, job.process, signal.SIGKILL)
        return job

    def pause_while(self, inference_busy: bool) -> None:
        """Freeze the running job while the inference pool runs anything (SIGSTOP), thaw it when the pool is idle
        (SIGCONT): clicks and segmentations keep the CPU, caches and memory bandwidth to themselves.
        Called by the pool's workers (`InferencePool.on_busy`)."""
        job = self._current
        self._inference_busy = inference_busy
        if job is not None and job.process is not None and not job.stop_requested:
            signal_group(job.process, signal.SIGSTOP if inference_busy else signal.SIGCONT)

    def shutdown(self) -> None:
        """Stop the running job's process (the server is going away; its candidate is cleaned at the next start)."""
        job = self._current
        if job is not None and job.process is not None:
            job.stop_requested = True
            signal_group(job.process, signal.SIGKILL)

    def gauges(self) -> dict[str, Any]:
        """Scrape-time figures for /metrics: jobs by state, the running job's epoch, serving/candidate Dice."""
        states = {state: 0 for state in ("SUBMITTED", "RUNNING", "DONE", "ERROR", "STOPPED")}
        for job in self.jobs:
            states[job.status] = states.get(job.status, 0) + 1
        job = self._current or self.last()
        dice: dict[tuple[str, str], float] = {}
        epoch: dict[str, float] = {}
        if job is not None and job.progress is not None:
            epoch[job.model] = float(job.progress.epoch)
            for weights, value in (("serving", job.progress.baseline_dice), ("candidate", job.progress.best_dice)):
                if value is not None:
                    dice[(job.model, weights)] = float(value)
        return {"states": states, "epoch": epoch, "dice": dice}

    async def run_forever(self) -> None:
        """The worker: one job at a time, in queue order (a background task of the app's lifespan)."""
        while True:
            job = await self._queue.get()
            if job.status != "SUBMITTED":
                continue
            self._current = job
            try:
                await self._run(job)
            except Exception as exc:  # a job must never stop the worker
                log.exception("training job %s failed", job.id)
                job.status, job.result = "ERROR", {"error": str(exc)}
            finally:
                job.finished = job.finished or time.time()
                self._current = None

    async def _run(self, job: TrainJob) -> None:
        job.status, job.started = "RUNNING", time.time()
        spec = await self._spec(job)
        spec_path = spec.status_path.with_name("spec.json")
        spec_path.write_text(spec.model_dump_json(indent=1))
        job.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "aiaa_server.learning.job", str(spec_path),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            start_new_session=True, preexec_fn=limited(self.limits.memory_bytes), env=job_env(self.limits.threads))
        if self._inference_busy:
            self.pause_while(True)
        reader = asyncio.create_task(_collect(job))
        while job.process.returncode is None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(job.process.wait(), POLL_S)
            job.progress = read_status(spec.status_path) or job.progress
        await reader
        job.progress = read_status(spec.status_path) or job.progress
        await asyncio.to_thread(self._finish, job, spec)

    async def _spec(self, job: TrainJob) -> TrainSpec:
        by_id = {image_id: TrainItem(id=image_id, image=image, label=label)
                 for image_id, image, label in await self.datastore.labelled()}
        train_ids, val_ids = validation_split(sorted(by_id), job.params.val_split)
        folder = self.work_dir / job.id
        folder.mkdir(parents=True, exist_ok=True)

        serving = self.registry.get(job.model).path
        return TrainSpec(model_name=job.model, model_dir=serving, output_dir=self.versions.staging_dir(job.model),
                         status_path=folder / "status.json", train=[by_id[k] for k in train_ids],
                         val=[by_id[k] for k in val_ids], max_epochs=job.params.max_epochs,
                         time_budget_s=job.params.time_budget_s, learning_rate=job.params.learning_rate,
                         threads=self.limits.threads, max_voxels=self.limits.max_voxels, device=self.device,
                         trusted=self._trusted(job.model))

    def _finish(self, job: TrainJob, spec: TrainSpec) -> None:
        progress = job.progress
        if job.stop_requested or job.process is None or job.process.returncode != 0 or progress is None \
                or progress.state != "done":
            stopped = job.stop_requested or (progress is not None and progress.state == "stopped")
            job.status = "STOPPED" if stopped else "ERROR"
            if not stopped:
                job.result = {"error": progress.message if progress is not None and progress.message
                              else f"the job process exited with {job.process.returncode if job.process else '?'}"}
            self.versions.clean_staging(job.model)
            return
        metrics = {"baseline_dice": progress.baseline_dice, "best_dice": progress.best_dice,
                   "best_epoch": progress.best_epoch, "training_config": progress.training_config,
                   "trained_from": self.versions.serving(job.model),
                   "job": job.id, "train_ids": [i.id for i in spec.train], "val_ids": [i.id for i in spec.val]}
        version = self.versions.add(job.model, spec.output_dir, {**_read_metrics(spec.output_dir), **metrics})
        better = (progress.best_dice or 0.0) > (progress.baseline_dice or 0.0) + MIN_IMPROVEMENT
        job.result = {"version": version.version, "promoted": better, **metrics}
        if better:
            self.promote(job.model, version.version)
        job.status = "DONE"
        log.info("training job %s: version %d of %s, Dice %.4f vs serving %.4f: %s", job.id, version.version,
                 job.model, progress.best_dice or 0.0, progress.baseline_dice or 0.0,
                 "promoted" if better else "kept, not promoted")


def _read_metrics(folder: Path) -> dict[str, Any]:
    try:
        data = json.loads((folder / "metrics.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


async def _collect(job: TrainJob) -> None:
    """Keep the job's last output lines (MONAI Label's `details`) and log them."""
    assert job.process is not None and job.process.stdout is not None
    async for raw in job.process.stdout:
        line = raw.decode("utf-8", errors="replace").rstrip()[:500]
        job.details.append(line)
        log.info("training %s: %s", job.id[:8], line)


__all__ = ["TrainJob", "TrainParams", "TrainingLimits", "TrainingService", "VersionInfo"]

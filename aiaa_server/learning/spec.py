"""What a training job is asked to do (`TrainSpec`, the job's JSON argument) and what it reports while it runs
(`TrainStatus`, a JSON file it rewrites atomically after each step that matters).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from aiaa_server.datastore.atomic import atomic_write_json

MAX_PATCH_SIZE = 1024


class TrainItem(BaseModel):
    """One datastore image and its `final` label (absolute paths; the label on the image's voxel grid).

    Not the datastore's `aiaa_server.datastore.TrainItem` (the `?output=train` answer): this one carries the id.
    """

    model_config = ConfigDict(extra="forbid")

    id: str
    image: Path
    label: Path


class TrainSpec(BaseModel):
    """One fine-tuning job: the serving model, the data, the budget.

    Attributes:
        model_name: the served model's name (reported only).
        model_dir: the serving model folder: an MMAR (`config/config_aiaa.json`, `models/model.ts`: TorchScript, the
            weights trained; a `models/model.pt2` beside it is ignored: a `torch.export` program cannot train;
            `config/config_train.json` when usable) or a MONAI bundle (`configs/train.json`, `network_def` and its
            `models/model.pt`); see `learning.recipes`.
        output_dir: where the candidate MMAR is written when the job ends `done`; must not exist yet.
        status_path: the `TrainStatus` JSON file the job keeps up to date.
        train: the items trained on.
        val: the items the baseline and every epoch are scored on (Dice).
        max_epochs: epochs at most (1 to 1000); an epoch is one pass over `train`.
        time_budget_s: no epoch starts once this many seconds have passed since the job started (the first
            epoch always runs); None: no budget.
        learning_rate: the optimiser's learning rate, in (0, 1]; None: the training config's, else 1e-4.
        seed: seeds torch, numpy and the random crops.
        threads: torch's intra-op threads.
        max_voxels: bound on one preprocessed volume (voxels per channel, network space); bigger ones fail the job.
        patch: training crop size in network voxels, one per spatial axis; None: the config's inference `roi`,
            or the whole volume when it has none.
        samples_per_item: crops drawn from an item per optimiser step (the batch size).
        device: where the network trains ("cpu", "cuda", "cuda:N").
        trusted: False for an uploaded model held to the upload allow-list: its config is checked as the
            server checks it and its `custom/` code is never imported.
    """

    model_config = ConfigDict(extra="forbid")

    model_name: str
    model_dir: Path
    output_dir: Path
    status_path: Path
    train: list[TrainItem] = Field(min_length=1)
    val: list[TrainItem] = Field(min_length=1)
    max_epochs: int = Field(ge=1, le=1000)
    time_budget_s: float | None = Field(None, gt=0, allow_inf_nan=False)
    learning_rate: float | None = Field(None, gt=0, le=1, allow_inf_nan=False)
    seed: int = 0
    threads: int = Field(1, ge=1, le=256)
    max_voxels: int = Field(ge=1)
    patch: list[Annotated[int, Field(ge=1, le=MAX_PATCH_SIZE)]] | None = Field(None, min_length=2, max_length=3)
    samples_per_item: int = Field(2, ge=1, le=64)
    device: str = Field("cpu", pattern=r"^(cpu|cuda|cuda:[0-9]{1,2})$")
    trusted: bool = True


class EpochRecord(BaseModel):
    """One finished epoch: its number (from 1), mean training loss, validation Dice and duration."""

    epoch: int
    loss: float
    val_dice: float
    seconds: float


class TrainStatus(BaseModel):
    """The job's state, as its status file holds it.

    Attributes:
        state: "running", then "done" (output written), "failed" (`message` says why) or "stopped" (SIGTERM).
        epoch: the last finished epoch (0 before the first).
        max_epochs: the spec's `max_epochs`.
        epochs: every finished epoch, in order.
        baseline_dice: the serving weights' validation Dice on `val` (None until measured).
        best_dice: the best epoch's validation Dice (None before the first epoch).
        best_epoch: that epoch's number; its weights are the ones written.
        training_config: which training config the job uses (and why not the model's own, when it has one).
        message: what the job is doing, or why it failed.
        started: when the job started (Unix time).
        finished: when it ended (Unix time); None while running.
    """

    state: Literal["running", "done", "failed", "stopped"]
    epoch: int = 0
    max_epochs: int
    epochs: list[EpochRecord] = Field(default_factory=list)
    baseline_dice: float | None = None
    best_dice: float | None = None
    best_epoch: int | None = None
    training_config: str = ""
    message: str = ""
    started: float
    finished: float | None = None


def write_status(path: Path, status: TrainStatus) -> None:
    """Write `status` to `path` atomically (temp file in the same folder, fsync, `os.replace`, fsync the folder):
    a reader sees the old status or the new one, never a partial file."""
    atomic_write_json(path, status.model_dump(mode="json"))


def read_status(path: Path) -> TrainStatus | None:
    """The status in `path`; None when it is missing, unreadable or not a valid status."""
    try:
        return TrainStatus.model_validate(json.loads(path.read_bytes()))
    except (OSError, ValueError, ValidationError):
        return None


def read_spec(path: Path) -> TrainSpec:
    """The job spec in the JSON file `path`.

    Raises:
        OSError: the file cannot be read.
        pydantic.ValidationError: invalid JSON or fields.
    """
    return TrainSpec.model_validate_json(path.read_bytes())

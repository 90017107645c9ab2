"""The training job process: `python -m aiaa_server.learning.job SPEC.json`.

It fine-tunes a served segmentation model's TorchScript weights on datastore labels and, when it ends `done`,
writes a candidate MMAR to the spec's `output_dir` (the serving config and files, `models/model.ts` with the
best epoch's weights, `metrics.json`). Progress goes to the spec's `status_path` (`TrainStatus`, rewritten
atomically at the start, after the baseline and after every epoch); log lines go to stderr.

Exit codes: 0 the job ended `done` or `stopped` (SIGTERM or SIGINT: no output written); 1 `failed` (the status
says why); 2 the spec could not be read (no status written). A SIGTERM that arrives once the output is being
written is ignored: the job then ends `done`. A job killed with SIGKILL leaves its status `running`.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import torch
from monai.utils import set_determinism
from pydantic import ValidationError

from aiaa_server.datastore.atomic import atomic_write_json
from aiaa_server.errors import AIAAError, BadRequest
from aiaa_server.learning.data import PreparedItem
from aiaa_server.learning.recipes import Recipe, build_recipe
from aiaa_server.learning.spec import EpochRecord, TrainSpec, TrainStatus, read_spec, write_status
from aiaa_server.learning.trainer import Trainer
from aiaa_server.mmar.fsync import fsync_dir, fsync_tree

log = logging.getLogger("aiaa_server.learning.job")

EXIT_OK, EXIT_FAILED, EXIT_BAD_SPEC = 0, 1, 2
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
PARTIAL_SUFFIX = ".partial"
METRICS_FILE = "metrics.json"


class StopRequested(BaseException):  # BaseException: no `except Exception` on the way (MONAI's) eats it
    """SIGTERM (or SIGINT) arrived: the job ends `stopped`."""


def _raise_stop(signum: int, _frame: FrameType | None) -> None:
    raise StopRequested(signal.Signals(signum).name)


def _ignore_stop_signals() -> None:
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


@dataclass
class StatusFile:
    """The job's status and the file it is kept in; `update` rewrites the file."""

    path: Path
    status: TrainStatus
    clock_start: float = field(default_factory=time.monotonic)

    def update(self, **changes: Any) -> None:
        self.status = self.status.model_copy(update=changes)
        write_status(self.path, self.status)

    def elapsed(self) -> float:
        return time.monotonic() - self.clock_start


def partial_dir(output_dir: Path) -> Path:
    """Where the output is built before it is renamed into place."""
    return output_dir.with_name(output_dir.name + PARTIAL_SUFFIX)


def _check_paths(spec: TrainSpec) -> None:
    model_dir, output_dir = spec.model_dir.resolve(), spec.output_dir.resolve()
    if output_dir.exists():
        raise BadRequest(f"the output folder {output_dir} already exists")
    if output_dir.is_relative_to(model_dir):
        raise BadRequest("the output folder must not lie inside the model folder")
    shutil.rmtree(partial_dir(output_dir), ignore_errors=True)  # left by a job killed while writing


def _setup_torch(spec: TrainSpec) -> torch.device:
    torch.set_num_threads(spec.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # only settable before any inter-op work; harmless when already set
        pass
    set_determinism(seed=spec.seed)
    device = torch.device(spec.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BadRequest(f"device {spec.device} asked for, but CUDA is not available")
    return device


def _budget_spent(spec: TrainSpec, status: StatusFile) -> bool:
    return spec.time_budget_s is not None and status.elapsed() >= spec.time_budget_s


def _train(spec: TrainSpec, status: StatusFile, trainer: Trainer, train: list[PreparedItem],
           val: list[PreparedItem]) -> None:
    """Epochs until `max_epochs` or the time budget (the first always runs), the status rewritten after each."""
    for epoch in range(1, spec.max_epochs + 1):
        if epoch > 1 and _budget_spent(spec, status):
            log.info("time budget of %.0f s spent after %d epochs", spec.time_budget_s, epoch - 1)
            break
        started = time.monotonic()
        loss = trainer.train_epoch(train)
        dice = trainer.validation_dice(val)
        record = EpochRecord(epoch=epoch, loss=loss, val_dice=dice, seconds=time.monotonic() - started)
        best = status.status.best_dice is None or dice > status.status.best_dice
        if best:
            trainer.keep_best()
        log.info("epoch %d: loss %.4f, validation Dice %.4f%s", epoch, loss, dice, " (best)" if best else "")
        status.update(epoch=epoch, epochs=[*status.status.epochs, record],
                      **({"best_dice": dice, "best_epoch": epoch} if best else {}))


def _write_output(spec: TrainSpec, recipe: Recipe, status: TrainStatus) -> None:
    """Build the candidate MMAR beside `output_dir` and rename it into place."""
    building = partial_dir(spec.output_dir)
    source = spec.model_dir.resolve()

    def skip_networks(folder: str, _names: list[str]) -> list[str]:
        return ["models"] if Path(folder) == source else []  # the old networks are the old weights

    shutil.copytree(source, building, ignore=skip_networks)
    (building / "models").mkdir()
    recipe.save(recipe.trainer.best_network(), building)
    atomic_write_json(building / METRICS_FILE, {
        "training_config": status.training_config, "baseline_dice": status.baseline_dice, "best_dice": status.best_dice, "best_epoch": status.best_epoch,
        "epochs": [record.model_dump() for record in status.epochs],
        "train_ids": [item.id for item in spec.train], "val_ids": [item.id for item in spec.val],
    })
    fsync_tree(building)
    os.replace(building, spec.output_dir)
    fsync_dir(spec.output_dir.parent)


def run_job(spec: TrainSpec) -> int:
    """Run the job `spec` describes, reporting through its status file (see the module docstring).

    SIGTERM and SIGINT stop it while it runs (the handlers they had before are restored on return; call it from
    the main thread).

    Returns:
        The process exit code: EXIT_OK (`done` or `stopped`) or EXIT_FAILED (`failed`).
    """
    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    status = StatusFile(spec.status_path, TrainStatus(state="running", max_epochs=spec.max_epochs,
                                                      started=time.time(), message="preparing the data"))
    try:
        for signum in STOP_SIGNALS:
            signal.signal(signum, _raise_stop)
        return _run(spec, status)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _run(spec: TrainSpec, status: StatusFile) -> int:
    try:
        status.update()
        _check_paths(spec)
        device = _setup_torch(spec)
        log.info("fine-tuning %s: %d training and %d validation images, at most %d epochs", spec.model_name,
                 len(spec.train), len(spec.val), spec.max_epochs)
        recipe = build_recipe(spec, device)
        log.info("training config: %s; prepared %s", recipe.source,
                 ", ".join(f"{p.id} {tuple(p.image.shape)}" for p in [*recipe.train, *recipe.val]))
        status.update(message="measuring the baseline", training_config=recipe.source)
        status.update(baseline_dice=recipe.trainer.validation_dice(recipe.val), message="training")
        log.info("baseline validation Dice %.4f", status.status.baseline_dice)
        _train(spec, status, recipe.trainer, recipe.train, recipe.val)
        _ignore_stop_signals()
        _write_output(spec, recipe, status.status)
        status.update(state="done", message=f"best epoch {status.status.best_epoch}", finished=time.time())
        log.info("done: best epoch %d, candidate written to %s", status.status.best_epoch, spec.output_dir)
        return EXIT_OK
    except StopRequested as stop:
        _ignore_stop_signals()
        shutil.rmtree(partial_dir(spec.output_dir), ignore_errors=True)
        status.update(state="stopped", message=f"stopped by {stop}", finished=time.time())
        log.info("stopped by %s", stop)
        return EXIT_OK
    except Exception as exc:
        _ignore_stop_signals()
        log.exception("training job failed")
        shutil.rmtree(partial_dir(spec.output_dir), ignore_errors=True)
        message = exc.message if isinstance(exc, AIAAError) else f"{type(exc).__name__}: {exc}"
        status.update(state="failed", message=message, finished=time.time())
        return EXIT_FAILED


def main(argv: list[str] | None = None) -> int:
    """Entry point: `python -m aiaa_server.learning.job SPEC.json`; returns the exit code."""
    args = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    warnings.filterwarnings("once", category=UserWarning)  # MONAI repeats its crop warnings at every step
    if len(args) != 1:
        print("usage: python -m aiaa_server.learning.job SPEC.json", file=sys.stderr)
        return EXIT_BAD_SPEC
    try:
        spec = read_spec(Path(args[0]))
    except (OSError, ValidationError) as exc:
        print(f"cannot read the job spec {args[0]}: {exc}", file=sys.stderr)
        return EXIT_BAD_SPEC
    _stop_when_orphaned(os.getppid())
    return run_job(spec)


def _stop_when_orphaned(parent: int, every_s: float = 1.0) -> None:
    """A server killed with -9 cannot stop its job: the job stops itself (SIGTERM to itself, ending `stopped`)
    once its parent is gone, instead of training on for nobody."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every_s)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())

"""The uncertainty scorer on a real threshold model, pool and datastore: scores, their order, the refresh after a
promotion, images over the decode limits, the model it picks; and the entropy itself."""

from __future__ import annotations

import asyncio
import logging
import math
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from aiaa_server.datastore import LocalDatastore
from aiaa_server.engines.torchscript import TorchScriptPool
from aiaa_server.imaging.limits import DecodeLimits
from aiaa_server.inference.pool import InferencePool, Lane
from aiaa_server.mmar.registry import ModelRegistry
from aiaa_server.services.datastore import DatastoreService
from aiaa_server.services.uncertainty import UncertaintyScorer, mean_entropy
from tests.support.mmars import write_threshold_mmar
from tests.support.volumes import lps_affine, save_nifti

# The threshold model scales -500..500 HU to 0..1 and its logits are (0.5 - x, x - 0.5): 0 HU is a coin toss.
HU = {"near": 0, "mid": 200, "far": -800, "done": 0}
SHAPE = (20, 20, 12)


def expected(hu: float) -> float:
    """The threshold model's normalised entropy on a constant image of `hu`."""
    x = min(max((hu + 500) / 1000, 0.0), 1.0)
    p = 1 / (1 + math.exp(-2 * (x - 0.5)))
    return -(p * math.log(p) + (1 - p) * math.log(1 - p)) / math.log(2)


def constant_image(path: Path, hu: int, shape: tuple[int, int, int] = SHAPE) -> Path:
    return save_nifti(path, np.full(shape, hu, dtype=np.int16), lps_affine((2.0, 2.0, 2.0)))


class World:
    """A registry with the threshold model, a pool and a datastore of constant images."""

    def __init__(self, root: Path, limits: DecodeLimits | None = None) -> None:
        self.folder = write_threshold_mmar(root / "models" / "thr")
        self.registry = ModelRegistry(TorchScriptPool())
        assert self.registry.load(self.folder) is not None
        self.pool = InferencePool(3, 4, reserve_interactive=False)  # three could run batch jobs at once
        self.store = LocalDatastore(root / "ds")
        (root / "files").mkdir()
        for name, hu in HU.items():
            self.store.add_image(name, constant_image(root / "files" / f"{name}.nii.gz", hu))
        self.store.save_label("done", constant_image(root / "files" / "label.nii.gz", 1))
        self.service = DatastoreService(self.store, root / "tmp", limits or DecodeLimits())

    def scorer(self, model_name: str | None = None) -> UncertaintyScorer:
        return UncertaintyScorer(self.registry, self.pool, self.service, model_name, interval_s=1.0)

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        self.store.close()


@pytest.fixture()
def world(tmp_path: Path) -> Iterator[World]:
    built = World(tmp_path)
    yield built
    built.close()


def test_entropy_is_normalised_to_zero_to_one() -> None:
    assert mean_entropy(torch.zeros(3, 4, 4, 4)) == pytest.approx(1.0)  # equal logits: a three-way toss
    assert mean_entropy(torch.tensor([[[-50.0]], [[50.0]]])) == pytest.approx(0.0, abs=1e-6)
    assert mean_entropy(torch.zeros(1, 5, 5)) == pytest.approx(1.0)  # one channel: a sigmoid's logit
    half = torch.stack([torch.zeros(2, 2), torch.full((2, 2), 20.0)])  # half the voxels sure, half a toss
    half[:, 0] = 0.0
    assert mean_entropy(half) == pytest.approx(0.5, abs=1e-6)
    probabilities = torch.tensor([[[0.5, 1.0]], [[0.5, 0.0]]])  # already softmaxed: not softmaxed again
    assert mean_entropy(probabilities) == pytest.approx(0.5)


def test_a_round_scores_every_unlabelled_image_in_the_batch_lane(world: World) -> None:
    scorer = world.scorer()
    lanes: list[Lane] = []
    running = [0, 0]  # now, most at once
    guard = threading.Lock()
    submit = world.pool.submit

    def counted(fn: Callable[..., float], *args: object) -> float:
        with guard:
            running[0] += 1
            running[1] = max(running)
        try:
            return fn(*args)
        finally:
            with guard:
                running[0] -= 1

    def spy(lane: Lane, fn: Callable[..., float], *args: object, **kwargs: object) -> object:
        lanes.append(lane)
        return submit(lane, counted, fn, *args, **kwargs)

    world.pool.submit = spy  # type: ignore[method-assign]
    assert asyncio.run(scorer.run_once()) == 3
    assert lanes == [Lane.BATCH] * 3 and running == [0, 1]  # one image at a time, in the batch lane
    scores = scorer.scores()
    assert set(scores) == {"near", "mid", "far"}  # the labelled image is never scored
    for name, score in scores.items():
        assert score == pytest.approx(expected(HU[name]), abs=1e-4), name
    assert scores["near"] > scores["mid"] > scores["far"]
    assert asyncio.run(scorer.run_once()) == 0  # nothing new: nothing scored again
    assert scorer.model is world.registry.find("thr") and scorer.kept == 3

    picks = [asyncio.run(world.service.next_sample("uncertainty", f"ann{i}", None, scores)) for i in range(4)]
    assert [pick.id if pick else None for pick in picks] == ["near", "mid", "far", None]


def test_new_weights_drop_every_score_and_scoring_starts_over(world: World) -> None:
    scorer = world.scorer("thr")
    asyncio.run(scorer.run_once())
    before = scorer.model
    assert len(scorer.scores()) == 3 and scorer.refreshes == 0
    world.registry.load(world.folder, name="thr")  # what a promotion or a rollback does: a new model object
    assert scorer.scores() == {} and scorer.refreshes == 1
    assert scorer.model is world.registry.find("thr") and scorer.model is not before
    assert asyncio.run(scorer.run_once()) == 3 and len(scorer.scores()) == 3
    assert scorer.scored == 6


def test_a_changed_or_removed_image_is_scored_again_or_forgotten(world: World, tmp_path: Path) -> None:
    scorer = world.scorer()
    asyncio.run(scorer.run_once())
    world.store.add_image("far", constant_image(tmp_path / "files" / "far2.nii.gz", 0), replace=True)
    world.store.remove_image("mid")
    world.store.save_label("near", constant_image(tmp_path / "files" / "label.nii.gz", 1))
    assert asyncio.run(scorer.run_once()) == 1
    assert scorer.scores() == {"far": pytest.approx(1.0)}


def test_an_image_over_the_decode_limits_is_skipped_and_logged(tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    world = World(tmp_path, DecodeLimits(max_voxels=SHAPE[0] * SHAPE[1] * SHAPE[2]))
    try:
        world.store.add_image("huge", constant_image(tmp_path / "files" / "huge.nii.gz", 0, (40, 40, 12)))
        scorer = world.scorer()
        with caplog.at_level(logging.WARNING, logger="aiaa_server.services.uncertainty"):
            assert asyncio.run(scorer.run_once()) == 3
        assert set(scorer.scores()) == {"near", "mid", "far"}
        assert any("huge skipped" in record.getMessage() for record in caplog.records)
        caplog.clear()
        assert asyncio.run(scorer.run_once()) == 0 and not caplog.records  # not tried (nor logged) every round
        picks = [asyncio.run(world.service.next_sample("uncertainty", f"a{i}", None, scorer.scores()))
                 for i in range(4)]
        assert [pick.id for pick in picks if pick] == ["near", "mid", "far", "huge"]  # unscored: last
    finally:
        world.close()


def test_the_model_is_the_first_segmentation_model_or_the_named_one(world: World, tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    world.registry.load(write_threshold_mmar(tmp_path / "models" / "another"))
    assert world.scorer().serving_model() is world.registry.find("another")  # sorted: another < thr
    assert world.scorer("thr").serving_model() is world.registry.find("thr")
    missing = world.scorer("nowhere")
    with caplog.at_level(logging.WARNING, logger="aiaa_server.services.uncertainty"):
        assert asyncio.run(missing.run_once()) == 0
        assert asyncio.run(missing.run_once()) == 0
    assert missing.scores() == {}
    assert [r.getMessage() for r in caplog.records].count(
        "uncertainty: nothing to score with: model 'nowhere' is not a served segmentation model") == 1


def test_closing_stops_the_background_task(world: World) -> None:
    scorer = world.scorer()

    async def scored() -> None:
        while scorer.kept < 3:
            await asyncio.sleep(0.01)

    async def main() -> None:
        task = asyncio.create_task(scorer.run_forever())
        await asyncio.wait_for(scored(), timeout=120)  # a guard against a hang, not a speed check
        scorer.close()
        await asyncio.wait_for(task, timeout=120)

    asyncio.run(main())
    assert scorer.kept == 3

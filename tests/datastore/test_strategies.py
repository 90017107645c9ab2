from __future__ import annotations

import random
import threading
from pathlib import Path

import pytest

from aiaa_server.datastore import DatastoreLimits, LocalDatastore
from aiaa_server.errors import BadRequest, Conflict
from tests.datastore.conftest import FakeClock, write_nifti


@pytest.fixture
def five(tmp_path: Path, files: Path, clock: FakeClock) -> LocalDatastore:
    ds = LocalDatastore(tmp_path / "ds", DatastoreLimits(lock_seconds=60, max_lock_seconds=120,
                                                         max_locks_per_client=2),
                        clock=clock, rng=random.Random(7))
    for name in ("e", "c", "a", "d", "b"):
        ds.add_image(name, write_nifti(files / f"{name}.nii.gz"))
    ds.save_label("a", write_nifti(files / "l.nii.gz"))  # completed: never handed out
    ds.save_label("b", write_nifti(files / "l.nii.gz"), "original")  # a model's label: still to annotate
    return ds


def test_first_hands_out_unlabelled_unlocked_images_in_id_order(five: LocalDatastore, clock: FakeClock) -> None:
    got = [five.next_sample("first", f"ann{i}").id for i in range(4)]
    assert got == ["b", "c", "d", "e"]
    assert five.next_sample("first", "ann9") is None  # all locked
    info = five.get_image_info("b")
    assert info.lock.client_id == "ann0" and info.lock.expires == clock.now + 60
    assert info.strategy["first"]["client_id"] == "ann0"


def test_no_image_goes_to_two_annotators_at_once(five: LocalDatastore) -> None:
    results: list[str | None] = []
    def ask(i: int) -> None:
        sample = five.next_sample("random", f"ann{i}")
        results.append(sample.id if sample else None)
    threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    handed = [r for r in results if r is not None]
    assert sorted(handed) == ["b", "c", "d", "e"] and results.count(None) == 4


def test_an_expired_lock_frees_the_image(five: LocalDatastore, clock: FakeClock) -> None:
    assert five.next_sample("first", "slow").id == "b"
    clock.advance(59)
    assert five.next_sample("first", "other").id == "c"
    clock.advance(1)  # b's lock expires exactly now
    assert five.next_sample("first", "third").id == "b"
    assert five.get_image_info("b").lock.client_id == "third"


def test_lock_time_is_bounded(five: LocalDatastore, clock: FakeClock) -> None:
    assert five.next_sample("first", "x", lock_seconds=10**9).lock.expires == clock.now + 120
    with pytest.raises(BadRequest):
        five.next_sample("first", "x", lock_seconds=0)


def test_one_client_holds_a_bounded_number_of_locks(five: LocalDatastore, clock: FakeClock) -> None:
    for expected in ("b", "c"):
        assert five.next_sample("first", "skipper").id == expected
        clock.advance(1)
    assert five.next_sample("first", "skipper").id == "d"  # max 2: b, its oldest, is freed
    assert set(five.locks()) == {"c", "d"}
    assert five.next_sample("first", "other").id == "b"


def test_saving_a_final_label_completes_and_unlocks(five: LocalDatastore, files: Path) -> None:
    assert five.next_sample("first", "ann").id == "b"
    five.save_label("b", write_nifti(files / "l.nii.gz"), client_id="ann")
    assert five.get_image_info("b").lock is None
    assert five.next_sample("first", "ann").id == "c"
    assert "b" not in five.locks()


def test_release_needs_the_holder_unless_forced(five: LocalDatastore) -> None:
    five.next_sample("first", "ann")
    with pytest.raises(Conflict):
        five.release_image("b", "intruder")
    assert five.release_image("b", "ann") is True
    assert five.release_image("b", "ann") is False
    five.next_sample("first", "ann")
    assert five.release_image("b", force=True) is True


def test_random_is_repeatable_with_a_seed(tmp_path: Path, files: Path, clock: FakeClock) -> None:
    picks = []
    for run in range(2):
        ds = LocalDatastore(tmp_path / f"ds{run}", clock=clock, rng=random.Random(42))
        for i in range(20):
            ds.add_image(f"img{i:02d}", write_nifti(files / "i.nii.gz"))
        picks.append([ds.next_sample("random", "c").id for _ in range(5)])
    assert picks[0] == picks[1] and len(set(picks[0])) == 5 and picks[0] != sorted(picks[0])


def test_locks_survive_a_restart(five: LocalDatastore, clock: FakeClock) -> None:
    five.next_sample("first", "ann")
    reopened = LocalDatastore(five.root, five.limits, clock=clock)
    assert reopened.next_sample("first", "other").id == "c"


def test_unknown_strategies_are_refused(five: LocalDatastore) -> None:
    with pytest.raises(BadRequest, match="first, random"):
        five.next_sample("epistemic")


def test_uncertainty_hands_out_the_highest_score_first(five: LocalDatastore, clock: FakeClock) -> None:
    scores = {"a": 0.99, "b": 0.2, "c": 0.7, "d": 0.5, "e": 0.7}  # a is done: never handed out, whatever its score
    got = [five.next_sample("uncertainty", f"ann{i}", scores=scores).id for i in range(4)]
    assert got == ["c", "e", "d", "b"]  # ties by id
    assert five.next_sample("uncertainty", "ann9", scores=scores) is None  # all locked
    info = five.get_image_info("c")
    assert info.lock.client_id == "ann0" and info.lock.strategy == "uncertainty"
    assert info.lock.expires == clock.now + 60 and info.strategy["uncertainty"]["client_id"] == "ann0"


def test_uncertainty_puts_unscored_images_after_every_scored_one(five: LocalDatastore) -> None:
    scores = {"e": 0.01, "c": float("nan")}  # not a number counts as no score
    got = [five.next_sample("uncertainty", f"ann{i}", scores=scores).id for i in range(4)]
    assert got == ["e", "b", "c", "d"]


def test_uncertainty_without_scores_goes_by_id(five: LocalDatastore) -> None:
    assert [five.next_sample("uncertainty", f"ann{i}").id for i in range(2)] == ["b", "c"]
    assert five.next_sample("uncertainty", "ann2", scores={}).id == "d"


def test_uncertainty_respects_locks_expiry_and_per_client_bounds(five: LocalDatastore, clock: FakeClock) -> None:
    scores = {"b": 0.1, "c": 0.9, "d": 0.8, "e": 0.3}
    assert five.next_sample("first", "other").id == "b"  # held by another annotator under another strategy
    assert five.next_sample("uncertainty", "ann", scores={"b": 1.0}).id == "c"  # b is taken, whatever its score
    clock.advance(1)
    assert five.next_sample("uncertainty", "ann", scores=scores).id == "d"
    clock.advance(1)
    assert five.next_sample("uncertainty", "ann", scores=scores).id == "e"  # max 2 locks: c, its oldest, is freed
    assert set(five.locks()) == {"b", "d", "e"}
    assert five.next_sample("uncertainty", "third", scores=scores).id == "c"
    clock.advance(60)  # every lock has expired
    assert five.next_sample("uncertainty", "fourth", scores=scores).id == "c"


def test_no_uncertain_image_goes_to_two_annotators_at_once(five: LocalDatastore) -> None:
    results: list[str | None] = []
    scores = {"b": 0.4, "c": 0.3, "d": 0.2, "e": 0.1}
    def ask(i: int) -> None:
        sample = five.next_sample("uncertainty", f"ann{i}", scores=scores)
        results.append(sample.id if sample else None)
    threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(r for r in results if r is not None) == ["b", "c", "d", "e"] and results.count(None) == 4

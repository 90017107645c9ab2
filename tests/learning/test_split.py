from __future__ import annotations

import pytest

from aiaa_server.errors import BadRequest
from aiaa_server.learning.split import validation_split

IDS = [f"case_{i:03d}" for i in range(40)]


def test_the_same_ids_in_any_order_give_the_same_split() -> None:
    train, val = validation_split(IDS, 0.2)
    assert validation_split(list(reversed(IDS)), 0.2) == (train, val)
    assert len(val) == 8 and len(train) == 32
    assert set(train) | set(val) == set(IDS) and not set(train) & set(val)


def test_adding_images_moves_at_most_the_boundary_id() -> None:
    ids = list(IDS)
    train, val = validation_split(ids, 0.2)
    for index in range(12):
        ids.append(f"new_{index}")
        new_train, new_val = validation_split(ids, 0.2)
        moved = (set(train) & set(new_val)) | (set(val) & set(new_train))
        assert len(moved) <= 1
        train, val = new_train, new_val


def test_ids_never_change_sides_while_the_validation_size_stays() -> None:
    _, val = validation_split(IDS[:20], 0.1)
    _, val_more = validation_split(IDS[:20] + ["another"], 0.1)  # round(2.1) = round(2.0) = 2
    assert set(val_more) <= set(val) | {"another"}


@pytest.mark.parametrize(("count", "fraction", "minimum", "expected"), [
    (10, 0.2, 1, 2), (10, 0.0, 1, 1), (10, 0.0, 0, 0), (10, 0.04, 3, 3), (10, 1.0, 1, 9), (2, 0.5, 1, 1),
    (3, 0.9, 5, 2),
])
def test_validation_size_follows_fraction_and_minimum_and_leaves_one_to_train(
        count: int, fraction: float, minimum: int, expected: int) -> None:
    train, val = validation_split(IDS[:count], fraction, minimum)
    assert len(val) == expected and len(train) == count - expected


def test_duplicates_count_once() -> None:
    train, val = validation_split(["a", "b", "a", "b"], 0.5)
    assert sorted(train + val) == ["a", "b"]


@pytest.mark.parametrize("ids", [[], ["only"], ["same", "same"]])
def test_fewer_than_two_ids_are_refused(ids: list[str]) -> None:
    with pytest.raises(BadRequest, match="at least 2 labeled images"):
        validation_split(ids, 0.2)


@pytest.mark.parametrize(("fraction", "minimum"), [(-0.1, 1), (1.5, 1), (0.2, -1)])
def test_bad_fraction_or_minimum_is_refused(fraction: float, minimum: int) -> None:
    with pytest.raises(BadRequest):
        validation_split(IDS, fraction, minimum)

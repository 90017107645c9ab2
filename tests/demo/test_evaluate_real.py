"""`python -m aiaa_demo.evaluate_real`: the simulated annotator on synthetic masks, the named structures, the
tables, and a `--quick` run of one model on real scans (skipped, with the command to run, without the cache)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import ndimage

from aiaa_demo.datasets import available
from aiaa_demo.datasets.cache import FETCH_HINT, default_cache
from aiaa_demo.evaluate_real import BASELINE, main, markdown, reported_clicks
from aiaa_demo.evaluation import click_session, extreme_points_dice
from aiaa_demo.real_structures import (
    QUICK,
    STRUCTURES,
    Structure,
    bound_volume,
    load_structure,
    matching_labels,
    resolve,
    structure_mask,
)
from aiaa_demo.synthetic_shapes import first_click, next_click

MODELS = Path(__file__).resolve().parents[2] / "models"
AAL_LIKE = {"Precentral_L": 1, "Precentral_R": 2, "Amygdala_L": 41, "Amygdala_R": 42, "Cerebelum_3_L": 95,
            "Cerebelum_3_R": 96, "Cerebelum_Crus1_L": 91, "Vermis_1_2": 109}


def _ball(shape: tuple[int, ...], centre: tuple[int, ...], radius: float) -> np.ndarray:
    grid = np.indices(shape)
    return sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius ** 2


# --------------------------------------------------------------------------------------------------- #
# the simulated annotator
# --------------------------------------------------------------------------------------------------- #


def test_first_click_is_the_most_interior_voxel_in_mm() -> None:
    mask = _ball((40, 40, 40), (25, 20, 20), 8)
    mask[2:30, 18:21, 18:21] = True  # a thin tail reaching out of the ball
    assert first_click(mask) == [25, 20, 20]
    # a slab of 40 x 40 voxels x 6 slices of 5 mm: 15 mm deep at most, in its middle slices
    slab = np.zeros((50, 50, 10), dtype=bool)
    slab[5:45, 5:45, 2:8] = True
    point = first_click(slab, spacing=(1.0, 1.0, 5.0))
    depth = ndimage.distance_transform_edt(np.pad(slab, 1), sampling=(1.0, 1.0, 5.0))[1:-1, 1:-1, 1:-1]
    assert slab[tuple(point)] and depth[tuple(point)] == depth.max() == 15.0 and point[2] in (4, 5)


def test_next_click_is_a_foreground_click_in_the_largest_miss() -> None:
    truth = _ball((48, 48, 48), (30, 30, 30), 10)
    prediction = truth.copy()
    prediction[30:, :, :] = False  # a big miss: half of the ball
    prediction |= _ball((48, 48, 48), (8, 8, 8), 2)  # a small leak elsewhere
    is_foreground, point = next_click(truth, prediction)
    assert is_foreground and truth[tuple(point)] and not prediction[tuple(point)]
    assert point[0] > 32  # the middle of the missed half, not its cut face


def test_next_click_is_a_background_click_in_the_largest_leak() -> None:
    truth = _ball((48, 48, 48), (20, 20, 20), 8)
    prediction = truth | _ball((48, 48, 48), (38, 38, 38), 6)  # a big leak
    prediction[20, 20, 20] = False  # a one-voxel miss
    is_foreground, point = next_click(truth, prediction)
    assert not is_foreground and point == [38, 38, 38]
    assert next_click(truth, truth) is None


def _growing_model(truth: np.ndarray, calls: list[dict[str, Any]], leak_at: tuple[int, int, int] = (24, 12, 33)):
    """A fake model: a ball of radius 3 around each foreground click, intersected with the truth, plus a leak
    (a ball of radius 8 at `leak_at`) until the first background click."""
    leak = _ball(truth.shape, leak_at, 8)

    def predict(params: dict[str, Any]) -> np.ndarray:
        calls.append(params)
        result = np.zeros(truth.shape, dtype=bool)
        for point in params["foreground"]:
            result |= _ball(truth.shape, tuple(point), 3) & truth
        if not params["background"]:
            result |= leak
        return result

    return predict


def test_click_session_is_deterministic_and_follows_the_errors() -> None:
    truth = np.zeros((48, 24, 48), dtype=bool)
    truth[14:34, 8:16, 16:24] = True
    runs = []
    for _ in range(2):
        calls: list[dict[str, Any]] = []
        trace = click_session(_growing_model(truth, calls), truth, clicks=5)
        runs.append((trace.dice, trace.clicks, calls))
    assert runs[0] == runs[1]  # same clicks, same figures
    trace_dice, clicks, calls = runs[0]
    assert len(trace_dice) == 5 and len(calls) == 5 and len(clicks) == 5
    assert clicks[0] == (True, first_click(truth))
    assert all(truth[tuple(p)] for fg, p in clicks if fg)
    assert clicks[1] == (False, [24, 12, 33])  # the leak outweighs either half of the miss: its centre
    for sent, (_, newest) in zip(calls, clicks):
        assert sent["current_point"] == [newest]
    assert trace_dice[-1] > trace_dice[0]


def test_click_session_stops_clicking_once_the_result_is_perfect() -> None:
    truth = _ball((20, 20, 20), (10, 10, 10), 5)
    calls: list[dict[str, Any]] = []

    def predict(params: dict[str, Any]) -> np.ndarray:
        calls.append(params)
        return truth if len(calls) > 1 else truth & (np.indices(truth.shape)[0] < 10)

    trace = click_session(predict, truth, clicks=5, probe_slice=10)
    assert len(calls) == 2 and len(trace.clicks) == 2 and trace.clicks[1][0]
    assert trace.dice[1:] == [1.0] * 4 and len(trace.slice_dice) == 5 and trace.slice_dice[-1] == 1.0


def test_2d_click_session_clicks_and_scores_on_one_slice() -> None:
    truth = np.zeros((32, 32, 9), dtype=bool)
    truth[8:24, 8:24, 2:7] = True
    truth[8:12, 8:12, 4] = False  # a notch that only slice 4 has
    calls: list[dict[str, Any]] = []
    predict = _growing_model(truth, calls, leak_at=(0, 0, 40))  # no leak

    def on_slice_only(params: dict[str, Any]) -> np.ndarray:
        result = predict(params)
        result[..., [z for z in range(9) if z != 4]] = False
        return result

    trace = click_session(on_slice_only, truth, clicks=4, spacing=(1.0, 1.0, 5.0), on_slice=4)
    assert all(point[2] == 4 for _, point in trace.clicks) and len(trace.dice) == 4
    assert trace.clicks[0][1] == [*first_click(truth[..., 4]), 4]
    with pytest.raises(RuntimeError, match="only fill the clicked slice"):
        click_session(predict, truth, clicks=2, on_slice=4)  # the fake's balls reach the other slices
    with pytest.raises(ValueError, match="empty on slice 0"):
        click_session(on_slice_only, truth, clicks=2, on_slice=0)


def test_extreme_points_session_sends_the_six_true_extreme_points() -> None:
    truth = np.zeros((20, 20, 20), dtype=bool)
    truth[3:9, 5:15, 7:10] = True
    sent: list[dict[str, Any]] = []
    score, points = extreme_points_dice(lambda params: sent.append(params) or truth[:, ::-1, :], truth)
    assert sent == [{"points": points}] and len(points) == 6
    assert [p[0] for p in points[:2]] == [3, 8] and [p[2] for p in points[4:]] == [7, 9]
    assert score == 1.0  # the box flipped along y is the same box


# --------------------------------------------------------------------------------------------------- #
# structures and the report
# --------------------------------------------------------------------------------------------------- #


def test_named_labels_and_their_unions() -> None:
    pick = {s.name: s for s in STRUCTURES}
    assert matching_labels(pick["Amygdala_L"], AAL_LIKE) == {"Amygdala_L": 41}
    assert matching_labels(pick["Cerebellum_L"], AAL_LIKE) == {"Cerebelum_3_L": 95, "Cerebelum_Crus1_L": 91}
    assert set(matching_labels(pick["Hemisphere_L"], AAL_LIKE).values()) == {1, 41, 95, 91}  # no _R, no vermis
    with pytest.raises(KeyError, match="no label"):
        matching_labels(Structure("x", "colin27_aal", "Caudate_L", ""), AAL_LIKE)
    labels = np.array([[0, 41, 42], [95, 41, 109]], dtype=np.uint8)
    np.testing.assert_array_equal(structure_mask(labels, (41,)), labels == 41)
    np.testing.assert_array_equal(structure_mask(labels, (95, 91)), labels == 95)


def test_structures_by_name() -> None:
    assert [s.name for s in resolve(None, quick=True)] == list(QUICK)
    assert len(resolve(None)) == len(STRUCTURES)
    chosen = resolve(["amygdala_l", "Caudate_R"])
    assert chosen[0].name == "Amygdala_L" and (chosen[1].volume, chosen[1].pattern) == ("colin27_aal", "Caudate_R")
    with pytest.raises(KeyError, match="unknown structure"):
        resolve(["lung 3"])


def test_a_big_volume_is_cut_around_the_structure_keeping_world_positions() -> None:
    image = np.arange(60 * 50 * 40, dtype=np.float32).reshape(60, 50, 40)
    mask = np.zeros(image.shape, dtype=bool)
    mask[30:34, 20:22, 10:12] = True
    affine = np.diag([2.0, 2.0, 4.0, 1.0])
    affine[:3, 3] = [-50.0, 10.0, 3.0]
    assert bound_volume(image, affine, mask, max_voxels=image.size)[3] == ""
    cut_image, cut_affine, cut_mask, note = bound_volume(image, affine, mask, max_voxels=1000, margin_mm=8.0)
    assert cut_image.shape == (4 + 8, 2 + 8, 2 + 4) and cut_mask.sum() == mask.sum() and "cut from" in note
    inside = np.argwhere(cut_mask)[0]
    original = inside + [26, 16, 8]
    assert cut_image[tuple(inside)] == image[tuple(original)] and mask[tuple(original)]
    np.testing.assert_allclose(cut_affine @ [*inside, 1], affine @ [*original, 1])


def test_reported_click_counts() -> None:
    assert reported_clicks(5) == [1, 3, 5] and reported_clicks(2) == [1, 2] and reported_clicks(7) == [1, 3, 5, 7]


def test_markdown_puts_the_baseline_beside_each_model() -> None:
    structures = [{"name": "A", "volume": "v", "ml": 1.0}, {"name": "B", "volume": "v", "ml": 2.0}]
    three = {"A": {"dice": [0.1, 0.2, 0.3], "slice_dice": [0.5, 0.6, 0.7]}, "B": {"error": "boom"}}
    report = {
        "clicks": 3, "skipped": {"other": "no MMAR"}, "structures": structures,
        "protocols": {"m2": "2d", "mx": "extreme_points", BASELINE: "3d"},
        "results": {"m2": {"A": {"dice": [0.4, 0.5, 0.9]}, "B": {"dice": [0.2, 0.3, 0.5]}},
                    "mx": {"A": {"dice": [0.8]}, "B": {"dice": [0.6]}}, BASELINE: three},
    }
    text = markdown(report)
    assert "> other: no MMAR" in text
    assert "| A | v | 1.0 | 0.400 | 0.900 | 0.500 | 0.700 |" in text  # 2D: the baseline's Dice on the slice
    assert "| A | v | 1.0 | 0.800 | 0.100 | 0.300 |" in text  # extreme points beside the baseline's clicks
    assert "| B | v | 2.0 | error | error |" in text  # the baseline's own table
    assert "| B | v | 2.0 | 0.600 | – | – |" in text  # the baseline failed on B: the other model's figures stay
    assert "| **mean (2)** | | | **0.300** | **0.700** | **0.500** | **0.700** |" in text
    assert "| mx | 6 extreme points | 2 | 0.700 | – |" in text and f"| {BASELINE} | 3D clicks | 1 | 0.100 | 0.300 |" in text


# --------------------------------------------------------------------------------------------------- #
# a quick run on real scans
# --------------------------------------------------------------------------------------------------- #


def test_quick_run_of_deepgrow_3d_on_real_scans(tmp_path: Path, capsys) -> None:
    needed = {s.volume for s in resolve(None, quick=True)}
    missing = sorted(needed - set(available()))
    if missing:
        pytest.skip(f"{', '.join(missing)} not in the dataset cache {default_cache()}: {FETCH_HINT}")
    models = tmp_path / "models"
    models.mkdir()
    (models / "demo_deepgrow_3d").symlink_to(MODELS / "demo_deepgrow_3d")
    out = tmp_path / "quick.json"
    status = main(["--quick", "--clicks", "3", "--models", "demo_deepgrow_3d", BASELINE, "--models-dir", str(models),
                   "--json", str(out)])
    assert status == 0
    text = capsys.readouterr().out
    assert f"> {BASELINE}: no MMAR" in text and "### demo_deepgrow_3d" in text
    report = json.loads(out.read_text())
    assert [s["name"] for s in report["structures"]] == list(QUICK) and list(report["results"]) == ["demo_deepgrow_3d"]
    assert report["structures"][0]["labels"] == {"Amygdala_L": 41}
    for structure in report["structures"]:
        row = report["results"]["demo_deepgrow_3d"][structure["name"]]
        assert "error" not in row and len(row["dice"]) == 3 and all(0.0 <= d <= 1.0 for d in row["dice"])
        assert row["clicks"][0] == {"foreground": True, "point": structure["first_click"]}
        assert f"| {structure['name']} | {structure['volume']} |" in text
        item = load_structure(next(s for s in STRUCTURES if s.name == structure["name"]))
        assert item.mask[tuple(structure["first_click"])] and int(item.mask.sum()) == structure["voxels"]
    assert set(report["means"]["demo_deepgrow_3d"]) == {"1", "2", "3"}

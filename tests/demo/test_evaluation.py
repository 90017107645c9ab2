"""The shared demo evaluation loop: held-out cases, command line, summary, another model file, JSON output."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from aiaa_demo.evaluation import Case, ShapeCases, evaluate_cases, evaluation_arguments, summary
from aiaa_demo.synthetic_shapes import HELDOUT_FAMILIES, TRAIN_FAMILIES

DEXTR = Path(__file__).resolve().parents[2] / "models" / "demo_dextr3d_annotation"


def test_shape_cases_draw_one_object_of_the_chosen_families() -> None:
    cases = ShapeCases(min_mm3=1500.0)
    args = evaluation_arguments("test")
    cases.add_arguments(args)
    for families, allowed in (("heldout", HELDOUT_FAMILIES), ("train", TRAIN_FAMILIES)):
        parsed = args.parse_args(["--families", families])
        case = cases(np.random.default_rng((0, 1, 0)), parsed)
        again = cases(np.random.default_rng((0, 1, 0)), parsed)
        assert case.note.split()[0] in allowed and case.note == again.note
        assert case.mask.shape == case.volume.image.shape and case.mask.sum() * np.prod(case.volume.spacing) >= 1500
        np.testing.assert_array_equal(case.mask, again.mask)


def test_summary_gives_mean_median_min_and_max_of_each_score() -> None:
    rows = [{"a": 0.0, "b": 1.0}, {"a": 0.5, "b": 1.0}, {"a": 1.0, "b": 0.7}]
    assert summary(rows) == ("a 0.500 (median 0.500, min 0.000, max 1.000), "
                             "b 0.900 (median 1.000, min 0.700, max 1.000)")


class _Cubes:
    """A test case source: a cube in an empty volume, 3 cases by default."""

    def add_arguments(self, parser) -> None:
        parser.set_defaults(count=3, seed=5)

    def title(self, args) -> str:
        return "cubes"

    def __call__(self, rng: np.random.Generator, args) -> Case:
        image = np.zeros((16, 16, 16), dtype=np.float32)
        size = int(rng.integers(2, 8))
        image[:size, :size, :size] = 1.0
        return Case(SimpleNamespace(image=image, affine=np.eye(4)), image > 0, f"size={size}")


def test_evaluate_cases_scores_every_case_with_another_model_file(tmp_path: Path, monkeypatch, capsys) -> None:
    seen: list[tuple[str, int]] = []

    def score(model, volume, mask) -> dict[str, float]:
        seen.append((model.model_file.resolve().name, int(mask.sum())))
        return {"voxels": float(mask.sum())}

    model_file = tmp_path / "other.ts"
    model_file.write_bytes((DEXTR / "models" / "model.ts").read_bytes())
    threads = torch.get_num_threads()
    monkeypatch.setattr(sys, "argv", ["evaluate.py", "--model", str(model_file), "--json", str(tmp_path / "r.json")])
    evaluate_cases("test", DEXTR, score, cases=_Cubes())
    assert [name for name, _ in seen] == ["other.ts"] * 3
    written = json.loads((tmp_path / "r.json").read_text())
    assert written["seed"] == 5 and [row["voxels"] for row in written["cases"]] == [v for _, v in seen]
    out = capsys.readouterr().out
    assert out.count("case ") == 3 and "cubes, 3 cases, seed 5" in out
    assert torch.get_num_threads() == threads  # --threads not given: torch's own


@pytest.mark.parametrize("flag", ["--count", "--num"])
def test_case_count_has_both_names(flag: str) -> None:
    assert evaluation_arguments("test").parse_args([flag, "4"]).count == 4

"""The bundled demo spleen model segments a freshly generated phantom through the HTTP API."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from aiaa_demo.phantoms import ORGAN_LABELS, make_abdomen_phantom, save_nifti
from aiaa_server.imaging.formats import ImageFormat
from aiaa_server.imaging.io import decode_result
from tests.support.multipart import parse_multipart
from tests.support.server import LiveServer
from tests.support.volumes import dice

# Streams disjoint from training ((seed, 0, i)) and the MMAR's own evaluation ((seed, 1, i)).
FRESH_SEEDS = [(20261125, 7, 0), (20261125, 7, 1)]


@pytest.mark.parametrize("seed", FRESH_SEEDS)
def test_spleen_dice_on_a_fresh_phantom(server: LiveServer, tmp_path: Path, seed: tuple[int, ...]) -> None:
    phantom = make_abdomen_phantom(np.random.default_rng(seed))
    path = save_nifti(phantom, tmp_path / "phantom.nii.gz")
    with server.client() as client, open(path, "rb") as handle:
        response = client.post(
            "/v1/segmentation",
            params={"model": "demo_spleen_ct_segmentation"},
            data={"params": "{}"},
            files={"datapoint": ("phantom.nii.gz", handle)},
        )
    assert response.status_code == 200, response.text
    result = parse_multipart(response.headers["content-type"], response.content)
    mask, affine = decode_result(result.image, ImageFormat.NIFTI_GZ)
    assert mask.shape == phantom.shape
    np.testing.assert_allclose(affine, nib.load(str(path)).affine, atol=1e-5)
    assert set(np.unique(mask)) <= {0, 1}  # label 1 is labels[0] == "spleen"
    truth = phantom.labels == ORGAN_LABELS["spleen"]
    score = dice(mask, truth)
    assert score >= 0.8, f"spleen Dice {score:.3f} on a fresh phantom"
    assert len(result.params["points"]) == 6


def _classifier_cases():
    """The demo classifier's `commands/cases.py` (phantoms with and without their spleen)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "models" / "demo_spleen_presence_classification" / "commands" / "cases.py"
    spec = importlib.util.spec_from_file_location("_demo_classifier_cases", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


FRESH_CLASSIFIER_CASES = 8
MIN_CORRECT = 7  # the committed weights' held-out figures: docs/Readme.md of the model


def test_demo_classifier_on_fresh_phantoms(server: LiveServer, tmp_path: Path) -> None:
    """Stream 7 of `cases.py` (neither trained on, stream 0, nor in the MMAR's own evaluation, stream 1): half
    with their spleen, half without, through the HTTP API."""
    cases = _classifier_cases()
    correct = []
    for index in range(FRESH_CLASSIFIER_CASES):
        phantom, label = cases.case(20261125, 7, index)
        path = save_nifti(phantom, tmp_path / f"phantom{index}.nii.gz")
        with server.client() as client:
            response = client.post("/v1/inference", params={"model": "demo_spleen_presence_classification"},
                                   data={"params": "{}"}, files={"datapoint": (path.name, path.read_bytes())})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["labels"] == ["no spleen", "spleen"]
        assert sum(body["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        correct.append(body["prediction"] == cases.LABELS[label])
    assert sum(correct) >= MIN_CORRECT, correct

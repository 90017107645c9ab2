"""2D classification models end to end on a real server: a 2D TorchScript classifier applied to a volume slice
by slice (`meta_data.batch: "slices"`, bounded by `max_slices`), PNG images through sessions and through the
MONAI Label datastore, and how `/info/` reports a classifier's labels."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.support.mmars import MeanClassNet, classification_config, mean_class_probability, write_mmar
from tests.support.server import LiveServer, start_server
from tests.support.volumes import lps_affine, save_nifti

SLICES = "cls_slices"
PLAIN_2D = "cls_plain_2d"
LABELS = ["dark", "bright"]
MAX_SLICES = 6
SLICE_VALUES = [0.0, 51.0, 204.0, 255.0, 102.0]  # one grey value per slice; the 2D config scales [0, 255] to 0..1


def _slice_config() -> dict:
    config = classification_config(LABELS, spatial_dims=2)
    config["inference"]["meta_data"].update({"batch": "slices", "max_slices": MAX_SLICES})
    return config


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    models = tmp_path_factory.mktemp("cls2d-models")
    write_mmar(models / SLICES, _slice_config(), MeanClassNet())
    write_mmar(models / PLAIN_2D, classification_config(LABELS, spatial_dims=2), MeanClassNet())
    with start_server(tmp_path_factory.mktemp("cls2d") / "workspace",
                      ["--no-bundled_models", "--models", str(models), "--uncertainty_interval", "3600"]) as live:
        yield live


def _slices_volume(tmp_path: Path, values: list[float]) -> Path:
    array = np.stack([np.full((8, 6), v, dtype=np.float32) for v in values], axis=-1)  # [x, y, z]
    return save_nifti(tmp_path / "stack.nii.gz", array, lps_affine((1, 1, 3)))


def _png(tmp_path: Path, grey: int, shape: tuple[int, int] = (20, 30)) -> Path:
    path = tmp_path / "xray.png"
    Image.fromarray(np.full(shape, grey, dtype=np.uint8)).save(path)
    return path


def _expected_bright(grey: float) -> float:
    return mean_class_probability(grey / 255.0)


def _post(server: LiveServer, path: Path, model: str) -> object:
    with server.client() as client:
        return client.post("/v1/inference", params={"model": model}, data={"params": "{}"},
                           files={"datapoint": (path.name, path.read_bytes())})


def test_volume_classified_slice_by_slice(server: LiveServer, tmp_path: Path) -> None:
    response = _post(server, _slices_volume(tmp_path, SLICE_VALUES), SLICES)
    assert response.status_code == 200, response.text
    body = response.json()
    bright = [_expected_bright(v) for v in SLICE_VALUES]
    assert len(body["batch"]) == len(SLICE_VALUES)
    for entry, expected in zip(body["batch"], bright, strict=True):
        assert entry["probabilities"]["bright"] == pytest.approx(expected, abs=1e-5)
        assert entry["prediction"] == ("bright" if expected > 0.5 else "dark")
    assert body["probabilities"] == body["batch"][0]["probabilities"]  # the top level is the first slice's
    summary = body["summary"]
    assert summary["images"] == len(SLICE_VALUES)
    assert summary["counts"] == {"dark": 3, "bright": 2}
    mean_bright = sum(bright) / len(bright)
    assert summary["mean_probabilities"]["bright"] == pytest.approx(mean_bright, abs=1e-5)
    assert summary["prediction"] == ("bright" if mean_bright > 0.5 else "dark")


def test_slice_batch_on_monai_label_infer(server: LiveServer, tmp_path: Path) -> None:
    path = _slices_volume(tmp_path, [255.0, 0.0])
    with server.client() as client:
        response = client.post(f"/infer/{SLICES}", params={"output": "json"}, data={"params": "{}"},
                               files={"file": (path.name, path.read_bytes())})
    assert response.status_code == 200, response.text
    assert [entry["prediction"] for entry in response.json()["batch"]] == ["bright", "dark"]


def test_more_slices_than_declared_is_413_naming_the_limit(server: LiveServer, tmp_path: Path) -> None:
    response = _post(server, _slices_volume(tmp_path, [10.0] * (MAX_SLICES + 1)), SLICES)
    assert response.status_code == 413
    body = response.json()
    assert f"at most {MAX_SLICES} slices" in body["detail"]
    assert body["details"]["max_slices"] == MAX_SLICES


def test_one_png_is_one_answer_without_batch(server: LiveServer, tmp_path: Path) -> None:
    response = _post(server, _png(tmp_path, 230), SLICES)
    assert response.status_code == 200, response.text
    body = response.json()
    assert "batch" not in body and "summary" not in body
    assert body["probabilities"]["bright"] == pytest.approx(_expected_bright(230), abs=1e-5)


def test_without_the_declaration_a_volume_is_refused(server: LiveServer, tmp_path: Path) -> None:
    response = _post(server, _slices_volume(tmp_path, SLICE_VALUES), PLAIN_2D)
    assert response.status_code == 422
    assert 'batch "slices"' in response.json()["detail"]


def test_png_session(server: LiveServer, tmp_path: Path) -> None:
    path = _png(tmp_path, 30)
    with server.client() as client:
        created = client.put("/session/", files={"image": (path.name, path.read_bytes(), "image/png")})
        assert created.status_code == 200, created.text
        session = created.json()["session_id"]
        answers = [client.post("/v1/inference", params={"model": PLAIN_2D, "session_id": session},
                               data={"params": "{}"}) for _ in range(2)]
        client.delete(f"/session/{session}")
    for answer in answers:
        assert answer.status_code == 200, answer.text
        assert answer.json()["probabilities"]["bright"] == pytest.approx(_expected_bright(30), abs=1e-5)
        assert answer.json()["prediction"] == "dark"


def test_png_in_the_datastore_then_infer_by_id(server: LiveServer, tmp_path: Path) -> None:
    path = _png(tmp_path, 240, shape=(16, 12))
    with server.client() as client:
        added = client.put("/datastore/", params={"image": "chest1"}, data={"params": "{}"},
                           files={"file": (path.name, path.read_bytes(), "image/png")})
        assert added.status_code == 200, added.text
        answer = client.post(f"/infer/{PLAIN_2D}", params={"image": "chest1", "output": "json"},
                             data={"params": "{}"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["prediction"] == "bright"
    assert answer.json()["probabilities"]["bright"] == pytest.approx(_expected_bright(240), abs=1e-5)


def test_png_over_the_pixel_limit_is_refused_by_the_datastore(server: LiveServer, tmp_path: Path) -> None:
    from tests.imaging.test_png import png_header_claiming

    bomb = png_header_claiming(40000, 40000)
    with server.client() as client:
        refused = client.put("/datastore/", params={"image": "bomb"}, data={"params": "{}"},
                             files={"file": ("bomb.png", bomb, "image/png")})
        listed = client.get("/datastore/", params={"output": "all"}).json()
    assert refused.status_code == 413
    assert "--max_png_pixels" in refused.json()["detail"]
    assert "bomb" not in json.dumps(listed)


def test_info_reports_classifier_labels_by_output_channel(server: LiveServer) -> None:
    with server.client() as client:
        info = client.get("/info/").json()["models"]
    assert info[PLAIN_2D]["type"] == "classification"
    assert info[PLAIN_2D]["labels"] == {"dark": 0, "bright": 1}
    assert info[PLAIN_2D]["dimension"] == 2

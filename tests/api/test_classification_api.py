"""Classification models end to end on a real server: the issue's MMAR form (softmax, `Writer` with "image": null,
"json": "pred") answers JSON on /v1/inference and /infer/{model}, on uploads, sessions, 2D PNGs and DICOM series;
DICOM SR and FHIR Observation reports read back with highdicom, fhir.resources (R4B) and fhirclient (R4); a
writer result JSON cannot carry is a model error naming the key and type."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import torch
from fhir.resources.R4B.observation import Observation
from highdicom.sr.utils import find_content_items
from monai.networks.nets import Classifier
from PIL import Image
from pydicom.sr.codedict import codes

from tests.support.dicom_series import write_ct_series
from tests.support.fhir import r4_observation
from tests.support.mmars import MeanClassNet, classification_config, mean_class_probability, write_mmar
from tests.support.server import LiveServer, start_server
from tests.support.volumes import lps_affine, save_nifti

CLS = "test_cls"
CLS_2D = "test_cls_2d"
LABELS = ["dark", "bright"]


class ObjectResultNet(torch.nn.Module):
    """Returns a complex tensor, which no JSON can carry: the writer must name it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.complex(x.flatten(1)[:, :2], x.flatten(1)[:, :2])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    models = tmp_path_factory.mktemp("cls-models")
    write_mmar(models / CLS, classification_config(LABELS), MeanClassNet())
    write_mmar(models / CLS_2D, classification_config(LABELS, spatial_dims=2), MeanClassNet())
    write_mmar(models / "test_cls_complex", classification_config(LABELS, post_transforms=[]), ObjectResultNet())
    _write_classifier_bundle(models / "cls_bundle")
    with start_server(tmp_path_factory.mktemp("cls") / "workspace",
                      ["--no-bundled_models", "--models", str(models), "--uncertainty_interval", "3600"]) as live:
        yield live


def _write_classifier_bundle(folder: Path) -> None:
    """A MONAI bundle whose metadata says classification (output `type` "probabilities", the model zoo's form)."""
    network = {"_target_": "monai.networks.nets.Classifier", "in_shape": [1, 16, 16, 16], "classes": 3,
               "channels": [4, 8], "strides": [2, 2]}
    config = {
        "network_def": network,
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "LoadImaged", "keys": "image"},
            {"_target_": "EnsureChannelFirstd", "keys": "image", "channel_dim": "no_channel"},
            {"_target_": "Resized", "keys": "image", "spatial_size": [16, 16, 16]}]},
        "inferer": {"_target_": "SimpleInferer"},
        "postprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "Activationsd", "keys": "pred", "softmax": True}]},
    }
    metadata = {"version": "0.3.1", "task": "Tumour grading", "network_data_format": {
        "inputs": {"image": {"num_channels": 1, "spatial_shape": [16, 16, 16]}},
        "outputs": {"pred": {"type": "probabilities", "num_channels": 3,
                             "channel_def": {"0": "background", "1": "low grade", "2": "high grade"}}}}}
    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    (folder / "configs" / "inference.json").write_text(json.dumps(config))
    (folder / "configs" / "metadata.json").write_text(json.dumps(metadata))
    torch.manual_seed(0)
    torch.save(Classifier(in_shape=[1, 16, 16, 16], classes=3, channels=[4, 8], strides=[2, 2]).state_dict(),
               folder / "models" / "model.pt")


def _volume(tmp_path: Path, hu: float) -> Path:
    return save_nifti(tmp_path / "v.nii.gz", np.full((12, 10, 8), hu, dtype=np.float32), lps_affine((1, 1, 2)))


def _post(server: LiveServer, path: Path, model: str = CLS, params: dict | None = None, **query: str):
    with server.client() as client:
        return client.post("/v1/inference", params={"model": model, **query},
                           data={"params": json.dumps(params or {})},
                           files={"datapoint": (path.name, path.read_bytes())})


def _check_answer(body: dict, scaled_mean: float, model: str = CLS) -> None:
    bright = mean_class_probability(scaled_mean)
    assert body["model"] == model
    assert body["version"] == "2"
    assert body["labels"] == LABELS
    assert body["probabilities"] == pytest.approx({"dark": 1 - bright, "bright": bright}, abs=1e-5)
    assert body["prediction"] == ("bright" if bright > 0.5 else "dark")
    assert body["score"] == pytest.approx(max(bright, 1 - bright), abs=1e-5)


@pytest.mark.parametrize(("hu", "scaled"), [(400.0, 0.9), (-300.0, 0.2)])
def test_aiaa_inference_answers_json(server: LiveServer, tmp_path: Path, hu: float, scaled: float) -> None:
    response = _post(server, _volume(tmp_path, hu))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    _check_answer(response.json(), scaled)


def test_listed_as_classification(server: LiveServer) -> None:
    with server.client() as client:
        model = client.get("/v1/models", params={"model": CLS}).json()
        info = client.get("/info/").json()["models"][CLS]
    assert model["type"] == "classification"
    assert model["labels"] == LABELS
    assert info["type"] == "classification"


def test_monai_label_infer_answers_json(server: LiveServer, tmp_path: Path) -> None:
    path = _volume(tmp_path, 400.0)
    with server.client() as client:
        response = client.post(f"/infer/{CLS}", params={"output": "json"}, data={"params": "{}"},
                               files={"file": (path.name, path.read_bytes())})
    assert response.status_code == 200, response.text
    _check_answer(response.json(), 0.9)
    assert set(response.json()["latencies"]) >= {"pre", "infer", "total"}


def test_session_classified_twice(server: LiveServer, tmp_path: Path) -> None:
    path = _volume(tmp_path, -300.0)
    with server.client() as client:
        session = client.put("/session/", files={"image": (path.name, path.read_bytes())}).json()["session_id"]
        for _ in range(2):
            answer = client.post("/v1/inference", params={"model": CLS, "session_id": session},
                                 data={"params": "{}"})
            assert answer.status_code == 200, answer.text
            _check_answer(answer.json(), 0.2)
        client.delete(f"/session/{session}")
        gone = client.post("/v1/inference", params={"model": CLS, "session_id": session}, data={"params": "{}"})
    assert gone.status_code == 440


def test_2d_png_where_the_model_declares_2d(server: LiveServer, tmp_path: Path) -> None:
    path = tmp_path / "xray.png"
    Image.fromarray(np.full((20, 30), 204, dtype=np.uint8)).save(path)
    response = _post(server, path, model=CLS_2D)
    assert response.status_code == 200, response.text
    _check_answer(response.json(), 0.8, model=CLS_2D)
    refused = _post(server, _volume(tmp_path, 0.0), model=CLS_2D)
    assert refused.status_code == 422
    assert "2D" in refused.json()["detail"]


def test_unencodable_result_is_a_model_error_naming_key_and_type(server: LiveServer, tmp_path: Path) -> None:
    response = _post(server, _volume(tmp_path, 0.0), model="test_cls_complex")
    assert response.status_code == 500
    body = response.json()
    assert body["code"] == "model_error"
    assert body["details"] == {"key": "pred", "type": "complex64"}
    assert "'pred'" in body["detail"]


def test_fhir_of_a_nifti_upload_has_no_study(server: LiveServer, tmp_path: Path) -> None:
    response = _post(server, _volume(tmp_path, 400.0), output="fhir")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/fhir+json"
    observation = Observation.model_validate(response.json())
    assert r4_observation(response.json()).derivedFrom is None
    assert observation.derivedFrom is None
    assert observation.valueCodeableConcept.coding[0].code == "bright"
    unknown = _post(server, _volume(tmp_path, 0.0), output="pdf")
    assert unknown.status_code == 400
    assert "fhir" in unknown.json()["detail"]


# ---- reports of a DICOM-sourced image ----


@pytest.fixture(scope="module")
def dicom_session(server: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, object]]:
    hu = np.full((16, 12, 5), 300, dtype=np.int16)
    series = write_ct_series(tmp_path_factory.mktemp("ct"), hu)
    with server.client() as client:
        files = [("image", (p.name, p.read_bytes())) for p in series.paths]
        answer = client.put("/session/", files=files)
        assert answer.status_code == 200, answer.text
        session_id = answer.json()["session_id"]
        yield session_id, series
        client.delete(f"/session/{session_id}")


def _sources(series: object) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(p, stop_before_pixels=True) for p in series.paths]  # type: ignore[attr-defined]


def test_dicom_sr_of_a_dicom_session(server: LiveServer, dicom_session: tuple[str, object]) -> None:
    session_id, series = dicom_session
    with server.client() as client:
        answer = client.post("/v1/inference", params={"model": CLS, "session_id": session_id, "output": "image"},
                             data={"params": json.dumps({"result_extension": ".dcm"})})
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/dicom"
    sr = hd.sr.srread(io.BytesIO(answer.content))
    sources = _sources(series)
    assert sr.StudyInstanceUID == sources[0].StudyInstanceUID
    assert sr.PatientID == sources[0].PatientID
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.SeriesInstanceUID == sources[0].SeriesInstanceUID
    assert {item.ReferencedSOPInstanceUID for item in evidence.ReferencedSOPSequence} == {
        ds.SOPInstanceUID for ds in sources}
    assert sr.ConceptNameCodeSequence[0].CodeValue == "126000"  # TID 1500: Imaging Measurement Report
    group = sr.content.get_image_measurement_groups()[0]
    bright = mean_class_probability(0.8)
    probabilities = {m.qualifier.meaning: m.value for m in group.get_measurements()}
    assert probabilities == pytest.approx({"dark": 1 - bright, "bright": bright}, abs=1e-5)
    assert group.finding_type.meaning == "bright"
    assert [e.value.meaning for e in group.get_qualitative_evaluations()] == ["bright"]
    for concept, expected in ((codes.DCM.AlgorithmName, CLS), (codes.DCM.AlgorithmVersion, "2")):
        assert {item.TextValue for item in find_content_items(sr, name=concept, recursive=True)} == {expected}


def test_monai_label_dicom_sr_and_fhir(server: LiveServer, dicom_session: tuple[str, object]) -> None:
    session_id, series = dicom_session
    with server.client() as client:
        sr = client.post(f"/infer/{CLS}", params={"session_id": session_id, "output": "dicom_sr"},
                         data={"params": "{}"})
        fhir = client.post(f"/infer/{CLS}", params={"session_id": session_id, "output": "fhir"},
                           data={"params": "{}"})
    assert sr.status_code == 200, sr.text
    assert pydicom.dcmread(io.BytesIO(sr.content)).SOPClassUID == pydicom.uid.Comprehensive3DSRStorage
    assert fhir.status_code == 200, fhir.text
    assert fhir.headers["content-type"] == "application/fhir+json"
    observation = Observation.model_validate(fhir.json())
    assert r4_observation(fhir.json()).derivedFrom[0].identifier.value == observation.derivedFrom[0].identifier.value
    source = _sources(series)[0]
    assert observation.derivedFrom[0].type == "ImagingStudy"
    assert observation.derivedFrom[0].identifier.value == f"urn:oid:{source.StudyInstanceUID}"
    assert observation.valueCodeableConcept.coding[0].code == "bright"
    components = {c.code.coding[0].code: float(c.valueQuantity.value) for c in observation.component}
    bright = mean_class_probability(0.8)
    assert components == pytest.approx({"dark": 1 - bright, "bright": bright}, abs=1e-5)


def test_dicom_sr_of_a_nifti_upload_is_a_clear_400(server: LiveServer, tmp_path: Path) -> None:
    response = _post(server, _volume(tmp_path, 0.0), params={"result_extension": ".dcm"})
    assert response.status_code == 400
    assert "DICOM SR" in response.json()["detail"]


def test_bundle_with_classification_metadata(server: LiveServer, tmp_path: Path) -> None:
    with server.client() as client:
        listed = client.get("/v1/models", params={"model": "cls_bundle"}).json()
    assert listed["type"] == "classification"
    assert listed["labels"] == ["background", "low grade", "high grade"]  # every class kept
    response = _post(server, _volume(tmp_path, 100.0), model="cls_bundle")
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["model"], body["version"], body["labels"]) == ("cls_bundle", "0.3.1", listed["labels"])
    assert sum(body["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert body["prediction"] == max(body["probabilities"], key=body["probabilities"].get)

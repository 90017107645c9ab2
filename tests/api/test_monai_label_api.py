"""The MONAI Label API end to end on the real server: a whole annotation flow (info, upload, next sample,
automatic segmentation, DeepGrow clicks, save, datastore, sessions), then the datastore and infer edge cases."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pydicom
import pytest

from aiaa_demo.synthetic_shapes import first_click, make_scene, next_click
from aiaa_server.imaging.formats import ImageFormat
from aiaa_server.imaging.io import decode_result
from tests.support.multipart import parse_multipart
from tests.support.server import LiveServer, start_server
from tests.support.volumes import cube_volume, dice, lps_affine, save_nifti

REPO = Path(__file__).resolve().parents[2]

DEEPGROW_3D = "demo_deepgrow_3d"
THRESHOLD = "test_threshold"


def upload(client: httpx.Client, image_id: str, path: Path, params: dict[str, Any] | None = None) -> httpx.Response:
    with open(path, "rb") as handle:
        return client.put("/datastore/", params={"image": image_id},
                          data={"params": json.dumps(params or {})}, files={"file": (path.name, handle)})


def save_label(client: httpx.Client, image_id: str, array: np.ndarray, affine: np.ndarray, tmp: Path,
               tag: str = "") -> httpx.Response:
    path = save_nifti(tmp / f"label-{image_id}.nii.gz", array.astype(np.uint8), affine)
    query = {"image": image_id, **({"tag": tag} if tag else {})}
    with open(path, "rb") as handle:
        return client.put("/datastore/label", params=query, data={"params": json.dumps({"client_id": "ann"})},
                          files={"label": (path.name, handle)})


def infer(client: httpx.Client, model: str, params: dict[str, Any], **query: str) -> tuple[np.ndarray, dict]:
    response = client.post(f"/infer/{model}", params=query, data={"params": json.dumps(params)})
    assert response.status_code == 200, response.text
    parsed = parse_multipart(response.headers["content-type"], response.content)
    array, _ = decode_result(parsed.image, ImageFormat.NIFTI_GZ)
    return array, parsed.params


@pytest.fixture()
def scene_file(tmp_path: Path) -> tuple[Path, Any]:
    scene = make_scene(np.random.default_rng(7), shape=(64, 64, 48), n_objects=(2, 3))
    return save_nifti(tmp_path / "scene.nii.gz", scene.image.astype(np.int16), scene.affine), scene


def test_a_whole_monai_label_annotation_flow(server: LiveServer, scene_file: tuple[Path, Any], tmp_path: Path) -> None:
    path, scene = scene_file
    truth = scene.labels == 1
    with server.client() as client:
        info = client.get("/info/").json()
        assert info["models"][DEEPGROW_3D]["type"] == "deepgrow" and info["models"][DEEPGROW_3D]["dimension"] == 3
        assert "random" in info["strategies"] and "first" in info["strategies"]
        before = info["datastore"]["total"]

        assert upload(client, "flow_case", path, {"client_id": "ann"}).json() == {"image": "flow_case"}
        sample = client.post("/activelearning/first", json={"client_id": "ann"}).json()
        assert sample["id"] and Path(sample["path"]).is_file() and sample["checksum"].startswith("SHA256:")

        auto, params = infer(client, THRESHOLD, {}, image="flow_case")
        assert auto.shape == scene.image.shape and set(params["label_names"]) == {"bright"}
        assert params["latencies"]["total"] >= params["latencies"]["infer"] > 0

        clicks: dict[str, list[list[int]]] = {"foreground": [first_click(truth)], "background": []}
        scores = []
        for _ in range(3):
            mask, params = infer(client, DEEPGROW_3D, {**clicks, "label": "object"}, image="flow_case")
            scores.append(dice(mask > 0, truth))
            correction = next_click(truth, mask > 0)
            if correction is not None:
                clicks["foreground" if correction[0] else "background"].append(correction[1])
        assert scores[-1] > 0.5, scores

        saved = save_label(client, "flow_case", mask > 0, scene.affine, tmp_path)
        assert saved.status_code == 200 and saved.json()["image"] == "flow_case", saved.text
        stats = client.get("/datastore/", params={"output": "stats"}).json()
        assert stats["total"] == before + 1 and "flow_case" in stats["train"]
        train = client.get("/datastore/", params={"output": "train"}).json()
        assert any(Path(item["image"]).name.startswith("flow_case.") for item in train)

        with open(path, "rb") as handle:
            created = client.put("/session/", data={"client_id": "ann"}, files=[("files", (path.name, handle))])
        assert created.status_code == 200, created.text
        session_id = created.json()["session_id"]
        on_session, _ = infer(client, DEEPGROW_3D, clicks, image="flow_case", session_id=session_id)
        by_id, _ = infer(client, DEEPGROW_3D, clicks, image="flow_case")
        assert np.array_equal(on_session, by_id) and on_session.any()
        assert client.delete(f"/session/{session_id}").status_code == 200
        assert client.get(f"/session/{session_id}").status_code == 404


def test_saving_again_keeps_the_previous_label_as_a_version(server: LiveServer, cube_nifti: tuple, tmp_path: Path) -> None:
    path, mask, affine = cube_nifti
    with server.client() as client:
        upload(client, "versioned", path)
        save_label(client, "versioned", mask, affine, tmp_path)
        second = save_label(client, "versioned", 1 - mask, affine, tmp_path)
        assert second.json()["versions"] == 1
        downloaded = client.get("/datastore/label", params={"label": "versioned", "tag": "final"})
        assert 'filename="versioned.nii.gz"' in downloaded.headers["content-disposition"]
        label, _ = decode_result(downloaded.content, ImageFormat.NIFTI_GZ)
        assert np.array_equal(label, 1 - mask)
        info = client.get("/datastore/label/info", params={"label": "versioned", "tag": "final"}).json()
        assert info["client_id"] == "ann" and len(info["versions"]) == 1


def test_head_checks_and_downloads(server: LiveServer, cube_nifti: tuple, tmp_path: Path) -> None:
    path, mask, affine = cube_nifti
    with server.client() as client:
        upload(client, "checked", path)
        checksum = client.get("/datastore/image/info", params={"image": "checked"}).json()["checksum"]
        assert client.head("/datastore/image", params={"image": "checked"}).status_code == 200
        assert client.head("/datastore/image", params={"image": "checked", "check_sum": checksum}).status_code == 200
        assert client.head("/datastore/image", params={"image": "checked", "check_sum": "SHA256:00"}).status_code == 404
        assert client.head("/datastore/image", params={"image": "absent"}).status_code == 404
        for unknown in ("SHAKE_128:00", "BLAKE3:00"):  # shake digests need a length: refused, not a 500
            assert client.head("/datastore/image", params={"image": "checked", "check_sum": unknown}).status_code == 400
        assert client.head("/datastore/label", params={"image": "checked", "tag": "final"}).status_code == 404
        save_label(client, "checked", mask, affine, tmp_path)
        assert client.head("/datastore/label", params={"image": "checked", "tag": "final"}).status_code == 200
        image = client.get("/datastore/image", params={"image": "checked"})
        assert image.content == path.read_bytes()


def test_same_image_again_is_a_no_op_and_other_content_over_a_final_label_is_refused(
        server: LiveServer, cube_nifti: tuple, tmp_path: Path) -> None:
    path, mask, affine = cube_nifti
    other = save_nifti(tmp_path / "other.nii.gz", (mask * 100).astype(np.int16), affine)
    with server.client() as client:
        assert upload(client, "stable", path).status_code == 200
        assert upload(client, "stable", path).status_code == 200
        assert upload(client, "stable", other).status_code == 200  # no label yet: replaced, as MONAI Label does
        save_label(client, "stable", mask, affine, tmp_path)
        refused = upload(client, "stable", path)
        assert refused.status_code == 409 and "final label" in refused.json()["detail"]


def test_bad_uploads_and_ids_get_4xx(server: LiveServer, cube_nifti: tuple, tmp_path: Path) -> None:
    path, mask, affine = cube_nifti
    junk = tmp_path / "junk.nii.gz"
    junk.write_bytes(b"not an image")
    with server.client() as client:
        assert upload(client, "junk", junk).status_code == 400
        assert upload(client, "../escape", path).status_code == 400
        assert upload(client, "okay", path).status_code == 200
        small = save_label(client, "okay", mask[:10], affine, tmp_path)
        assert small.status_code == 422 and "shape" in small.json()["detail"]
        assert save_label(client, "nobody", mask, affine, tmp_path).status_code == 404
        assert client.get("/datastore/", params={"output": "bogus"}).status_code == 422
        assert client.post("/infer/test_threshold", params={"image": "nobody"},
                           data={"params": "{}"}).status_code == 404
        assert client.post("/infer/test_threshold", data={"params": "{}"}).status_code == 400
        assert client.post("/activelearning/epistemic", json={}).status_code == 400


def test_raw_bin_label_lands_on_the_image_grid(server: LiveServer, cube_nifti: tuple) -> None:
    path, mask, affine = cube_nifti
    with server.client() as client:
        upload(client, "binary", path)
        raw = mask.astype(np.uint8).tobytes(order="F")
        saved = client.put("/datastore/label", params={"image": "binary"}, data={"params": "{}"},
                           files={"label": ("label.bin", raw, "application/octet-stream")})
        assert saved.status_code == 200, saved.text
        stored = client.get("/datastore/label", params={"label": "binary", "tag": "final"})
        label, label_affine = decode_result(stored.content, ImageFormat.NIFTI_GZ)
        assert np.array_equal(label, mask) and np.allclose(label_affine, affine)
        short = client.put("/datastore/label", params={"image": "binary"}, data={"params": "{}"},
                           files={"label": ("label.bin", raw[:-1], "application/octet-stream")})
        assert short.status_code == 422


def test_roi_clears_the_result_outside_and_output_modes(server: LiveServer, cube_nifti: tuple) -> None:
    path, _, _ = cube_nifti
    with server.client() as client:
        upload(client, "roi_case", path)
        whole, _ = infer(client, THRESHOLD, {}, image="roi_case")
        part, _ = infer(client, THRESHOLD, {"roi": [30, 44, 20, 49, 10, 29]}, image="roi_case")
        in_roi = np.zeros(whole.shape, dtype=bool)
        in_roi[30:45, 20:50, 10:30] = True
        assert np.array_equal(part, np.where(in_roi, whole, 0)) and 0 < part.sum() < whole.sum()
        assert client.post("/infer/test_threshold", params={"image": "roi_case"},
                           data={"params": json.dumps({"roi": [5, 1, 0, 1, 0, 1]})}).status_code == 400
        as_json = client.post("/infer/test_threshold", params={"image": "roi_case", "output": "json"},
                              data={"params": "{}"})
        assert as_json.json()["label_names"] == {"bright": 1}
        nrrd = client.post("/infer/test_threshold", params={"image": "roi_case", "output": "image"},
                           data={"params": json.dumps({"result_extension": ".nrrd", "result_dtype": "uint8",
                                                       "result_compress": False})})
        array, _ = decode_result(nrrd.content, ImageFormat.NRRD)
        assert np.array_equal(array, whole)


def test_an_uploaded_file_can_be_inferred_without_the_datastore(server: LiveServer, tmp_path: Path) -> None:
    image, mask = cube_volume()
    path = save_nifti(tmp_path / "direct.nii.gz", image, lps_affine((1.0, 1.0, 2.0)))
    with server.client() as client, open(path, "rb") as handle:
        response = client.post("/infer/test_threshold_native", data={"params": "{}"},
                               files={"file": (path.name, handle)})
    parsed = parse_multipart(response.headers["content-type"], response.content)
    array, _ = decode_result(parsed.image, ImageFormat.NIFTI_GZ)
    assert np.array_equal(array > 0, mask > 0) and parsed.params["label_names"] == {"bright": 1}
    assert parsed.params["centroids"] == {"label_1": ["1", "44", "34", "19"]}  # the box's mean voxel index


def test_active_learning_hands_an_image_to_one_client_at_a_time(server: LiveServer, tmp_path: Path) -> None:
    image, _ = cube_volume(shape=(24, 24, 12), box=(slice(4, 8), slice(4, 8), slice(2, 4)))
    with server.client() as client:
        stats = client.get("/datastore/").json()
        for name in ("al_a", "al_b"):
            upload(client, name, save_nifti(tmp_path / f"{name}.nii.gz", image, np.eye(4)))
        after = client.get("/datastore/").json()
        assert after["total"] == stats["total"] + 2 and {"al_a", "al_b"} <= set(after["ready"])
        handed = []
        for i in range(len(after["ready"]) + 1):  # each client takes one image until none is free
            handed.append(client.post("/activelearning/random", json={"client_id": f"al{i}"}).json())
            if not handed[-1]:
                break
        again = client.post("/activelearning/random", json={"client_id": "late"}).json()
    ids = [item["id"] for item in handed[:-1]]
    assert handed[-1] == {} and again == {}
    assert len(ids) == len(set(ids)) >= 2 and {"al_a", "al_b"} <= set(ids)


def test_scoring_answers_501_and_training_needs_a_trainable_model(server: LiveServer) -> None:
    with server.client() as client:
        assert client.get("/auth/").json() == {"enabled": False}
        assert client.get("/train/", params={"check_if_running": "true"}).status_code == 404
        assert client.get("/train/").status_code == 404  # no job has run on this server
        assert client.post("/train/absent", json={}).status_code == 404
        refused = client.post("/train/demo_deepgrow_3d", json={})
        assert refused.status_code == 400 and "segmentation" in refused.json()["detail"]
        for method, path in (("GET", "/scoring/"), ("POST", "/scoring/dice")):
            answer = client.request(method, path)
            assert answer.status_code == 501 and answer.json()["code"] == "not_implemented", (method, path)


def test_datastore_delete_needs_admin_access(tmp_path: Path, cube_nifti: tuple) -> None:
    path, _, _ = cube_nifti
    with start_server(tmp_path / "ws", ["--admin_token", "secret", "--no-bundled_models"], wait_ready=False) as live, \
            live.client() as client:
        upload(client, "kept", path)
        assert client.delete("/datastore/image", params={"id": "kept"}).status_code == 401
        assert client.delete("/datastore/image", params={"id": "kept"},
                             headers={"Authorization": "Bearer secret"}).status_code == 200
        assert client.get("/datastore/").json()["total"] == 0


def test_a_dicom_series_keeps_its_ids_for_the_clients(tmp_path: Path) -> None:
    from tests.imaging.test_dicom import write_series

    image, _ = cube_volume((24, 20, 6), (slice(4, 12), slice(4, 12), slice(1, 4)))
    paths, _ = write_series(tmp_path / "dcm", image, series_uid="1.2.826.0.1.3680043.99.1")
    archive = tmp_path / "series.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        for path in paths:
            handle.write(path, path.name)
    models = tmp_path / "models"
    models.mkdir()
    (models / "classical_region_grow").symlink_to(REPO / "models" / "classical_region_grow")
    click = json.dumps({"foreground": [[8, 8, 2]]})
    with start_server(tmp_path / "ws", ["--no-bundled_models", "--models", str(models)],
                      wait_ready=False) as live, live.client() as client:
        with open(archive, "rb") as file:
            added = client.put("/datastore/image", data={"params": "{}"}, files={"file": ("series.zip", file)})
        assert added.json() == {"image": "1.2.826.0.1.3680043.99.1"}
        sample = client.post("/activelearning/first", json={"client_id": None}).json()
        seg = client.post("/infer/classical_region_grow", params={"image": added.json()["image"],
                                                                   "output": "dicom_seg"}, data={"params": click})
    assert sample["SeriesInstanceUID"] == "1.2.826.0.1.3680043.99.1" and sample["StudyInstanceUID"] == "1.2.3"
    assert sample["name"] == "1.2.826.0.1.3680043.99.1.nii.gz" and Path(sample["path"]).is_file()
    assert seg.status_code == 200, seg.text
    dataset = pydicom.dcmread(io.BytesIO(seg.content))
    assert dataset.Modality == "SEG"
    assert dataset.ReferencedSeriesSequence[0].SeriesInstanceUID == "1.2.826.0.1.3680043.99.1"
    referenced = {str(item.ReferencedSOPInstanceUID) for item in dataset.ReferencedSeriesSequence[0]
                  .ReferencedInstanceSequence}
    assert referenced <= {str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID) for path in paths}


def test_an_existing_monai_label_folder_is_served_as_is(tmp_path: Path, cube_nifti: tuple) -> None:
    path, mask, affine = cube_nifti
    folder = tmp_path / "existing"
    (folder / "labels" / "final").mkdir(parents=True)
    for name in ("spleen_1", "spleen_2"):
        (folder / f"{name}.nii.gz").write_bytes(path.read_bytes())
    save_nifti(folder / "labels" / "final" / "spleen_1.nii.gz", mask, affine)
    with start_server(tmp_path / "ws", ["--no-bundled_models", "--datastore", str(folder)],
                      wait_ready=False) as live, live.client() as client:
        stats = client.get("/datastore/").json()
        sample = client.post("/activelearning/first", json={"client_id": "ann"}).json()
        label = client.get("/datastore/label", params={"label": "spleen_1", "tag": "final"})
    assert (stats["total"], stats["completed"], stats["train"]) == (2, 1, ["spleen_1"])
    assert sample["id"] == "spleen_2" and Path(sample["path"]) == (folder / "spleen_2.nii.gz").resolve()
    assert label.content == (folder / "labels" / "final" / "spleen_1.nii.gz").read_bytes()

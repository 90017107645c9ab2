"""The bytes the client puts on the wire, checked with a raw-socket recorder (no server framework involved)."""

from __future__ import annotations

import gzip
import io
import json
import ssl
import subprocess
import zipfile
from collections.abc import Iterator

import nibabel as nib
import numpy as np
import pytest
from aiaa_client import AIAAClient, AIAAConnectionError, AIAATimeoutError, BadRequestError, ProtocolError, ServerError
from aiaa_client.crop import crop_affine, plan_crop
from aiaa_client.multipart import FilePart, MultipartBody, parse_multipart, split_result

from tests.client.conftest import write_native_mmar
from tests.client.recording import (
    RecordingServer,
    http_response,
    json_response,
    multipart_response,
    part_name,
)
from tests.support.volumes import save_nifti


@pytest.fixture()
def recorder() -> Iterator[RecordingServer]:
    server = RecordingServer()
    yield server
    server.close()


def nifti_bytes(array: np.ndarray, affine: np.ndarray) -> bytes:
    image = nib.Nifti1Image(array, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    return gzip.compress(image.to_bytes())


def assert_fixed_length(request) -> None:
    assert "transfer-encoding" not in request.headers
    assert int(request.headers["content-length"]) == len(request.body)
    assert request.headers["accept-encoding"] == "identity"


def test_inference_request_is_params_then_datapoint_with_content_length(recorder, cube):
    path, mask, affine = cube
    recorder.responses = [multipart_response({"points": [[1, 2, 3]]}, nifti_bytes(mask, affine))]
    result = AIAAClient(recorder.url).segmentation("spleen", path)

    request = recorder.requests[0]
    assert request.request_line == "POST /v1/segmentation?model=spleen HTTP/1.1"
    assert_fixed_length(request)
    assert request.headers["content-type"].startswith("multipart/form-data; boundary=")
    parts = request.parts()
    assert [part_name(p) for p in parts] == ["params", "datapoint"]
    assert parts[0].get_filename() is None
    assert json.loads(parts[0].get_payload(decode=True)) == {}
    assert parts[1].get_filename() == "cube.nii.gz"
    assert parts[1].get_payload(decode=True) == path.read_bytes()
    # ... and the canned answer came back intact (boundary with `$`, as the NVIDIA server's clients use)
    assert result.params == {"points": [[1, 2, 3]]}
    assert np.array_equal(result.array, mask)
    assert np.allclose(result.affine, affine)


def test_session_call_sends_params_only(recorder):
    recorder.responses = [multipart_response({}, b"\x00" * 10)]
    AIAAClient(recorder.url).deepgrow("dg", session_id="abc-123", foreground=[[1, 2, 3]], background=[[4, 5, 6]])

    request = recorder.requests[0]
    assert request.target == "/v1/deepgrow?model=dg&session_id=abc-123"
    assert_fixed_length(request)
    parts = request.parts()
    assert [part_name(p) for p in parts] == ["params"]
    assert json.loads(parts[0].get_payload(decode=True)) == {"foreground": [[1, 2, 3]], "background": [[4, 5, 6]]}


def test_deepgrow_params_shape(recorder, cube):
    path, _, _ = cube
    recorder.responses = [multipart_response({}, b"x")]
    AIAAClient(recorder.url).deepgrow("dg", path, foreground=[(1, 2, 3)], background=[], current_point=(1, 2, 3),
                                      spatial_size=[128, 192, 192])
    params = json.loads(recorder.requests[0].parts()[0].get_payload(decode=True))
    assert params == {"foreground": [[1, 2, 3]], "background": [], "current_point": [[1, 2, 3]],
                      "spatial_size": [128, 192, 192]}


def test_session_create_is_put_with_single_image_part(recorder, cube):
    path, _, _ = cube
    recorder.responses = [json_response({"session_id": "s-1", "session_info": {}})]
    session = AIAAClient(recorder.url).create_session(path, expiry=60)

    request = recorder.requests[0]
    assert request.request_line == "PUT /session/?expiry=60 HTTP/1.1"
    assert_fixed_length(request)
    parts = request.parts()
    assert [part_name(p) for p in parts] == ["image"]
    assert parts[0].get_payload(decode=True) == path.read_bytes()
    assert session.session_id == "s-1"


def test_array_input_is_uploaded_as_nifti_with_its_affine(recorder, cube):
    _, mask, affine = cube
    recorder.responses = [multipart_response({}, nifti_bytes(mask, affine))]
    array = mask.astype(np.int16) * 500
    AIAAClient(recorder.url).inference("m", (array, affine), params={"a": 1})

    parts = recorder.requests[0].parts()
    assert json.loads(parts[0].get_payload(decode=True)) == {"a": 1}
    assert parts[1].get_filename().endswith(".nii.gz")
    uploaded = nib.Nifti1Image.from_bytes(gzip.decompress(parts[1].get_payload(decode=True)))
    assert np.array_equal(np.asarray(uploaded.dataobj), array)
    assert np.allclose(uploaded.affine, affine)


def test_dextr3d_client_crop_uploads_roi_crop_and_pastes_back(recorder, cube):
    path, _, affine = cube
    points = [[30, 35, 20], [59, 35, 20], [45, 20, 20], [45, 49, 20], [45, 35, 10], [45, 35, 29]]
    roi = (64, 64, 32)
    recorder.responses = [multipart_response({}, nifti_bytes(np.ones(roi, np.uint8), np.eye(4)))]
    result = AIAAClient(recorder.url).dextr3d("ann", path, points=points, roi=roi)

    parts = recorder.requests[0].parts()
    sent_points = json.loads(parts[0].get_payload(decode=True))["points"]
    uploaded = nib.Nifti1Image.from_bytes(gzip.decompress(parts[1].get_payload(decode=True)))
    assert uploaded.shape == roi
    # pad 20 mm over spacing (0.8, 0.9, 2.5) → 25, 22, 8 voxels, clipped at 0 along j
    plan = plan_crop(points, (96, 80, 40), (0.8, 0.9, 2.5), pad=20.0, roi=roi)
    assert (plan.start, plan.stop) == ((5, 0, 2), (85, 72, 38))
    assert np.allclose(uploaded.affine, crop_affine(affine, plan))
    # The crop's first voxel sits where the full image's voxel `start` sits.
    assert np.allclose(uploaded.affine @ [0, 0, 0, 1], affine @ [5, 0, 2, 1])
    for sent, original in zip(sent_points, points):
        expected = [round((original[a] - plan.start[a]) * roi[a] / plan.size[a]) for a in range(3)]
        assert sent == [min(e, r - 1) for e, r in zip(expected, roi)]
    # An all-ones crop mask comes back as ones exactly on the crop box of a full-size volume.
    full = result.array
    assert full.shape == (96, 80, 40)
    assert np.allclose(result.affine, affine)
    assert full[5:85, 0:72, 2:38].all() and full.sum() == 80 * 72 * 36


def test_dextr3d_server_crop_sends_full_image_and_raw_points(recorder, cube):
    path, mask, affine = cube
    recorder.responses = [multipart_response({}, nifti_bytes(mask, affine))]
    points = [[30, 35, 20], [59, 35, 20], [45, 20, 20], [45, 49, 20], [45, 35, 10], [45, 35, 29]]
    AIAAClient(recorder.url).dextr3d("ann", path, points=points, server_crop=True)
    parts = recorder.requests[0].parts()
    assert json.loads(parts[0].get_payload(decode=True)) == {"points": points}
    assert parts[1].get_payload(decode=True) == path.read_bytes()


def test_admin_upload_of_mmar_folder_is_a_root_level_zip_with_bearer_token(recorder, tmp_path):
    mmar = write_native_mmar(tmp_path / "my_mmar")
    recorder.responses = [json_response({"name": "new"})]
    AIAAClient(recorder.url, admin_token="s3cret").upload_model("new model", mmar)

    request = recorder.requests[0]
    assert request.request_line == "PUT /admin/model/new%20model HTTP/1.1"
    assert request.headers["authorization"] == "Bearer s3cret"
    assert_fixed_length(request)
    parts = request.parts()
    assert [part_name(p) for p in parts] == ["data"]
    names = zipfile.ZipFile(io.BytesIO(parts[0].get_payload(decode=True))).namelist()
    assert sorted(names) == ["config/config_aiaa.json", "models/model.ts"]


def test_admin_upload_config_and_model_file(recorder, tmp_path):
    mmar = write_native_mmar(tmp_path / "m")
    recorder.responses = [json_response({})]
    AIAAClient(recorder.url, admin_token="t").upload_model(
        "m", config=mmar / "config" / "config_aiaa.json", model_file=mmar / "models" / "model.ts")
    parts = recorder.requests[0].parts()
    assert [part_name(p) for p in parts] == ["config", "data"]
    assert parts[0].get_content_type() == "application/json"
    assert json.loads(parts[0].get_payload(decode=True))["type"] == "segmentation"
    assert parts[1].get_payload(decode=True) == (mmar / "models" / "model.ts").read_bytes()


def test_token_is_not_sent_on_non_admin_calls(recorder):
    recorder.responses = [json_response([])]
    AIAAClient(recorder.url, admin_token="t").models()
    assert "authorization" not in recorder.requests[0].headers


def test_base_url_path_prefix_and_filters(recorder):
    recorder.responses = [json_response([{"name": "a", "type": "segmentation", "labels": ["spleen"],
                                          "description": "d", "version": 2}])]
    models = AIAAClient(recorder.url + "/aiaa/").models(label="spleen", type="segmentation")
    assert recorder.requests[0].target == "/aiaa/v1/models?label=spleen&type=segmentation"
    assert models[0].name == "a" and models[0].version == "2" and models[0].labels == ["spleen"]


def test_bare_file_and_json_only_answers(recorder, cube):
    path, _, _ = cube
    recorder.responses = [http_response(b"NRRD0004...", "application/octet-stream",
                                        extra='Content-Disposition: attachment; filename="r.nrrd"\r\n'),
                          json_response({"prediction": ["label-3"]})]
    client = AIAAClient(recorder.url)
    bare = client.segmentation("m", path)
    assert bare.image_bytes == b"NRRD0004..." and bare.filename == "r.nrrd" and bare.params == {}
    classified = client.inference("cls", path)
    assert classified.params == {"prediction": ["label-3"]} and not classified.has_image


def test_chunked_multipart_answer_is_decoded(recorder, cube):
    path, _, _ = cube
    image = bytes(range(256)) * 300 + b"\r\n--not-a-boundary\r\n\r\n"
    body = multipart_response({"k": 1}, image).split(b"\r\n\r\n", 1)[1]
    head = b'HTTP/1.1 200 OK\r\nContent-Type: multipart/form-data; boundary="----------lImIt_of_THE_fIle_eW_$"\r\n' \
           b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    chunks = b"".join(f"{len(body[i:i + 1000]):x}\r\n".encode() + body[i:i + 1000] + b"\r\n"
                      for i in range(0, len(body), 1000))
    recorder.responses = [head + chunks + b"0\r\n\r\n"]
    result = AIAAClient(recorder.url).segmentation("m", path)
    assert result.image_bytes == image and result.params == {"k": 1}


def test_server_error_carries_detail(recorder):
    recorder.responses = [json_response({"detail": "model exploded", "code": "model_error"},
                                        "500 Internal Server Error")]
    with pytest.raises(ServerError, match="model exploded") as info:
        AIAAClient(recorder.url).models()
    assert info.value.status == 500


def test_200_with_garbage_is_a_protocol_error(recorder):
    recorder.responses = [http_response(b"<html>", "text/html")]
    with pytest.raises(ProtocolError):
        AIAAClient(recorder.url).models()


def test_timeout_raises_timeout_error():
    silent = RecordingServer(answer=False)
    try:
        with pytest.raises(AIAATimeoutError):
            AIAAClient(silent.url, timeout=0.5).models()
    finally:
        silent.close()


def test_progress_reports_whole_upload_and_download(recorder, tmp_path):
    big = tmp_path / "big.nii"
    big.write_bytes(b"\x01" * (3 << 20))
    recorder.responses = [multipart_response({}, b"\x02" * (2 << 20))]
    events: list[tuple[str, int, int | None]] = []
    AIAAClient(recorder.url, progress=lambda d, done, total: events.append((d, done, total))).segmentation("m", big)
    uploads = [e for e in events if e[0] == "upload"]
    downloads = [e for e in events if e[0] == "download"]
    assert uploads[-1][1] == uploads[-1][2] == int(recorder.requests[0].headers["content-length"])
    assert downloads[-1][1] == downloads[-1][2] and downloads[-1][1] > 2 << 20


def test_multipart_round_trip_with_binary_payload(tmp_path):
    payload = bytes(range(256)) * 64 + b"\r\n\r\n--\r\n"
    file = tmp_path / "x.bin"
    file.write_bytes(payload)
    body = MultipartBody(fields=[("params", '{"a": [1, 2]}')],
                         files=[FilePart("datapoint", "x.bin", path=file), FilePart("more", "y.png", data=b"\x89PNG")])
    encoded = body.to_bytes()
    assert len(encoded) == len(body)
    parsed = split_result(parse_multipart(body.content_type, encoded))
    assert parsed.params == {"a": [1, 2]} and parsed.image == payload and parsed.filename == "x.bin"


def test_save_nifti_helper_still_matches(tmp_path, cube):
    # guard: the fixture's affine survives the client's temp-file writer unchanged
    _, mask, affine = cube
    from aiaa_client.images import save_nifti as client_save

    written = nib.load(str(client_save(tmp_path / "a.nii.gz", mask, affine)))
    reference = nib.load(str(save_nifti(tmp_path / "b.nii.gz", mask, affine)))
    assert np.allclose(written.affine, reference.affine)
    assert np.array_equal(np.asarray(written.dataobj), np.asarray(reference.dataobj))


def test_early_refusal_during_a_large_upload_reports_the_status(tmp_path):
    refusing = RecordingServer(read_body=False,
                               responses=[json_response({"detail": "admin token required"}, "401 Unauthorized")])
    try:
        archive = tmp_path / "big.zip"
        archive.write_bytes(b"\x00" * (16 << 20))
        with pytest.raises(BadRequestError) as info:
            AIAAClient(refusing.url).upload_model("m", archive)
        assert info.value.status == 401 and "admin token required" in str(info.value)
    finally:
        refusing.close()


@pytest.fixture()
def self_signed(tmp_path) -> ssl.SSLContext:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True, timeout=60)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(cert), str(key))
    return context


def test_https_with_self_signed_certificate(self_signed):
    server = RecordingServer(tls=self_signed, responses=[json_response([{"name": "tls", "type": "segmentation"}])])
    try:
        assert server.url.startswith("https://")
        with pytest.raises(AIAAConnectionError, match="CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
            AIAAClient(server.url, timeout=10).models()
        models = AIAAClient(server.url, timeout=10, verify_tls=False).models()
        assert [m.name for m in models] == ["tls"]
        assert server.requests[-1].target == "/v1/models"
    finally:
        server.close()

"""The exact bytes the AIAA Python client puts on the wire (protocol 3.1, 4.1, 13.1, 13.19), over a raw
HTTP/1.1 socket, and its way of reading the answer: the standard-library email parser."""

from __future__ import annotations

import email.parser
import email.policy
import json
import socket
from pathlib import Path

import numpy as np

from aiaa_server.imaging.formats import ImageFormat
from aiaa_server.imaging.io import decode_result
from tests.support.server import LiveServer

BOUNDARY = "----------lImIt_of_THE_fIle_eW_$"
WINDOWS_NAME = "C:\\Users\\annotator\\AppData\\Local\\Temp\\tmpab12cd.nii.gz"


def client_body(fields: dict[str, str], files: dict[str, tuple[str, bytes]]) -> bytes:
    """The Python client's `encode_multipart_formdata`: text fields first, CRLF after every line, and the
    closing boundary followed by CRLF CRLF."""
    lines: list[bytes] = []
    for key, value in fields.items():
        lines += [f"--{BOUNDARY}".encode(), f'Content-Disposition: form-data; name="{key}"'.encode(), b"",
                  value.encode()]
    for key, (filename, data) in files.items():
        lines += [f"--{BOUNDARY}".encode(),
                  f'Content-Disposition: form-data; name="{key}"; filename="{filename}"'.encode(),
                  b"Content-Type: application/octet-stream", b"", data]
    lines += [f"--{BOUNDARY}--".encode(), b""]
    return b"".join(line + b"\r\n" for line in lines)


def raw_exchange(server: LiveServer, method: str, target: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 request as http.client sends it (keep-alive, `accept-encoding: identity`); reads exactly
    Content-Length bytes of the answer and checks nothing else follows."""
    head = (f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nAccept-Encoding: identity\r\n"
            f"content-type: multipart/form-data; boundary={BOUNDARY}\r\ncontent-length: {len(body)}\r\n\r\n")
    with socket.create_connection(("127.0.0.1", server.port), timeout=120) as sock:
        sock.sendall(head.encode() + body)
        buffer = b""
        while b"\r\n\r\n" not in buffer:
            chunk = sock.recv(65536)
            assert chunk, "connection closed before the headers"
            buffer += chunk
        raw_head, rest = buffer.split(b"\r\n\r\n", 1)
        status_line, *header_lines = raw_head.decode("latin-1").split("\r\n")
        headers: dict[str, str] = {}
        for line in header_lines:
            name, value = line.split(":", 1)
            assert name.lower() not in headers, f"duplicate header {name}"
            headers[name.lower()] = value.strip()
        assert "transfer-encoding" not in headers, "chunked responses corrupt the Python client's results"
        assert "content-encoding" not in headers
        length = int(headers["content-length"])
        while len(rest) < length:
            chunk = sock.recv(65536)
            assert chunk, "connection closed before Content-Length bytes arrived"
            rest += chunk
        assert len(rest) == length, "more bytes than Content-Length"
        sock.settimeout(0.3)
        try:
            extra = sock.recv(1)
        except TimeoutError:
            extra = b""
        assert extra == b"", "bytes after the announced body"
    return int(status_line.split()[1]), headers, rest


def parse_like_python_client(content_type: str, body: bytes) -> tuple[dict, dict[str, bytes]]:
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body
    )
    assert message.is_multipart()
    form, files = {}, {}
    for part in message.iter_parts():
        filename = part.get_filename()
        if filename:
            files[filename] = part.get_payload(decode=True)
        else:
            form[part.get_param("name", header="content-disposition")] = part.get_payload(decode=True).decode("utf-8")
    return form, files


def test_python_client_segmentation_bytes(server: LiveServer, cube_nifti) -> None:
    path, mask, _ = cube_nifti
    body = client_body({"params": "{}"}, {"datapoint": (WINDOWS_NAME, Path(path).read_bytes())})
    status, headers, payload = raw_exchange(server, "POST", "/v1/segmentation?model=test_threshold_native", body)
    assert status == 200, payload[:500]
    assert headers["content-type"].startswith("multipart/form-data; boundary=")
    assert payload.startswith(b"--")
    form, files = parse_like_python_client(headers["content-type"], payload)
    params = json.loads(form["params"])
    assert isinstance(params, dict) and len(params["points"]) == 6
    assert len(files) == 1
    (filename, image), = files.items()
    assert filename.endswith(".nii.gz") and "\\" not in filename and "/" not in filename
    np.testing.assert_array_equal(decode_result(image, ImageFormat.NIFTI_GZ)[0], mask)


def test_python_client_session_bytes(server: LiveServer, cube_nifti) -> None:
    path, mask, _ = cube_nifti
    body = client_body({}, {"image": (WINDOWS_NAME, Path(path).read_bytes())})  # no params on session create
    status, headers, payload = raw_exchange(server, "PUT", "/session/?expiry=0", body)
    assert status == 200, payload[:500]
    assert headers["content-type"] == "application/json"
    session_id = json.loads(payload)["session_id"]
    assert json.loads(payload)["session_info"]["name"] == "tmpab12cd.nii.gz"

    # With a session the client sends only the params field.
    body = client_body({"params": "{}"}, {})
    status, headers, payload = raw_exchange(
        server, "POST", f"/v1/segmentation?model=test_threshold_native&session_id={session_id}", body)
    assert status == 200, payload[:500]
    form, files = parse_like_python_client(headers["content-type"], payload)
    assert isinstance(json.loads(form["params"]), dict)
    np.testing.assert_array_equal(decode_result(next(iter(files.values())), ImageFormat.NIFTI_GZ)[0], mask)

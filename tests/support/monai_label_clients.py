"""The requests the MONAI Label clients put on the wire, byte for byte, sent to a live server with `http.client`.

Each builder returns a `WireRequest`: method, target, headers (names spelled and ordered as the client writes
them) and body. Read from the clients' sources (facts only, nothing copied):

* 3D Slicer, MONAI Label module: Project-MONAI/MONAILabel `plugins/slicer/MONAILabel/MONAILabelLib/client.py`
  (`MONAILabelUtils.http_method`/`http_multipart` over `http.client`, which adds `Host` and
  `Accept-Encoding: identity` before the client's own lower-case `content-type`/`content-length`; the
  multipart boundary `----------lImIt_of_THE_fIle_eW_$`; sessions through `requests.put(files=..., data=...)`,
  i.e. urllib3's multipart writer) and `plugins/slicer/MONAILabel/MONAILabel.py` (the params it sends).
* OHIF v3, MONAI Label extension: `plugins/ohifv3/extensions/monai-label/src/services/MonaiLabelClient.js`
  (axios 0.21 in a browser: `URLSearchParams` queries, a browser `FormData` body with a WebKit boundary, the
  header `accept: ['application/json', 'multipart/form-data']`, which the browser joins with a bare comma).
  The browser picks the order and spelling of the other headers; those here are Chrome's.
* MITK: MITK/MITK `Modules/Segmentation/Interactions/mitkMonaiLabelTool.cpp` (v2025.08) through cpp-httplib
  0.15.3 (`CMakeExternals/httplib.cmake`): `httplib::SSLClient` only (HTTPS, certificate not verified), headers
  written from a case-insensitively sorted map, boundary `--cpp-httplib-multipart-data-` + 16 characters.
"""

from __future__ import annotations

import http.client
import json
import mimetypes
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, quote_plus

SLICER_BOUNDARY = "----------lImIt_of_THE_fIle_eW_$"
SLICER_CLIENT_ID = "user-xyz"  # MONAILabel.py: the module's default client id
REQUESTS_USER_AGENT = "python-requests/2.32.3"  # Slicer's bundled requests; the version only changes this value
WEBKIT_BOUNDARY = "----WebKitFormBoundaryQ7mD2xZp9cKf3LwA"
CHROME_USER_AGENT = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
                     "Chrome/131.0.0.0 Safari/537.36")
OHIF_ORIGIN = "http://127.0.0.1:3000"  # OHIF's development server, another origin than the server's
HTTPLIB_VERSION = "0.15.3"
HTTPLIB_BOUNDARY = "--cpp-httplib-multipart-data-5fKq0ZrB1vXe8NdA"
MITK_INPUT_NAME = "post_from_mitk.nii.gz"


@dataclass(frozen=True)
class WireRequest:
    """One HTTP/1.1 request exactly as a client writes it."""

    method: str
    target: str
    headers: tuple[tuple[str, str], ...]
    body: bytes | None = None

    def header(self, name: str) -> str | None:
        return next((value for key, value in self.headers if key.lower() == name.lower()), None)

    def to_bytes(self) -> bytes:
        """The bytes on the wire (what `http.client` writes for it)."""
        head = "".join(f"{name}: {value}\r\n" for name, value in self.headers)
        return f"{self.method} {self.target} HTTP/1.1\r\n{head}\r\n".encode("latin-1") + (self.body or b"")


@dataclass
class Answer:
    """What came back: status, headers in the order received, and the body (Content-Encoding undone)."""

    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    def header(self, name: str) -> str | None:
        return next((value for key, value in self.headers if key.lower() == name.lower()), None)

    def json(self) -> object:
        return json.loads(self.body)


def open_request(port: int, request: WireRequest, tls: bool = False,
                 timeout: float = 300.0) -> http.client.HTTPResponse:
    """Send `request` to 127.0.0.1:`port` with exactly its headers; the answer is returned unread.

    `tls`: over HTTPS without verifying the certificate, as Slicer (`ssl._create_unverified_context`) and MITK
    (`enable_server_certificate_verification(false)`) do.
    """
    if tls:
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        connection: http.client.HTTPConnection = http.client.HTTPSConnection("127.0.0.1", port, timeout=timeout,
                                                                             context=context)
    else:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    connection.putrequest(request.method, request.target, skip_host=True, skip_accept_encoding=True)
    for name, value in request.headers:
        connection.putheader(name, value)
    connection.endheaders(request.body)
    return connection.getresponse()


def exchange(port: int, request: WireRequest, tls: bool = False) -> Answer:
    """Send `request` and read the whole answer (gzip/deflate undone, as a browser would)."""
    import zlib

    response = open_request(port, request, tls)
    body = response.read()
    encoding = (response.getheader("content-encoding") or "identity").lower()
    assert encoding in ("identity", "gzip", "deflate"), f"a content-encoding the test cannot undo: {encoding}"
    if encoding != "identity":
        body = zlib.decompress(body, 47)
    return Answer(response.status, list(response.getheaders()), body)


# --- 3D Slicer: MONAILabelLib/client.py ---------------------------------------------------------------------

def _slicer_head(port: int) -> list[tuple[str, str]]:
    """What `http.client.HTTPConnection.request` writes before the client's own headers."""
    return [("Host", f"127.0.0.1:{port}"), ("Accept-Encoding", "identity")]


def slicer_get(port: int, selector: str, method: str = "GET") -> WireRequest:
    """`MONAILabelUtils.http_method` without a body: `/auth/`, `/info/`, `/datastore/?output=all`, sessions,
    `/train/?check_if_running=true`, `download_label` (GET and DELETE send no Content-Length)."""
    return WireRequest(method, selector, tuple(_slicer_head(port)))


def slicer_json(port: int, selector: str, params: dict[str, object], method: str = "POST") -> WireRequest:
    """`MONAILabelUtils.http_method` with a dict body: `json.dumps`, lower-case `content-type`/`content-length`
    (`next_sample` posts `{..., "client_id": ...}` to `/activelearning/<strategy>`)."""
    body = json.dumps(params).encode()
    headers = [*_slicer_head(port), ("content-type", "application/json"), ("content-length", str(len(body)))]
    return WireRequest(method, selector, tuple(headers), body)


def slicer_multipart(port: int, method: str, selector: str, fields: dict[str, str],
                     files: dict[str, Path]) -> WireRequest:
    """`MONAILabelUtils.http_multipart`: fields, then files under their full local path as filename, the type
    from `mimetypes.guess_type` (octet-stream when unknown), CRLF after every line, `--boundary--` + CRLF last."""
    lines: list[bytes] = []
    for name, value in fields.items():
        lines += [f"--{SLICER_BOUNDARY}".encode(), f'Content-Disposition: form-data; name="{name}"'.encode(), b"",
                  value.encode()]
    for name, path in files.items():
        kind = mimetypes.guess_type(str(path))[0] or "application/octet-stream"
        lines += [f"--{SLICER_BOUNDARY}".encode(),
                  f'Content-Disposition: form-data; name="{name}"; filename="{path}"'.encode(),
                  f"Content-Type: {kind}".encode(), b"", path.read_bytes()]
    body = b"".join(line + b"\r\n" for line in [*lines, f"--{SLICER_BOUNDARY}--".encode(), b""])
    headers = [*_slicer_head(port), ("content-type", f"multipart/form-data; boundary={SLICER_BOUNDARY}"),
               ("content-length", str(len(body)))]
    return WireRequest(method, selector, tuple(headers), body)


def slicer_upload_image(port: int, image: Path, image_id: str) -> WireRequest:
    """`MONAILabelClient.upload_image`: PUT `/datastore/?image=<quote_plus(id)>`, params `{"client_id": ...}`,
    the file as part `file`."""
    return slicer_multipart(port, "PUT", f"/datastore/?image={quote_plus(image_id)}",
                            {"params": json.dumps({"client_id": SLICER_CLIENT_ID})}, {"file": image})


def slicer_save_label(port: int, image_id: str, label: Path, params: dict[str, object]) -> WireRequest:
    """`MONAILabelClient.save_label` as `onSaveLabel` calls it: no tag (so no `&tag=`), params
    `{"label_info": [...], "model": ..., "client_id": ...}`, the label as part `label`."""
    return slicer_multipart(port, "PUT", f"/datastore/label?image={quote_plus(image_id)}",
                            {"params": json.dumps({**params, "client_id": SLICER_CLIENT_ID})}, {"label": label})


def slicer_download_label(port: int, label_id: str, tag: str) -> WireRequest:
    """`MONAILabelClient.download_label` (Next Sample with the `original` label setting on): GET
    `/datastore/label?label=<id>&tag=<tag>`, saved under the Content-Disposition file name's extension."""
    return slicer_get(port, f"/datastore/label?label={quote_plus(label_id)}&tag={quote_plus(tag)}")


def slicer_infer(port: int, model: str, image_id: str, params: dict[str, object],
                 session_id: str | None = None) -> WireRequest:
    """`MONAILabelLogic.infer` + `MONAILabelClient.infer`: `result_extension` `.nrrd` and `result_dtype` `uint8`
    added, then `client_id`; POST `/infer/<model>?image=<id>[&session_id=]` with only the `params` field."""
    params = {**params, "result_extension": ".nrrd", "result_dtype": "uint8", "client_id": SLICER_CLIENT_ID}
    selector = f"/infer/{quote_plus(model)}?image={quote_plus(image_id)}"
    if session_id:
        selector += f"&session_id={quote_plus(session_id)}"
    return slicer_multipart(port, "POST", selector, {"params": json.dumps(params)}, {})


def slicer_create_session(port: int, image: Path, boundary: str) -> WireRequest:
    """`MONAILabelClient.create_session`: `requests.put(url, files=[("files", (basename, fh))],
    data={"client_id": ...})`. urllib3 writes the data field first, then the file without a Content-Type
    header; requests' default headers, then Content-Length and Content-Type. `boundary`: urllib3 draws 32 hex
    digits."""
    parts = [('form-data; name="client_id"', SLICER_CLIENT_ID.encode()),
             (f'form-data; name="files"; filename="{image.name}"', image.read_bytes())]
    body = b"".join(f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"
                    for disposition, data in parts) + f"--{boundary}--\r\n".encode()
    headers = (("Host", f"127.0.0.1:{port}"), ("User-Agent", REQUESTS_USER_AGENT),
               ("Accept-Encoding", "gzip, deflate"), ("Accept", "*/*"), ("Connection", "keep-alive"),
               ("Content-Length", str(len(body))), ("Content-Type", f"multipart/form-data; boundary={boundary}"))
    return WireRequest("PUT", "/session/", headers, body)


# --- OHIF v3: MonaiLabelClient.js (axios 0.21, browser FormData) --------------------------------------------

def url_search_params(pairs: list[tuple[str, str]]) -> str:
    """`URLSearchParams.toString()`: application/x-www-form-urlencoded, leaving only `*-._` and alphanumerics."""
    def encode(text: str) -> str:
        return quote_plus(text, safe="*").replace("~", "%7E")
    return "&".join(f"{encode(key)}={encode(value)}" for key, value in pairs)


def encode_uri_component(text: str) -> str:
    """JavaScript's `encodeURIComponent` (keeps `A-Za-z0-9-_.!~*'()`)."""
    return quote(text, safe="!~*'()")


def _chrome_headers(port: int, length: int | None, accept: str, content_type: str | None,
                    ) -> tuple[tuple[str, str], ...]:
    """The headers Chrome writes for an XHR from the OHIF page: axios sets only Accept and, for JSON, the
    Content-Type; for FormData the browser writes the multipart Content-Type itself."""
    headers = [("Host", f"127.0.0.1:{port}"), ("Connection", "keep-alive")]
    if length is not None:
        headers.append(("Content-Length", str(length)))
    headers += [("User-Agent", CHROME_USER_AGENT), ("Accept", accept)]
    if content_type:
        headers.append(("Content-Type", content_type))
    headers += [("Origin", OHIF_ORIGIN), ("Sec-Fetch-Site", "same-site"), ("Sec-Fetch-Mode", "cors"),
                ("Sec-Fetch-Dest", "empty"), ("Referer", f"{OHIF_ORIGIN}/"),
                ("Accept-Encoding", "gzip, deflate, br, zstd"), ("Accept-Language", "en-US,en;q=0.9")]
    return tuple(headers)


AXIOS_DEFAULT_ACCEPT = "application/json, text/plain, */*"
OHIF_POST_ACCEPT = "application/json,multipart/form-data"  # the array header, as the browser stringifies it


def ohif_get(port: int, path: str) -> WireRequest:
    """`MonaiLabelClient.api_get` (`info()`: `new URL('info/', server_url)`; `is_train_running()`:
    `train/?check_if_running=true`): axios' default Accept, no body."""
    return WireRequest("GET", path, _chrome_headers(port, None, AXIOS_DEFAULT_ACCEPT, None))


def form_data(fields: list[tuple[str, str]], files: list[tuple[str, str, bytes]]) -> bytes:
    """A browser's `FormData` body: `params` text, then each Blob as `filename` with its type, or
    `application/octet-stream` for an untyped Blob."""
    body = b""
    for name, value in fields:
        body += f'--{WEBKIT_BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
    for name, filename, data in files:
        body += (f'--{WEBKIT_BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                 f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + b"\r\n"
    return body + f"--{WEBKIT_BOUNDARY}--\r\n".encode()


def ohif_infer(port: int, model: str, image: str, params: dict[str, object], output: str = "image",
               result_dtype: str = "uint8") -> WireRequest:
    """`MonaiLabelClient.infer`: `infer/<encodeURIComponent(model)>?image=<SeriesInstanceUID>&output=<output>`,
    params + `result_extension` `.nrrd`, `result_dtype`, `result_compress` false, `restore_label_idx` false,
    sent as FormData with only the `params` field. Main and 0.8.5+: output `image`, dtype `uint8`;
    MONAI Label 0.8.0-0.8.4: output `all`, dtype `uint16`."""
    params = {**params, "result_extension": ".nrrd", "result_dtype": result_dtype, "result_compress": False,
              "restore_label_idx": False}
    target = f"/infer/{encode_uri_component(model)}?{url_search_params([('image', image), ('output', output)])}"
    body = form_data([("params", json.dumps(params, separators=(",", ":")))], [])
    headers = _chrome_headers(port, len(body), OHIF_POST_ACCEPT, f"multipart/form-data; boundary={WEBKIT_BOUNDARY}")
    return WireRequest("POST", target, headers, body)


def ohif_next_sample(port: int, strategy: str, params: dict[str, object]) -> WireRequest:
    """`MonaiLabelClient.next_sample`: POST `activelearning/<strategy>` with the params object, which axios 0.21.4
    sends as JSON (`application/json`; 0.21.1 added `;charset=utf-8`)."""
    body = json.dumps(params, separators=(",", ":")).encode()
    headers = _chrome_headers(port, len(body), OHIF_POST_ACCEPT, "application/json")
    return WireRequest("POST", f"/activelearning/{encode_uri_component(strategy)}", headers, body)


def ohif_save_label(port: int, image: str, label: bytes, params: dict[str, object]) -> WireRequest:
    """`MonaiLabelClient.save_label` (called by 0.8.0-0.8.4's ActiveLearning.tsx): PUT
    `datastore/label?image=<SeriesInstanceUID>`, FormData `params` + the labelmap's raw voxels as `label.bin`."""
    body = form_data([("params", json.dumps(params, separators=(",", ":")))], [("label", "label.bin", label)])
    headers = _chrome_headers(port, len(body), OHIF_POST_ACCEPT, f"multipart/form-data; boundary={WEBKIT_BOUNDARY}")
    return WireRequest("PUT", f"/datastore/label?{url_search_params([('image', image)])}", headers, body)


def chrome_preflight(port: int, method: str, target: str, request_headers: str | None) -> WireRequest:
    """The CORS preflight Chrome sends before a PUT, or a POST with a JSON body, from the OHIF page."""
    headers = [("Host", f"127.0.0.1:{port}"), ("Connection", "keep-alive"), ("Accept", "*/*"),
               ("Access-Control-Request-Method", method)]
    if request_headers:
        headers.append(("Access-Control-Request-Headers", request_headers))
    headers += [("Origin", OHIF_ORIGIN), ("User-Agent", CHROME_USER_AGENT), ("Sec-Fetch-Mode", "cors"),
                ("Referer", f"{OHIF_ORIGIN}/"), ("Accept-Encoding", "gzip, deflate, br, zstd")]
    return WireRequest("OPTIONS", target, tuple(headers))


# --- MITK: mitkMonaiLabelTool.cpp through cpp-httplib 0.15.3 ------------------------------------------------

def _httplib_headers(port: int, extra: dict[str, str]) -> tuple[tuple[str, str], ...]:
    """cpp-httplib's `write_request`: Connection: close (no keep-alive), Host, Accept, User-Agent, plus the
    body's headers, written in case-insensitive alphabetical order (its header map is sorted)."""
    headers = {"Connection": "close", "Host": f"127.0.0.1:{port}", "Accept": "*/*",
               "User-Agent": f"cpp-httplib/{HTTPLIB_VERSION}", **extra}
    return tuple(sorted(headers.items(), key=lambda item: item[0].lower()))


def mitk_get_info(port: int) -> WireRequest:
    """`IsMonaiServerOn` and `FetchOverallInfo`: `cli.Get("/info/")`."""
    return WireRequest("GET", "/info/", _httplib_headers(port, {}))


def mitk_params(foreground: list[list[int]] | None = None, background: list[list[int]] | None = None) -> str:
    """The `params` text `PostInferRequest` writes by hand: `{"restore_label_idx": true}` for an auto model;
    for a deepgrow model the clicks as voxel indices (z 0 in the 2D tool) and `reset_state` on the first click."""
    if foreground is None:
        return '{"restore_label_idx": true}'
    background = background or []
    def points(clicks: list[list[int]]) -> str:
        return "[" + ",".join("[" + ",".join(str(int(v)) for v in click) + "]" for click in clicks) + "]"
    reset = "true" if len(foreground) == 1 and not background else "false"
    return f'{{"foreground":{points(foreground)},"background":{points(background)},"reset_state":{reset}}}'


def mitk_infer(port: int, model: str, image: bytes, params: str) -> WireRequest:
    """`PostInferRequest`: `cli.Post("/infer/" + model, items)` with no query string (no image id): `params`
    (no filename, no type), then `file` named `post_from_mitk.nii.gz` as application/octet-stream."""
    body = (f'--{HTTPLIB_BOUNDARY}\r\nContent-Disposition: form-data; name="params"\r\n\r\n{params}\r\n'
            f'--{HTTPLIB_BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{MITK_INPUT_NAME}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + image + \
        f"\r\n--{HTTPLIB_BOUNDARY}--\r\n".encode()
    extra = {"Content-Type": f"multipart/form-data; boundary={HTTPLIB_BOUNDARY}", "Content-Length": str(len(body))}
    return WireRequest("POST", f"/infer/{model}", _httplib_headers(port, extra), body)

"""The MONAI Label clients' ways of reading the server's answers, each as its source does it (facts only):

* 3D Slicer `plugins/slicer/MONAILabel/MONAILabelLib/client.py`: `send_response` hands a multipart 200 answer
  to `cgi.FieldStorage` on the socket (files keyed by their filename, other parts by name), `infer` takes
  `params` from the form and `save_result` writes the first file to `tmpdir/<filename>`; `get_filename` reads
  `filename*=` or `filename="..."` from Content-Disposition.
* OHIF v3 `plugins/ohifv3/extensions/monai-label/src`: main and 0.8.5+ read the bare answer of `output=image`
  as an NRRD (`utils/SegmentationReader.js`, nrrd-js: header to the first blank line, raw data after it) and
  copy it into the labelmap as `new Uint8Array(...)`. MONAI Label 0.8.0-0.8.4 (`components/MonaiLabelPanel.tsx`
  `parseResponse`) decoded the whole `output=all` answer as UTF-8 text, split it on `--<boundary>`, took the
  part holding `Content-Type: application/json` (its `centroids` are required) and the part holding
  `Content-Type: application/octet-stream`, and rebuilt the bytes from the text's UTF-16 code units.
* MITK `Modules/Segmentation/Interactions/mitkMonaiLabelTool.cpp`: the boundary is everything after
  `boundary=` in content-type; parts are the text before each delimiter; JSON after the literal
  `Content-Type: application/json`, the image after `Content-Type: application/octet-stream` with leading
  spaces/CR/LF dropped and the CRLF before the next delimiter kept; written to `..._000.nii.gz` and loaded by
  ITK (zlib's gzread ignores bytes after the gzip stream).
"""

from __future__ import annotations

import http.client
import importlib
import json
import re
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import nibabel as nib
import numpy as np

from tests.support.monai_label_clients import Answer


class ClientFailure(AssertionError):
    """What the real client would fail with (an error dialog, an exception, a crash)."""


# --- 3D Slicer ----------------------------------------------------------------------------------------------

def slicer_form(response: http.client.HTTPResponse) -> tuple[dict[str, Any], dict[str, bytes]]:
    """`MONAILabelUtils.parse_multipart`: `cgi.FieldStorage` straight on the socket, with the answer's headers."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        cgi = importlib.import_module("cgi")
    storage = cgi.FieldStorage(fp=response.fp, headers=response.msg, environ={"REQUEST_METHOD": "POST"},
                               keep_blank_values=True)
    form: dict[str, Any] = {}
    files: dict[str, bytes] = {}
    for item in storage.list if isinstance(storage.list, list) else []:
        if item.filename:
            files[item.filename] = item.value
        else:
            form[item.name] = item.value
    return form, files


def slicer_infer_result(response: http.client.HTTPResponse, tmpdir: Path) -> tuple[Path, dict[str, Any]]:
    """`MONAILabelClient.infer` after the request: status 200 or an error; a multipart answer parsed by cgi;
    `params` from the form (a JSON string); the first file saved as `tmpdir/<its filename>`."""
    content_type = response.getheader("content-type", "multipart/form-data")
    if response.status != 200:
        raise ClientFailure(f"Slicer: Status: {response.status}; Response: {response.read()[:500]!r}")
    if "multipart" not in content_type:
        raise ClientFailure(f"Slicer's save_result iterates files=None for a {content_type!r} answer")
    form, files = slicer_form(response)
    raw = form.get("params") if files else form
    params = json.loads(raw) if isinstance(raw, str) else raw
    if not files:
        raise ClientFailure(f"Slicer: no file part in the answer (form: {sorted(form)})")
    name, data = next(iter(files.items()))
    result = tmpdir / name
    result.parent.mkdir(parents=True, exist_ok=True)
    result.write_bytes(data if isinstance(data, bytes) else data.encode())
    return result, params


def slicer_json(answer: Answer) -> Any:
    """`MONAILabelClient.info`/`next_sample`/`upload_image`/...: anything but 200 raises; else `json.loads`."""
    if answer.status != 200:
        raise ClientFailure(f"Slicer: Status: {answer.status}; Response: {answer.body[:500]!r}")
    return json.loads(answer.body.decode("utf-8"))


def slicer_filename(content_disposition: str) -> str:
    """`MONAILabelUtils.get_filename`: `filename*=` first (an `utf-8''` prefix unquoted), else `filename="..."`."""
    names = re.findall(r"filename\*=([^;]+)", content_disposition, flags=re.IGNORECASE)
    if not names:
        names = re.findall('filename="(.+)"', content_disposition, flags=re.IGNORECASE)
    if not names:
        raise ClientFailure(f"Slicer: IndexError, no filename in {content_disposition!r}")
    if "utf-8''" in names[0].lower():
        return unquote(re.sub("utf-8''", "", names[0], flags=re.IGNORECASE))
    return names[0]


# --- OHIF v3 ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Nrrd:
    fields: dict[str, str]
    data: bytes  # the data after the header, inflated when the encoding is gzip (SegmentationReader.js)

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(int(size) for size in self.fields["sizes"].split())


def nrrd_js_read(buffer: bytes) -> Nrrd:
    """nrrd-js' `parse` as `SegmentationReader.parseNrrdData` uses it: a `NRRD000x` magic line, `field: value`
    lines up to the first blank line, the data right after; gzip data inflated with pako."""
    end = buffer.find(b"\n\n")
    if not buffer.startswith(b"NRRD") or end < 0:
        raise ClientFailure(f"OHIF: 'Failed to parse NRRD data' ({buffer[:40]!r})")
    fields: dict[str, str] = {}
    for line in buffer[:end].decode("latin-1").split("\n")[1:]:
        if line.startswith("#") or ":" not in line:
            continue
        key, value = line.split(":=", 1) if ":=" in line else line.split(": ", 1)
        fields[key.strip()] = value.strip()
    data = buffer[end + 2:]
    if fields.get("encoding") in ("gzip", "gz"):
        data = zlib.decompress(data, 47)
    elif fields.get("encoding") != "raw":
        raise ClientFailure(f"OHIF: nrrd-js cannot read encoding {fields.get('encoding')!r}")
    return Nrrd(fields, data)


def ohif_labelmap(buffer: bytes, voxels: int) -> np.ndarray:
    """`MonaiLabelPanel.updateView` (main): `new Uint8Array(nrrd data)` must fill the viewport's labelmap, one
    byte per voxel; returns those bytes in file order."""
    nrrd = nrrd_js_read(buffer)
    data = np.frombuffer(nrrd.data, dtype=np.uint8)
    if data.size != voxels or int(np.prod(nrrd.sizes)) != voxels:
        raise ClientFailure(f"OHIF: {data.size} bytes for a labelmap of {voxels} voxels ({nrrd.fields})")
    return data


def ohif_084_parse_response(answer: Answer) -> tuple[bytes, dict[str, Any]]:
    """`MonaiLabelPanel.parseResponse` (MONAI Label 0.8.0-0.8.4): returns the NRRD bytes and the centroids."""
    content_type = answer.header("content-type") or ""
    match = re.search(r"boundary=([^;]+)", content_type, flags=re.IGNORECASE)
    boundary = match.group(1) if match else None
    text = answer.body.decode("utf-8", errors="replace")  # TextDecoder: invalid bytes become U+FFFD
    parts = [part for part in text.split(f"--{boundary}") if part.strip() != ""]
    json_part = next((p for p in parts if "Content-Type: application/json" in p), None)
    nrrd_part = next((p for p in parts if "Content-Type: application/octet-stream" in p), None)
    if json_part is None or nrrd_part is None:
        raise ClientFailure(f"OHIF 0.8.4: TypeError, json part {json_part is not None}, nrrd part "
                            f"{nrrd_part is not None} in {content_type!r}")
    metadata = json.loads(json_part[json_part.index("{"):json_part.rindex("}") + 1])
    if not isinstance(metadata.get("centroids"), dict):
        raise ClientFailure("OHIF 0.8.4: Object.entries(response.centroids) throws: no 'centroids' in params")
    binary = nrrd_part.split("\r\n\r\n")[1]
    units = np.frombuffer(binary[:binary.rindex("\r\n")].encode("utf-16-le"), dtype="<u2")
    return (units & 0xFF).astype(np.uint8).tobytes(), metadata["centroids"]


# --- MITK ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MitkModel:
    name: str
    type: str
    labels: dict[str, int]
    dimension: int
    description: str


def _typed(obj: dict[str, Any], key: str, kind: type) -> Any:
    """nlohmann::json `get_to`: a missing key or another JSON type throws (MITK reports the fetch as failed)."""
    value = obj.get(key) if isinstance(obj, dict) else None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ClientFailure(f"MITK: json type_error reading {key!r} as {kind.__name__}: {value!r}")
    return value


def mitk_read_info(body: bytes) -> tuple[list[str], list[MitkModel]]:
    """`from_json(json, MonaiAppMetadata)`: name, description (strings), labels (strings), and per model labels
    (name -> int, or a list of names mapped to -1), type, dimension (int), description (string)."""
    info = json.loads(body)
    _typed(info, "name", str), _typed(info, "description", str)
    labels = _typed(info, "labels", list)
    if not all(isinstance(label, str) for label in labels):
        raise ClientFailure(f"MITK: labels must be strings: {labels!r}")
    models = []
    for name, model in _typed(info, "models", dict).items():
        raw = model.get("labels") if isinstance(model, dict) else None
        if isinstance(raw, dict) and all(isinstance(v, int) for v in raw.values()):
            model_labels = dict(raw)
        elif isinstance(raw, list) and all(isinstance(v, str) for v in raw):
            model_labels = {label: -1 for label in raw}
        else:
            raise ClientFailure(f"MITK: model {name} labels are neither {{name: int}} nor [names]: {raw!r}")
        models.append(MitkModel(name, _typed(model, "type", str), model_labels, _typed(model, "dimension", int),
                                _typed(model, "description", str)))
    return labels, models


def mitk_infer_result(answer: Answer) -> tuple[dict[str, Any], bytes]:
    """`PostInferRequest` after a 200: the metadata JSON and the bytes MITK writes to its `.nii.gz`."""
    if answer.status != 200:
        raise ClientFailure(f"MITK: An HTTP POST error ({answer.status})")
    content_type = answer.header("content-type")
    if content_type is None or "boundary=" not in content_type:
        raise ClientFailure(f"MITK: no boundary in content-type {content_type!r}")
    boundary = "--" + content_type[content_type.index("boundary=") + len("boundary="):]
    parts, rest = [], answer.body.decode("latin-1")
    while (position := rest.find(boundary)) >= 0:
        if rest[:position]:
            parts.append(rest[:position])
        rest = rest[position + len(boundary):]
    json_marker, image_marker = "Content-Type: application/json", "Content-Type: application/octet-stream"
    if len(parts) < 2 or json_marker not in parts[0] or image_marker not in parts[1]:
        raise ClientFailure(f"MITK: parts[0] must hold {json_marker!r} and parts[1] {image_marker!r}: "
                            f"{[p[:120] for p in parts]}")
    metadata = json.loads(parts[0][parts[0].index(json_marker) + len(json_marker):])
    image = parts[1][parts[1].index(image_marker) + len(image_marker):].lstrip(" \n\r")
    return metadata, image.encode("latin-1")


def itk_read_nifti_gz(data: bytes) -> nib.Nifti1Image:
    """ITK's NIfTI reader on MITK's `.nii.gz`: zlib's gzread inflates the gzip stream and ignores what follows."""
    if data[:2] != b"\x1f\x8b":
        raise ClientFailure(f"MITK: the result written as .nii.gz is not gzip ({data[:16]!r})")
    inflater = zlib.decompressobj(wbits=31)
    raw = inflater.decompress(data)
    if not inflater.eof:
        raise ClientFailure("MITK: truncated gzip stream")
    return nib.Nifti1Image.from_bytes(raw)


"""`AIAAClient`: typed calls for every AIAA endpoint (protocol sections 2–9)."""

from __future__ import annotations

import gzip
import json
import os
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

from aiaa_client import crop
from aiaa_client.errors import NotFoundError, ProtocolError
from aiaa_client.images import ImageInput, image_file, is_array_input, load_nifti, nifti_image, spacing_of
from aiaa_client.multipart import FilePart, MultipartBody, parse_multipart, split_result
from aiaa_client.transport import HTTPResponse, ProgressCallback, RequestBody, Transport
from aiaa_client.types import FixPolygonResult, InferenceResult, ModelInfo, Session

PointLike = Sequence[int]
PathLike = str | os.PathLike
ARCHIVE_SUFFIXES = (".zip", ".tar.gz", ".tgz", ".tar")
DEFAULT_SERVER = "http://127.0.0.1:5000"


class AIAAClient:
    """Talks to an AIAA server (this project's or NVIDIA's) with the standard library only.

    `timeout` applies to every socket operation (connect, each send/receive), not to the whole call.
    `admin_token` is sent as `Authorization: Bearer …` on /admin calls only.
    `progress(direction, done, total)` is called while large bodies move ("upload" / "download").
    """

    def __init__(
        self,
        base_url: str = DEFAULT_SERVER,
        timeout: float | None = 300.0,
        admin_token: str | None = None,
        verify_tls: bool = True,
        progress: ProgressCallback | None = None,
    ) -> None:
        self.transport = Transport(base_url, timeout=timeout, verify_tls=verify_tls, progress=progress)
        self.admin_token = admin_token

    @property
    def base_url(self) -> str:
        return self.transport.base_url

    # ---------------------------------------------------------------- models

    def models(self, label: str | None = None, type: str | None = None) -> list[ModelInfo]:
        data = self._json("GET", "/v1/models", {"label": label, "type": type}, what="list models")
        if not isinstance(data, list):
            raise ProtocolError(f"GET /v1/models: expected a JSON list, got {type_name(data)}")
        return [ModelInfo.from_json(item) for item in data if isinstance(item, dict)]

    def model(self, name: str) -> ModelInfo:
        data = self._json("GET", "/v1/models", {"model": name}, what=f"model {name!r}")
        if isinstance(data, list):  # some servers ignore ?model= and list everything
            data = next((m for m in data if isinstance(m, dict) and m.get("name") == name), None)
            if data is None:
                raise NotFoundError(f"model {name!r}: not on the server", 404)
        if not isinstance(data, dict):
            raise ProtocolError(f"model {name!r}: expected a JSON object, got {type_name(data)}")
        return ModelInfo.from_json(data)

    # ---------------------------------------------------------------- inference

    def segmentation(
        self, model: str, image: ImageInput | None = None, *, session_id: str | None = None,
        output: PathLike | None = None, params: dict[str, Any] | None = None,
    ) -> InferenceResult:
        return self._infer("/v1/segmentation", model, params or {}, image, session_id, output)

    def inference(
        self, model: str, image: ImageInput | None = None, *, params: dict[str, Any] | None = None,
        session_id: str | None = None, output: PathLike | None = None,
    ) -> InferenceResult:
        """Any model type; an image-less answer (classification) comes back as `params` with no image."""
        return self._infer("/v1/inference", model, params or {}, image, session_id, output)

    def deepgrow(
        self, model: str, image: ImageInput | None = None, *, foreground: Sequence[PointLike] = (),
        background: Sequence[PointLike] = (), current_point: PointLike | None = None,
        spatial_size: Sequence[int] | None = None, session_id: str | None = None,
        output: PathLike | None = None,
    ) -> InferenceResult:
        params: dict[str, Any] = {"foreground": points_list(foreground), "background": points_list(background)}
        if current_point is not None:
            params["current_point"] = [point_list(current_point)]  # Slicer/OHIF shape: [[x, y, z]]
        if spatial_size is not None:
            params["spatial_size"] = [int(v) for v in spatial_size]
        return self._infer("/v1/deepgrow", model, params, image, session_id, output)

    def dextr3d(
        self, model: str, image: ImageInput | None = None, *, points: Sequence[PointLike],
        session_id: str | None = None, output: PathLike | None = None, server_crop: bool = False,
        pad: float = 20.0, roi: Sequence[int] = (128, 128, 128),
    ) -> InferenceResult:
        """DExtr3D from >= 6 boundary points.

        Default (an image, no session): crop around the points here and upload the roi-sized crop
        (protocol 7.2 mode 1); the returned mask is pasted back into the full volume.
        `server_crop=True` or a `session_id`: send the full volume / session and the raw points (mode 2).
        """
        if len(points) < 6:
            raise ValueError(f"DExtr3D needs at least 6 points, got {len(points)}")
        raw_points = points_list(points)
        if server_crop or session_id is not None or image is None:
            return self._infer("/v1/dextr3d", model, {"points": raw_points}, image, session_id, output)
        return self._dextr3d_client_crop(model, image, raw_points, output, pad, tuple(roi))

    def _dextr3d_client_crop(
        self, model: str, image: ImageInput, points: list[list[int]], output: PathLike | None, pad: float,
        roi: tuple[int, ...],
    ) -> InferenceResult:
        import numpy as np

        if is_array_input(image):
            array, affine = np.asarray(image[0]), np.asarray(image[1], dtype=float)  # type: ignore[index]
            like = None
        else:
            like = load_nifti(image)  # type: ignore[arg-type]
            array, affine = np.asanyarray(like.dataobj), like.affine
        plan = crop.plan_crop(points, array.shape, spacing_of(affine), pad=pad, roi=roi)
        small = crop.crop_and_resample(array, plan)
        scaled = crop.scale_points(points, plan)
        answer = self._infer("/v1/dextr3d", model, {"points": scaled}, (small, crop.crop_affine(affine, plan)),
                             None, None)
        mask = crop.paste_back(np.asarray(answer.array), plan, array.shape)
        full = nifti_image(mask, affine)
        data = gzip.compress(full.to_bytes(), compresslevel=1)
        params = dict(answer.params)
        if "points" in params:
            params["points"] = _points_in_full_image(params["points"], plan)
        result = InferenceResult(params=params, image_bytes=data, filename="dextr3d.nii.gz",
                                 _decoded=(mask, affine))
        if output is not None:
            result.path = write_result(Path(output), data)
        return result

    # ---------------------------------------------------------------- polygons

    def mask2polygon(self, mask: ImageInput, more_points: int = 10) -> list[Any]:
        with self._upload_body({"more_points": int(more_points)}, mask) as body:
            response = self.transport.request("POST", "/v1/mask2polygon", body=body, what="mask2polygon")
        data = decode_json(response, "mask2polygon")
        if not isinstance(data, list):
            raise ProtocolError(f"mask2polygon: expected a JSON list, got {type_name(data)}")
        return data

    def fixpolygon(
        self, image: ImageInput, *, poly: Any, vertex_offset: Sequence[int], polygon_index: int = 0,
        vertex_index: int = 0, propagate_neighbor: int = 1, dimension: int = 2, slice_index: int | None = None,
        propagate_neighbor_3d: int | None = None, output: PathLike | None = None,
    ) -> FixPolygonResult:
        params: dict[str, Any] = {
            "poly": poly, "vertex_offset": [int(v) for v in vertex_offset], "dimension": int(dimension),
            "polygon_index": int(polygon_index), "vertex_index": int(vertex_index),
            "propagate_neighbor": int(propagate_neighbor),
        }
        if slice_index is not None:
            params["slice_index"] = int(slice_index)
        if propagate_neighbor_3d is not None:
            params["propagate_neighbor_3d"] = int(propagate_neighbor_3d)
        result = self._infer("/v1/fixpolygon", None, params, image, None, output)
        return FixPolygonResult(poly=result.params.get("poly"), result=result)

    # ---------------------------------------------------------------- sessions

    def create_session(self, image: ImageInput, expiry: int = 0) -> Session:
        """Upload a volume once (`PUT /session/`, part `image`, no params); `expiry` 0 = server default."""
        with image_file(image) as path:
            body = MultipartBody(files=[file_part("image", path)])
            response = self.transport.request(
                "PUT", "/session/", {"expiry": int(expiry)}, body=as_request(body), what="create session"
            )
        data = decode_json(response, "create session")
        if not isinstance(data, dict) or not data.get("session_id"):
            raise ProtocolError(f"create session: no session_id in the answer: {response.body[:200]!r}")
        return Session(session_id=str(data["session_id"]), info=data)

    def get_session(self, session_id: str, update_ts: bool = False) -> dict[str, Any]:
        query = {"update_ts": True} if update_ts else None
        data = self._json("GET", f"/session/{quote(session_id, safe='')}", query, what=f"session {session_id}")
        return data if isinstance(data, dict) else {"info": data}

    def close_session(self, session_id: str) -> dict[str, Any]:
        response = self.transport.request("DELETE", f"/session/{quote(session_id, safe='')}",
                                          what=f"close session {session_id}")
        data = decode_json(response, "close session", allow_empty=True)
        return data if isinstance(data, dict) else {}

    # ---------------------------------------------------------------- admin

    def upload_model(
        self, name: str, source: PathLike | None = None, *, config: PathLike | dict[str, Any] | None = None,
        model_file: PathLike | None = None,
    ) -> dict[str, Any]:
        """Load a model: an MMAR folder (zipped on the fly), a .zip/.tar.gz MMAR, a config_aiaa.json (pipeline),
        or `config` + `model_file` (e.g. models/model.ts)."""
        with ExitStack() as stack:
            parts = stack.enter_context(_model_parts(source, config, model_file))
            body = MultipartBody(files=parts)
            response = self.transport.request("PUT", f"/admin/model/{quote(name, safe='')}", body=as_request(body),
                                              headers=self._admin_headers(), what=f"upload model {name!r}")
        data = decode_json(response, f"upload model {name!r}", allow_empty=True)
        return data if isinstance(data, dict) else {"result": data}

    def get_model_config(self, name: str) -> dict[str, Any]:
        data = self._json("GET", f"/admin/model/{quote(name, safe='')}", headers=self._admin_headers(),
                          what=f"model config {name!r}")
        if not isinstance(data, dict):
            raise ProtocolError(f"model config {name!r}: expected a JSON object, got {type_name(data)}")
        return data

    def delete_model(self, name: str) -> dict[str, Any]:
        response = self.transport.request("DELETE", f"/admin/model/{quote(name, safe='')}",
                                          headers=self._admin_headers(), what=f"delete model {name!r}")
        data = decode_json(response, f"delete model {name!r}", allow_empty=True)
        return data if isinstance(data, dict) else {"result": data}

    # ---------------------------------------------------------------- misc

    def logs(self, lines: int = 100) -> str:
        response = self.transport.request("GET", "/logs/", {"lines": int(lines)}, what="logs")
        return response.body.decode("utf-8", errors="replace")

    # ---------------------------------------------------------------- plumbing

    def _admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"} if self.admin_token else {}

    def _json(self, method: str, path: str, query: dict[str, object] | None = None,
              headers: dict[str, str] | None = None, what: str = "") -> Any:
        response = self.transport.request(method, path, query, headers=headers, what=what or path)
        return decode_json(response, what or path)

    @contextmanager
    def _upload_body(self, params: dict[str, Any], image: ImageInput | None) -> Iterator[RequestBody]:
        body = MultipartBody(fields=[("params", json.dumps(params))])
        if image is None:
            yield as_request(body)
            return
        with image_file(image) as path:
            body.files.append(file_part("datapoint", path))
            yield as_request(body)

    def _infer(
        self, path: str, model: str | None, params: dict[str, Any], image: ImageInput | None,
        session_id: str | None, output: PathLike | None,
    ) -> InferenceResult:
        if image is None and session_id is None:
            raise ValueError(f"{path}: give an image or a session_id")
        what = f"{path.rsplit('/', 1)[-1]}" + (f" with model {model!r}" if model else "")
        # With a session the body is params only (the server uses the stored image), like the PY client.
        upload = None if session_id is not None else image
        with self._upload_body(params, upload) as body:
            response = self.transport.request(
                "POST", path, {"model": model, "session_id": session_id}, body=body, what=what
            )
        result = result_from_response(response, what)
        if output is not None and result.image_bytes is not None:
            result.path = write_result(Path(output), result.image_bytes)
        return result


# -------------------------------------------------------------------- helpers


def type_name(value: object) -> str:
    return type(value).__name__


def point_list(point: PointLike) -> list[int]:
    values = [round(float(v)) for v in point]
    if len(values) != 3:
        raise ValueError(f"a point is [x, y, z], got {list(point)}")
    return values


def points_list(points: Sequence[PointLike]) -> list[list[int]]:
    return [point_list(p) for p in points]


def file_part(name: str, path: Path) -> FilePart:
    content_type = "image/png" if path.name.lower().endswith(".png") else "application/octet-stream"
    return FilePart(name=name, filename=path.name, path=path, content_type=content_type)


def as_request(body: MultipartBody) -> RequestBody:
    return RequestBody(content_type=body.content_type, length=len(body), chunks=body.chunks())


def decode_json(response: HTTPResponse, what: str, allow_empty: bool = False) -> Any:
    if allow_empty and not response.body.strip():
        return None
    try:
        return json.loads(response.body.decode("utf-8"))
    except ValueError as exc:
        raise ProtocolError(f"{what}: the answer is not JSON: {response.body[:200]!r}", response.status,
                            response.body) from exc


def result_from_response(response: HTTPResponse, what: str) -> InferenceResult:
    """Multipart (params + image), JSON only (image-less results), or a bare file (`output=image`)."""
    content_type = response.content_type.lower()
    if content_type.startswith("multipart/"):
        try:
            parsed = split_result(parse_multipart(response.content_type, response.body))
        except ValueError as exc:
            raise ProtocolError(f"{what}: unreadable multipart answer: {exc}", response.status,
                                response.body) from exc
        return InferenceResult(params=parsed.params, image_bytes=parsed.image, filename=parsed.filename)
    if content_type.startswith("application/json"):
        data = decode_json(response, what)
        return InferenceResult(params=data if isinstance(data, dict) else {"result": data})
    filename = _disposition_filename(response.headers.get("content-disposition", "")) or "result"
    return InferenceResult(params={}, image_bytes=response.body, filename=filename)


def _disposition_filename(header: str) -> str | None:
    from email.message import Message

    if not header:
        return None
    message = Message()
    message["content-disposition"] = header
    return message.get_filename()


def _points_in_full_image(returned: Any, plan: crop.CropPlan) -> Any:
    """The server answers `points` in the voxels of the crop it was sent; map them to the caller's image."""
    if not isinstance(returned, list) or not all(isinstance(p, list) and len(p) == 3 for p in returned):
        return returned
    return crop.unscale_points(returned, plan)


def check_output_path(path: Path) -> None:
    """Refuse an output path whose folder does not exist (never create folders the user did not ask for)."""
    if not path.parent.is_dir():
        raise FileNotFoundError(f"output folder does not exist: {path.parent}")


def write_result(path: Path, data: bytes) -> Path:
    """Write a result file; gzip or gunzip to match a `.gz` / plain output name."""
    gzipped = data[:2] == b"\x1f\x8b"
    if path.name.endswith(".gz") and not gzipped:
        data = gzip.compress(data, compresslevel=6)
    elif path.suffix in (".nii", ".nrrd") and gzipped:
        data = gzip.decompress(data)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@contextmanager
def _model_parts(
    source: PathLike | None, config: PathLike | dict[str, Any] | None, model_file: PathLike | None
) -> Iterator[list[FilePart]]:
    parts: list[FilePart] = []
    if config is not None:
        data = json.dumps(config).encode() if isinstance(config, dict) else Path(config).read_bytes()
        parts.append(FilePart(name="config", filename="config_aiaa.json", data=data,
                              content_type="application/json"))
    if model_file is not None:
        model_path = Path(model_file)
        parts.append(FilePart(name="data", filename=model_path.name, path=model_path))
    if source is None:
        if not parts:
            raise ValueError("upload_model: give an MMAR folder or archive, a config, or config + model file")
        yield parts
        return
    if parts:
        raise ValueError("upload_model: give either an MMAR folder/archive or config/model_file, not both")
    source_path = Path(source)
    if source_path.is_dir():
        with tempfile.TemporaryDirectory(prefix="aiaa-mmar-") as folder:
            archive = zip_mmar(source_path, Path(folder) / f"{source_path.name or 'mmar'}.zip")
            yield [FilePart(name="data", filename=archive.name, path=archive, content_type="application/zip")]
        return
    if not source_path.is_file():
        raise FileNotFoundError(f"no such model file or folder: {source_path}")
    lower = source_path.name.lower()
    if lower.endswith(".json"):
        yield [FilePart(name="config", filename="config_aiaa.json", path=source_path,
                        content_type="application/json")]
    elif lower.endswith(ARCHIVE_SUFFIXES):
        content_type = "application/zip" if lower.endswith(".zip") else "application/gzip"
        yield [FilePart(name="data", filename=source_path.name, path=source_path, content_type=content_type)]
    else:
        raise ValueError(f"upload_model: {source_path.name} is not an MMAR folder, archive "
                         f"({', '.join(ARCHIVE_SUFFIXES)}) or config .json")


def zip_mmar(folder: Path, target: Path) -> Path:
    """Zip an MMAR with `config/` and `models/` at the archive root (what the server expects)."""
    if not (folder / "config" / "config_aiaa.json").is_file():
        raise ValueError(f"{folder} is not an MMAR: config/config_aiaa.json is missing")
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                archive.write(path, path.relative_to(folder).as_posix())
    return target

"""MONAI Label's datastore API (`/datastore/...`) as its 0.8 clients call it: upload images, save labels (every
save keeps the previous label as a version), list, download, check, delete (admin access)."""

from __future__ import annotations

import enum
import json
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import FileResponse

from aiaa_server.api.deps import AdminDep, ServicesDep
from aiaa_server.api.forms import read_body
from aiaa_server.api.openapi import BINARY, errors, multipart_request
from aiaa_server.api.responses import content_disposition
from aiaa_server.datastore import DatastoreJson, DatastoreStats, TrainItem
from aiaa_server.errors import InvalidParams, NotFound

router = APIRouter(prefix="/datastore", tags=["datastore (MONAI Label)"])

IMAGE_UPLOAD_DOC = multipart_request({
    "file": {**BINARY, "description": "NIfTI/NRRD volume, or a zip of one DICOM series (stored as .nii.gz)"},
    "params": {"type": "string", "description": "JSON object kept as the image's info (client_id: who added it)"},
})
LABEL_UPLOAD_DOC = multipart_request({
    "label": {**BINARY, "description": "label volume on the image's grid, or OHIF's label.bin (one uint8 per voxel)"},
    "params": {"type": "string", "description": "JSON object kept as the label's info (client_id, label_info…)"},
})
INFO_UPDATE_DOC = multipart_request({"info": {"type": "string", "description": "JSON object merged into the info"}})

ImageId = Annotated[str, Query(description="image id, or the SeriesInstanceUID of a DICOM image", max_length=256)]
Tag = Annotated[str, Query(description="label tag: final (annotator), original (model) or a custom one",
                           max_length=64)]


class DatastoreOutput(str, enum.Enum):
    stats = "stats"
    all = "all"
    train = "train"


@router.get("/", summary="Datastore totals (stats), every entry (all) or the training list (train)",
            response_model=DatastoreStats | DatastoreJson | list[TrainItem], responses=errors(422))
async def datastore(services: ServicesDep, output: DatastoreOutput = DatastoreOutput.stats) -> Any:
    if output is DatastoreOutput.all:
        return await services.datastore.everything()
    if output is DatastoreOutput.train:
        return await services.datastore.datalist()
    return await services.datastore.stats()


@router.put("/image", summary="Upload an image", openapi_extra=IMAGE_UPLOAD_DOC,
            responses=errors(400, 409, 413, 422))
@router.put("/", include_in_schema=False)
async def add_image(request: Request, services: ServicesDep,
                    image: Annotated[str | None, Query(max_length=256)] = None) -> dict[str, str]:
    async with read_body(request, services.settings.tmp_dir, max_bytes=services.settings.max_request_bytes) as body:
        upload = body.file_named("file")
        info = await services.datastore.add_image(image or None, [upload] if upload else body.files, body.params)
    return {"image": info.id}


@router.delete("/image", summary="Delete an image with its labels and history (admin)", responses=errors(401, 403, 404))
@router.delete("/", include_in_schema=False)
async def remove_image(services: ServicesDep, _admin: AdminDep,
                       id: Annotated[str, Query(max_length=256)]) -> dict[str, Any]:
    await services.datastore.remove_image(id)
    return {}


@router.head("/image", summary="Whether an image exists (and has `check_sum`)", responses=errors(404))
async def check_image(services: ServicesDep, image: ImageId,
                      check_sum: Annotated[str | None, Query(max_length=200)] = None) -> Response:
    if not await services.datastore.image_matches(image, check_sum):
        raise NotFound(f"image {image!r} does not have checksum {check_sum!r}", image=image)
    return Response(status_code=200)


@router.get("/image", summary="Download an image", response_class=FileResponse, responses=errors(404))
async def download_image(services: ServicesDep, image: ImageId) -> FileResponse:
    found = await services.datastore.image_info(image)
    return _file(Path(found.path))


@router.get("/image/info", summary="An image's info", responses=errors(404))
async def image_info(services: ServicesDep, image: ImageId) -> dict[str, Any]:
    found = await services.datastore.image_info(image)
    return {"id": found.id, **found.monai_info(), "labels": found.labels}


@router.put("/image/info", summary="Merge into an image's info", openapi_extra=INFO_UPDATE_DOC,
            responses=errors(400, 404, 413))
async def update_image_info(request: Request, services: ServicesDep, image: ImageId) -> dict[str, Any]:
    async with read_body(request, services.settings.tmp_dir, max_bytes=services.settings.max_request_bytes) as body:
        info = _json_object(body.fields.get("info", "{}"), "info")
    updated = await services.datastore.update_image_info(image, info)
    return {"id": updated.id, **updated.monai_info()}


@router.put("/label", summary="Save a label (the previous one is kept as a version)", openapi_extra=LABEL_UPLOAD_DOC,
            responses=errors(400, 404, 413, 422))
async def save_label(request: Request, services: ServicesDep, image: ImageId, tag: Tag = "final") -> dict[str, Any]:
    async with read_body(request, services.settings.tmp_dir, max_bytes=services.settings.max_request_bytes) as body:
        upload = body.file_named("label") or body.first_file
        saved = await services.datastore.save_label(image, tag or "final", upload, body.params)
    return {"image": saved.image, "label": saved.image, "tag": saved.tag, "versions": len(saved.versions)}


@router.delete("/label", summary="Delete a label (it is kept as a version) (admin)", responses=errors(401, 403, 404))
async def remove_label(services: ServicesDep, _admin: AdminDep, id: Annotated[str, Query(max_length=256)],
                       tag: Tag) -> dict[str, Any]:
    await services.datastore.remove_label(id, tag)
    return {}


@router.head("/label", summary="Whether an image has a label with this tag", responses=errors(404))
async def check_label(services: ServicesDep, image: ImageId, tag: Tag) -> Response:
    await services.datastore.label_info(image, tag)
    return Response(status_code=200)


@router.get("/label", summary="Download a label", response_class=FileResponse, responses=errors(404))
async def download_label(services: ServicesDep, label: ImageId, tag: Tag) -> FileResponse:
    found = await services.datastore.label_info(label, tag)
    return _file(Path(found.path))


@router.get("/label/info", summary="A label's info and its kept versions", responses=errors(404))
async def label_info(services: ServicesDep, label: ImageId, tag: Tag) -> dict[str, Any]:
    found = await services.datastore.label_info(label, tag)
    return {**found.monai_info(), "versions": [version.model_dump() for version in found.versions]}


def _file(path: Path) -> FileResponse:
    return FileResponse(path, media_type="application/octet-stream",
                        headers={"Content-Disposition": content_disposition("attachment", path.name)})


def _json_object(raw: str, name: str) -> dict[str, Any]:
    try:
        value = json.loads(raw or "{}")
    except ValueError as exc:
        raise InvalidParams(f"{name} is not JSON: {exc}", key=name) from None
    if not isinstance(value, dict):
        raise InvalidParams(f"{name} must be a JSON object", key=name)
    return value


__all__ = ["router"]

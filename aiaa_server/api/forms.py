"""Reading request bodies the way AIAA clients send them.

The image may come under any file part name (`datapoint`, `image`, `file`, `image0`…), `params` may be a
text field, a file part, or missing, and some clients send a JSON body instead of multipart.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator

from starlette.datastructures import UploadFile
from starlette.requests import Request

from aiaa_server.errors import BadRequest
from aiaa_server.inference.params import normalise_params, parse_params
from aiaa_server.inference.service import ImageUpload

MAX_FORM_FILES = 10000  # a DICOM series arrives as one part per slice


@dataclass
class ParsedBody:
    params: dict[str, object] = field(default_factory=dict)
    files: list[ImageUpload] = field(default_factory=list)
    fields: dict[str, str] = field(default_factory=dict)

    @property
    def first_file(self) -> ImageUpload | None:
        return self.files[0] if self.files else None


def _copy_upload(upload: UploadFile, folder: Path, index: int) -> Path:
    target = folder / f"part{index:05d}"
    upload.file.seek(0)
    with open(target, "wb") as out:
        shutil.copyfileobj(upload.file, out, length=4 * 2**20)
    return target


@asynccontextmanager
async def read_body(request: Request, tmp_root: Path) -> AsyncIterator[ParsedBody]:
    """Parse the body; uploaded files live in a private temp folder removed when the block exits."""
    tmp_root.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="req-", dir=tmp_root))
    try:
        yield await _parse(request, folder)
    finally:
        await asyncio.to_thread(shutil.rmtree, folder, True)


async def _parse(request: Request, folder: Path) -> ParsedBody:
    content_type = request.headers.get("content-type", "").lower()
    body = ParsedBody()
    if content_type.startswith("multipart/form-data") or content_type.startswith("application/x-www-form-urlencoded"):
        try:
            form = await request.form(max_files=MAX_FORM_FILES, max_fields=1000)
        except Exception as exc:  # malformed multipart / bad boundary
            raise BadRequest(f"could not parse the multipart body: {getattr(exc, 'detail', exc)}") from exc
        raw_params: str | bytes | None = None
        try:
            for name, value in form.multi_items():
                if isinstance(value, UploadFile) and name == "params" and not _looks_like_image(value.filename):
                    raw_params = await value.read()
                elif isinstance(value, UploadFile):
                    path = await asyncio.to_thread(_copy_upload, value, folder, len(body.files))
                    body.files.append(ImageUpload(path=path, filename=value.filename or name))
                elif name == "params":
                    raw_params = value
                else:
                    body.fields[name] = value
        finally:
            await form.close()
        body.params = parse_params(raw_params)
    elif content_type.startswith("application/json"):
        raw = await request.body()
        body.params = parse_params(raw) if raw.strip() else {}
    else:
        raw = await request.body()
        if raw.strip():
            raise BadRequest(
                f"unsupported content type {content_type or '(none)'!r}: send multipart/form-data with a "
                "`params` field and the image as a file part"
            )
    body.params = normalise_params(body.params)
    return body


def _looks_like_image(filename: str | None) -> bool:
    return bool(filename) and not filename.lower().endswith((".json", ".txt"))

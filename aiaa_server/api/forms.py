"""Reading request bodies the way AIAA clients send them.

The image may come under any file part name (`datapoint`, `image`, `file`, `image0`…), `params` may be a
text field, a file part, or missing, and some clients send a JSON or urlencoded body instead of multipart.

Every body is streamed with a byte limit: a multipart body may be `max_bytes` long (`--max_request_mb`), a
JSON or urlencoded one MAX_FIELD_BYTES; a larger Content-Length is refused (413) before anything is read.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl

from starlette.requests import Request

from aiaa_server.api.multipart import (
    MAX_FIELD_BYTES,
    MAX_FIELDS,
    MultipartForm,
    MultipartLimits,
    body_too_large,
    limited_body,
    read_multipart,
)
from aiaa_server.errors import BadRequest
from aiaa_server.inference.params import parse_params
from aiaa_server.services.inference import ImageUpload

MAX_FORM_FIELDS = MAX_FIELDS  # of a urlencoded body
DEFAULT_MAX_REQUEST_BYTES = 4096 * 2**20  # the default of --max_request_mb


@dataclass
class ParsedBody:
    params: dict[str, object] = field(default_factory=dict)
    files: list[ImageUpload] = field(default_factory=list)
    fields: dict[str, str] = field(default_factory=dict)
    part_names: list[str] = field(default_factory=list)  # the multipart name of each of `files`

    @property
    def first_file(self) -> ImageUpload | None:
        return self.files[0] if self.files else None

    def file_named(self, name: str) -> ImageUpload | None:
        """The last file part sent under `name` (MONAI Label's `file`, `label`), or None."""
        found = [upload for upload, part in zip(self.files, self.part_names, strict=True) if part == name]
        return found[-1] if found else None


@asynccontextmanager
async def read_body(
    request: Request, tmp_root: Path, *, max_bytes: int = DEFAULT_MAX_REQUEST_BYTES
) -> AsyncIterator[ParsedBody]:
    """Parse the body (a multipart one at most `max_bytes` long); uploaded files live in a private temp folder
    removed when the block exits."""
    tmp_root.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="req-", dir=tmp_root))
    try:
        yield await _parse(request, folder, max_bytes)
    finally:
        await asyncio.to_thread(shutil.rmtree, folder, True)


async def _parse(request: Request, folder: Path, max_bytes: int) -> ParsedBody:
    content_type = request.headers.get("content-type", "")
    lowered = content_type.lower()
    body = ParsedBody()
    if lowered.startswith("multipart/form-data"):
        body = _form_body(await read_multipart(request, folder, upload_limits(max_bytes)))
    elif lowered.startswith("application/x-www-form-urlencoded"):
        fields = _urlencoded_fields(await _read_text_body(request, max_bytes, "a urlencoded body"))
        raw_params = fields.pop("params", None)
        body.fields = fields
        body.params = parse_params(raw_params)
    elif lowered.startswith("application/json"):
        raw = await _read_text_body(request, max_bytes, "a JSON body")
        body.params = parse_params(raw) if raw.strip() else {}
    else:
        await _refuse_other_body(request, max_bytes, content_type)
    return body


def upload_limits(max_bytes: int) -> MultipartLimits:
    """Inference and session uploads: the image under any part name, `params` as text or a .json/.txt file."""
    return MultipartLimits(max_body_bytes=max_bytes, too_large=body_too_large("the request body", "--max_request_mb"),
                           text_fields=("params",))


def _form_body(form: MultipartForm) -> ParsedBody:
    """`params` sent as a file part is parsed from its bytes; when sent twice (as any field), the last wins."""
    files = [ImageUpload(path=part.path, filename=part.filename or part.name) for part in form.files]
    fields = {text.name: text.text for text in form.texts if text.name != "params"}
    params = [text.raw if text.filename is not None else text.text for text in form.texts if text.name == "params"]
    return ParsedBody(params=parse_params(params[-1] if params else None), files=files, fields=fields,
                      part_names=[part.name for part in form.files])


async def _refuse_other_body(request: Request, max_bytes: int, content_type: str) -> None:
    async for chunk in _text_chunks(request, max_bytes, "the request body"):
        if chunk.strip():
            raise BadRequest(
                f"unsupported content type {content_type or '(none)'!r}: send multipart/form-data with a "
                "`params` field and the image as a file part"
            )


def _text_chunks(request: Request, max_bytes: int, what: str) -> AsyncIterator[bytes]:
    return limited_body(request, min(max_bytes, MAX_FIELD_BYTES), body_too_large(what))


async def _read_text_body(request: Request, max_bytes: int, what: str) -> bytes:
    return b"".join([chunk async for chunk in _text_chunks(request, max_bytes, what)])


def _urlencoded_fields(raw: bytes) -> dict[str, str]:
    try:
        pairs = parse_qsl(raw.decode("utf-8", errors="replace"), keep_blank_values=True,
                          max_num_fields=MAX_FORM_FIELDS, errors="replace")
    except ValueError as exc:  # more than MAX_FORM_FIELDS fields
        raise BadRequest(f"could not parse the form body: {exc}") from exc
    return dict(pairs)

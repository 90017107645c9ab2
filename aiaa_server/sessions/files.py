"""Session folders in the workspace (`<root>/<id>/`: the image and `meta.json`).

Storing an upload into a new session's folder, finding the sessions a previous run left on disk (restart),
and finding the folders no session owns any more (a workspace shared by replicas). `aiaa_server.sessions`
decides what to do with them.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from aiaa_server.errors import InvalidImage, InvalidParams
from aiaa_server.imaging.dicom_volume import dicom_series_to_file
from aiaa_server.imaging.formats import ImageFormat, client_basename, detect_format
from aiaa_server.imaging.io import Volume, read_image
from aiaa_server.imaging.limits import DecodeLimits
from aiaa_server.sessions.backends import META_FILE, is_session_id, short_id
from aiaa_server.sessions.models import SessionInfo

log = logging.getLogger(__name__)

PARTIAL_SUFFIX = ".partial"
PARTIAL_GRACE_S = 3600.0  # a replica may still be writing a younger `.partial` folder in a shared workspace
SAVE_AS_FORMATS = {fmt.value: fmt for fmt in (ImageFormat.NIFTI, ImageFormat.NIFTI_GZ, ImageFormat.NRRD)}


class SessionUpload(Protocol):
    """One uploaded file part (`api.forms` gives `ImageUpload`s)."""

    path: Path
    filename: str


@dataclass(frozen=True)
class StoredImage:
    """A session's image as stored: the client's name for it, its file name in the folder, the decoded volume,
    how it was uploaded (`"nifti_gz"`, `"dicom series (N slices)"`, ...) and the stored file's format."""

    name: str
    image: str
    volume: Volume
    source: str
    format: ImageFormat
    dicom_ids: dict[str, str] = field(default_factory=dict)  # SeriesInstanceUID… of a DICOM upload


DICOM_HEADERS = "dicom_headers.json"  # a DICOM series' headers, for DICOM SEG results


def save_format(save_as: str | None) -> ImageFormat:
    """The format a DICOM series is stored in: `save_as` (`.nii`, `nii.gz`, `.nrrd`), NIfTI-gz by default."""
    if save_as is None or not save_as.strip():
        return ImageFormat.NIFTI_GZ
    wanted = save_as.strip().lower()
    wanted = wanted if wanted.startswith(".") else "." + wanted
    if wanted not in SAVE_AS_FORMATS:
        raise InvalidParams(f"unsupported save_as {save_as!r}; use one of {', '.join(SAVE_AS_FORMATS)}")
    return SAVE_AS_FORMATS[wanted]


def store_image(uploads: Sequence[SessionUpload], folder: Path, save_fmt: ImageFormat, limits: DecodeLimits,
                gzip_level: int) -> StoredImage:
    """Put the uploaded image into `folder`: one volume (NIfTI/NRRD) or one PNG (a 2D image, for 2D models)
    is moved there after it decoded (within `limits`), a DICOM series (several files or a zip) is converted to
    one `save_fmt` file.

    Raises:
        InvalidImage: anything else, or an image that does not decode (refused now, not at the first click).
    """
    formats = [detect_format(u.path, u.filename) for u in uploads]
    if len(uploads) == 1 and (formats[0].is_volume_format or formats[0] is ImageFormat.PNG):
        upload, fmt = uploads[0], formats[0]
        volume = read_image(upload.path, upload.filename, limits=limits, allow_png=True)
        image_name = "image" + fmt.value
        shutil.move(str(upload.path), folder / image_name)
        return StoredImage(client_basename(upload.filename) or image_name, image_name, volume, fmt.name.lower(), fmt)
    if all(f in (ImageFormat.DICOM, ImageFormat.ZIP) for f in formats):
        image_name = "image" + save_fmt.value
        volume, slices, ids = dicom_series_to_file([u.path for u in uploads], folder / "dicom-unpacked",
                                                   folder / image_name, save_fmt, gzip_level, limits,
                                                   headers_path=folder / DICOM_HEADERS)
        return StoredImage("dicom_series", image_name, volume, f"dicom series ({slices} slices)", save_fmt, ids)
    if len(uploads) == 1:
        raise InvalidImage(f"an image is one NIfTI, NRRD or PNG file, or a DICOM series; got a {formats[0].value} file")
    raise InvalidImage(
        "several files were uploaded but they are not all DICOM: send one NIfTI/NRRD volume, or the DICOM "
        f"files of one series (got {', '.join(sorted({f.value for f in formats}))})"
    )


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def saved_sessions(root: Path, now: float) -> list[SessionInfo]:
    """The sessions a previous run left under `root` that are still alive at `now`; the folders of half-written,
    unreadable, expired or old-style-id sessions are removed."""
    alive: list[SessionInfo] = []
    for folder in sorted(root.iterdir()):
        if not folder.is_dir():
            continue
        info = _saved_session(folder, now)
        if info is None:
            shutil.rmtree(folder, ignore_errors=True)
        else:
            alive.append(info)
    return alive


def _saved_session(folder: Path, now: float) -> SessionInfo | None:
    if folder.name.endswith(PARTIAL_SUFFIX):
        return None
    try:
        info = SessionInfo.model_validate_json((folder / META_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log.warning("dropping unreadable session folder %s: %s", short_id(folder.name), exc)
        return None
    if (info.session_id != folder.name or not is_session_id(folder.name) or info.expires_at() < now
            or not (folder / info.image).is_file()):
        return None
    return info


def orphan_folders(root: Path, alive: set[str], now: float, load: Callable[[str], str | None]) -> list[str]:
    """Session folders (shared workspace) whose session the backend (`load`) no longer holds; `.partial`
    folders older than PARTIAL_GRACE_S are removed here."""
    orphans: list[str] = []
    for folder in root.iterdir():
        if not folder.is_dir():
            continue
        if folder.name.endswith(PARTIAL_SUFFIX):
            if _age(folder, now) > PARTIAL_GRACE_S:
                shutil.rmtree(folder, ignore_errors=True)
            continue
        # Re-check: a replica may have created this session after `alive` was listed.
        if folder.name not in alive and load(folder.name) is None:
            orphans.append(folder.name)
    return orphans


def _age(folder: Path, now: float) -> float:
    try:
        return now - folder.stat().st_mtime
    except OSError:
        return 0.0

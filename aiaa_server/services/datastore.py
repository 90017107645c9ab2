"""The datastore service: uploads checked and converted before they reach the datastore, images found by id or by
DICOM SeriesInstanceUID, OHIF's raw `.bin` labels placed on their image's grid, all off the event loop."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from aiaa_server.datastore import DatastoreJson, DatastoreStats, ImageInfo, LabelInfo, LocalDatastore, TrainItem
from aiaa_server.datastore.dicomweb import DicomWebDatastore
from aiaa_server.datastore.ids import split_name
from aiaa_server.errors import (
    AIAAError,
    BadRequest,
    Conflict,
    IncompatibleInput,
    InvalidImage,
    InvalidParams,
    NotFound,
    NotImplementedOnServer,
)
from aiaa_server.imaging.formats import ImageFormat, client_basename, detect_format
from aiaa_server.imaging.io import Volume, encode_volume, read_volume
from aiaa_server.imaging.limits import DecodeLimits
from aiaa_server.services.dicom_seg import label_names_from, seg_bytes, seg_to_label_file
from aiaa_server.services.inference import ImageUpload
from aiaa_server.sessions.files import DICOM_HEADERS, store_image

log = logging.getLogger(__name__)

SERIES_UID_KEY = "SeriesInstanceUID"
RAW_LABEL_SUFFIX = ".bin"  # OHIF's labelmap: one uint8 per voxel, x fastest (MONAI Label's binary_to_image)
HASH_CHUNK = 1 << 20
CHECKSUM_ALGORITHMS = frozenset({"sha256", "sha1", "md5", "sha224", "sha384", "sha512"})  # fixed-length digests


class ImageFile(NamedTuple):
    """An image file of the datastore and a stamp of its content (size, mtime, inode): a replaced image's differs."""

    id: str
    path: Path
    stamp: tuple[int, int, int]


class DatastoreService:
    """What the HTTP API asks of the datastore; every method that touches files runs in a worker thread.

    Args:
        datastore: the folder of images and labels.
        tmp_dir: where uploads are converted (a private folder per call, removed afterwards).
        limits: decode bounds for every uploaded image and label.
        gzip_level: gzip level of converted files (DICOM series, raw labels) written as `.nii.gz`.
    """

    def __init__(self, datastore: LocalDatastore, tmp_dir: Path, limits: DecodeLimits, gzip_level: int = 1) -> None:
        self.datastore = datastore
        self.tmp_dir = tmp_dir
        self.limits = limits
        self.gzip_level = gzip_level

    # ---- views ------------------------------------------------------------------------------------------------

    async def stats(self) -> DatastoreStats:
        return await asyncio.to_thread(self.datastore.stats)

    async def datalist(self) -> list[TrainItem]:
        return await asyncio.to_thread(self.datastore.datalist)

    async def labelled(self) -> list[tuple[str, Path, Path]]:
        """(id, image file, `final` label file) of every image with a final label, sorted by id."""
        def collect() -> list[tuple[str, Path, Path]]:
            store = self.datastore
            return [(image_id, store.get_image_path(image_id), store.get_label_path(image_id, "final"))
                    for image_id in store.stats().train]

        return await asyncio.to_thread(collect)

    async def unlabelled(self) -> list[ImageFile]:
        """Every image without a `final` label that is on this machine, sorted by id (one removed meanwhile is
        left out; a DICOMweb series not fetched yet too: scoring never downloads a PACS)."""
        def collect() -> list[ImageFile]:
            store = self.datastore
            found = []
            for image_id in store.stats().ready:
                try:
                    path = store.local_image_path(image_id)
                    stat = path.stat() if path is not None else None
                except OSError:
                    continue
                if path is None or stat is None:
                    continue
                found.append(ImageFile(image_id, path, (stat.st_size, stat.st_mtime_ns, stat.st_ino)))
            return found

        return await asyncio.to_thread(collect)

    async def everything(self) -> DatastoreJson:
        return await asyncio.to_thread(self.datastore.json)

    # ---- images -----------------------------------------------------------------------------------------------

    async def add_image(self, image_id: str | None, uploads: Sequence[ImageUpload], params: dict[str, Any]) -> ImageInfo:
        """Store an uploaded image (one NIfTI/NRRD volume, or the DICOM files or zip of one series, stored as
        `.nii.gz`); it must decode. The same id again with the same content is a no-op; with other content it
        replaces the image unless the image already has a `final` label (Conflict: the label would no longer fit).

        Raises:
            BadRequest: (400) no file, an unsafe id. InvalidImage: (400) not a decodable image.
            Conflict: (409) see above, or the datastore is full. PayloadTooLarge: (413) over a limit.
        """
        if isinstance(self.datastore, DicomWebDatastore):
            self.datastore.add_image(image_id, Path())  # 501 before any upload is decoded: images live on the PACS
        if not uploads:
            raise BadRequest("no image uploaded: send the image as the multipart file part `file`")
        return await asyncio.to_thread(self._add_image, image_id, list(uploads), params)

    def _add_image(self, image_id: str | None, uploads: list[ImageUpload], params: dict[str, Any]) -> ImageInfo:
        with tempfile.TemporaryDirectory(prefix="req-datastore-", dir=self.tmp_dir) as folder:
            stored = store_image(uploads, Path(folder), ImageFormat.NIFTI_GZ, self.limits, self.gzip_level)
            path = Path(folder) / stored.image
            image_id = image_id or self._own_id(uploads, stored.dicom_ids.get(SERIES_UID_KEY, ""))
            info = {**{k: v for k, v in params.items() if k != "client_id"}, **stored.dicom_ids}
            existing = self._existing(image_id)
            if existing is not None and existing.checksum == _sha256(path):
                return existing
            if existing is not None and "final" in existing.labels:
                raise Conflict(f"image {image_id!r} already exists with a final label and different content: "
                               "delete it first (DELETE /datastore/image?id=...) or upload under another id",
                               image=image_id)
            client_id = params.get("client_id") if isinstance(params.get("client_id"), str) else None
            headers = Path(folder) / DICOM_HEADERS
            return self.datastore.add_image(image_id, path, ext=path.name[len("image"):], client_id=client_id,
                                            info=info, replace=True,
                                            dicom_headers=headers if headers.is_file() else None)

    def _own_id(self, uploads: list[ImageUpload], series_uid: str) -> str:
        """MONAI Label's default id: the uploaded file's name without its extension (a DICOM series: its UID)."""
        if series_uid:
            return series_uid
        parts = split_name(client_basename(uploads[0].filename), self.datastore.extensions)
        if parts is None:
            raise BadRequest("name the image: add ?image=ID to the URL", parameter="image")
        return parts[0]

    def _existing(self, image_id: str) -> ImageInfo | None:
        try:
            return self.datastore.get_image_info(image_id)
        except NotFound:
            return None

    async def image_info(self, image: str) -> ImageInfo:
        """The image with id `image`, or whose DICOM SeriesInstanceUID is `image` (OHIF sends that).

        Raises:
            BadRequest: (400) an unsafe id. NotFound: (404) neither.
        """
        return await asyncio.to_thread(self.find_image, image)

    def find_image(self, image: str) -> ImageInfo:
        try:
            return self.datastore.get_image_info(image)
        except (NotFound, BadRequest) as missing:
            candidates = [] if self.datastore.ids_are_series_uids else self.datastore.list_images()
            for image_id in candidates:
                info = self.datastore.get_image_info(image_id)
                if info.info.get(SERIES_UID_KEY) == image:
                    return info
            if isinstance(missing, BadRequest):
                raise
            raise NotFound(f"image {image!r} is not in the datastore (neither an id nor a SeriesInstanceUID)",
                           image=image) from missing

    async def image_matches(self, image: str, check_sum: str | None) -> bool:
        """MONAI Label's `HEAD /datastore/image`: the image exists and, when `check_sum` ("[ALGO:]hex", SHA256
        by default) is given, its content has that digest."""
        return await asyncio.to_thread(self._image_matches, image, check_sum)

    def _image_matches(self, image: str, check_sum: str | None) -> bool:
        info = self.find_image(image)
        if not check_sum:
            return True
        algo, _, digest = check_sum.rpartition(":")
        algo = (algo or "SHA256").lower()
        if algo not in CHECKSUM_ALGORITHMS:
            raise BadRequest(f"unknown checksum algorithm {algo!r}: use SHA256:<hex>", parameter="check_sum")
        if algo == "sha256" and info.checksum:
            return info.checksum.split(":", 1)[1] == digest.lower()
        return _digest(Path(info.path), algo) == digest.lower()

    async def update_image_info(self, image: str, info: dict[str, Any]) -> ImageInfo:
        found = await self.image_info(image)
        return await asyncio.to_thread(self.datastore.update_image_info, found.id, info)

    async def remove_image(self, image: str) -> None:
        found = await self.image_info(image)
        await asyncio.to_thread(self.datastore.remove_image, found.id)

    # ---- labels -----------------------------------------------------------------------------------------------

    async def save_label(self, image: str, tag: str, upload: ImageUpload | None, params: dict[str, Any]) -> LabelInfo:
        """Store a label for `image` (id or SeriesInstanceUID): a volume on the image's grid, or OHIF's raw
        `.bin` labelmap (one uint8 per voxel), stored as `.nii.gz` with the image's geometry.

        Raises:
            BadRequest: (400) no label part. NotFound: (404) no such image.
            IncompatibleInput: (422) the label's grid or size does not match the image.
        """
        if upload is None:
            raise BadRequest("no label uploaded: send the label as the multipart file part `label`")
        found = await self.image_info(image)
        return await asyncio.to_thread(self._save_label, found, tag, upload, params)

    def _save_label(self, image: ImageInfo, tag: str, upload: ImageUpload, params: dict[str, Any]) -> LabelInfo:
        reference = read_volume(Path(image.path), image.name, limits=self.limits)
        client_id = params.get("client_id") if isinstance(params.get("client_id"), str) else None
        model = params.get("model") if isinstance(params.get("model"), str) else None
        with tempfile.TemporaryDirectory(prefix="req-label-", dir=self.tmp_dir) as folder:
            path = self._label_file(reference, upload, Path(folder))
            saved = self.datastore.save_label(image.id, path, tag, client_id=client_id, model=model,
                                              label_info=params)
            if tag == "final" and isinstance(self.datastore, DicomWebDatastore):
                self._store_seg(image.id, reference, path, params)
            return saved

    def _store_seg(self, image_id: str, reference: Volume, label: Path, params: dict[str, Any]) -> None:
        """Send a final label back to the PACS as a DICOM SEG (STOW-RS); it is already saved here."""
        assert isinstance(self.datastore, DicomWebDatastore)
        labels = read_volume(label, label.name, limits=self.limits).array
        if not np.any(labels):
            return  # nothing to segment: an empty SEG has no segment to carry
        try:
            seg = seg_bytes(labels, reference, self.datastore.dicom_headers_path(image_id), label_names_from(params),
                            self.limits)
            stored = self.datastore.store_dicom(seg)
        except AIAAError as exc:
            raise type(exc)(f"the label is saved here, but its DICOM SEG did not reach the PACS: {exc.message}",
                            **exc.details) from exc
        log.info("datastore: final label of %s stored on the PACS as SEG series %s", image_id,
                 ", ".join(stored.series_uids))

    async def pacs_series(self, request: Any) -> list[ImageUpload]:
        """The instance files of the series an AIAA client asks a session to pull (OHIF's `{"dicom": {...,
        "series_uid"}}`), from the DICOMweb datastore; its `server_address`, `server_port` and `ae_title` are
        not used: the server only fetches from the PACS it was configured with.

        Raises:
            NotImplementedOnServer: (501) the datastore is not a DICOMweb server. InvalidParams: (400) no
            `series_uid`. NotFound: (404) not a series of the PACS. UpstreamError: (502) the PACS failed.
        """
        store = self.datastore
        if not isinstance(store, DicomWebDatastore):
            raise NotImplementedOnServer("pulling a DICOM series needs a PACS: start the server with --datastore "
                                         "dicomweb+http(s)://host/dicom-web, or upload the DICOM files instead")
        series_uid = request.get("series_uid") if isinstance(request, dict) else None
        if not isinstance(series_uid, str) or not series_uid:
            raise InvalidParams('dicom.series_uid is missing: send {"dicom": {"series_uid": "1.2..."}}',
                                key="dicom.series_uid")
        files = await asyncio.to_thread(store.series_files, series_uid)
        return [ImageUpload(path=path, filename=path.name) for path in files]

    async def dicom_headers(self, image_id: str) -> Path | None:
        """The headers of the DICOM series an image was decoded from (None: it was not)."""
        return await asyncio.to_thread(self.datastore.dicom_headers_path, image_id)

    def _label_file(self, reference: Volume, upload: ImageUpload, folder: Path) -> Path:
        name = client_basename(upload.filename).lower()
        if name.endswith(RAW_LABEL_SUFFIX):
            return self._raw_label(reference, upload.path, folder)
        if detect_format(upload.path, upload.filename) is ImageFormat.DICOM:
            return seg_to_label_file(upload.path, reference, folder / "label.nii.gz", self.limits, self.gzip_level)
        label = read_volume(upload.path, upload.filename, limits=self.limits)
        if label.spatial_shape != reference.spatial_shape:
            raise IncompatibleInput(f"the label's shape {list(label.spatial_shape)} is not the image's "
                                    f"{list(reference.spatial_shape)}", shape=list(label.spatial_shape))
        parts = split_name(name, self.datastore.extensions)
        if parts is None:
            raise InvalidImage(f"unsupported label file {name!r}: use one of {', '.join(self.datastore.extensions)}")
        target = folder / f"label{parts[1]}"
        shutil.copyfile(upload.path, target)
        return target

    def _raw_label(self, reference: Volume, path: Path, folder: Path) -> Path:
        shape = reference.array.shape
        voxels = int(np.prod(shape))
        size = path.stat().st_size
        if size != voxels:
            raise IncompatibleInput(f"a .bin label holds one byte per voxel: the image has {voxels} voxels "
                                    f"{list(shape)}, the label {size} bytes", shape=list(shape))
        array = np.fromfile(path, dtype=np.uint8, count=voxels).reshape(shape, order="F")
        target = folder / "label.nii.gz"
        target.write_bytes(encode_volume(array, reference, ImageFormat.NIFTI_GZ, dtype=np.dtype(np.uint8), compress=True,
                                         gzip_level=self.gzip_level))
        return target

    async def label_info(self, image: str, tag: str) -> LabelInfo:
        found = await self.image_info(image)
        return await asyncio.to_thread(self.datastore.get_label_info, found.id, tag)

    async def remove_label(self, image: str, tag: str) -> None:
        found = await self.image_info(image)
        await asyncio.to_thread(self.datastore.remove_label, found.id, tag)

    # ---- active learning --------------------------------------------------------------------------------------

    async def next_sample(self, strategy: str, client_id: str | None, lock_seconds: float | None,
                          scores: Mapping[str, float] | None = None) -> ImageInfo | None:
        return await asyncio.to_thread(self.datastore.next_sample, strategy, client_id, lock_seconds=lock_seconds,
                                       scores=scores)


def _digest(path: Path, algo: str) -> str:
    digest = hashlib.new(algo)
    with path.open("rb") as file:
        while chunk := file.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _sha256(path: Path) -> str:
    return "SHA256:" + _digest(path, "sha256")

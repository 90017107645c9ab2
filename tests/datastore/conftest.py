"""Datastore fixtures: small NIfTI images and labels written with nibabel, a fake clock, an Orthanc with auth."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from aiaa_demo.datasets.dicom_export import volume_to_dicom_series
from aiaa_server.datastore import DatastoreLimits, LocalDatastore
from tests.support.orthanc import OrthancServer, missing_orthanc, start_orthanc


class FakeClock:
    """Seconds that move only when a test says so."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def write_nifti(path: Path, value: int = 1, shape: tuple[int, ...] = (4, 4, 3)) -> Path:
    """A small uint8 NIfTI volume filled with `value` (so versions differ by content)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.full(shape, value, dtype=np.uint8), np.eye(4)), str(path))
    return path


def voxel(path: Path) -> int:
    return int(np.asarray(nib.load(str(path)).dataobj).flat[0])


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def files(tmp_path: Path) -> Path:
    """A folder of upload-like source files outside the datastore."""
    folder = tmp_path / "uploads"
    folder.mkdir()
    return folder


@pytest.fixture
def store(tmp_path: Path, clock: FakeClock) -> LocalDatastore:
    ds = LocalDatastore(tmp_path / "ds", DatastoreLimits(max_versions=3), clock=clock)
    yield ds
    ds.close()


# ---- DICOMweb: a second real Orthanc with basic authentication, holding one small synthetic CT series ----


@dataclass(frozen=True)
class AuthPacs:
    """An Orthanc that wants `user`/`password` (basic auth), holding the series `series_uid`."""

    orthanc: OrthancServer
    user: str
    password: str
    series_uid: str


@pytest.fixture(scope="session")
def auth_pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthPacs]:
    """A real Orthanc with basic auth (a password with `@` and `:`, so URL credentials need quoting) and a
    6 x 5 x 3 synthetic CT series; needs no dataset cache."""
    reason = missing_orthanc()
    if reason is not None:
        pytest.skip(reason)
    user, password = "aiaa", "p@ss:w0rd"
    server = start_orthanc(tmp_path_factory.mktemp("orthanc-auth"), users={user: password})
    try:
        array = np.arange(6 * 5 * 3, dtype=np.int16).reshape(6, 5, 3) - 40
        series = volume_to_dicom_series(array, np.diag([0.8, 0.9, 2.5, 1.0]), tmp_path_factory.mktemp("auth-ct"))
        server.upload(series.paths)
        yield AuthPacs(server, user, password, series.series_uid)
    finally:
        server.stop()

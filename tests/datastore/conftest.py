"""Datastore fixtures: small NIfTI images and labels written with nibabel, a fake clock."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from aiaa_server.datastore import DatastoreLimits, LocalDatastore


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

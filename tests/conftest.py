"""Shared fixtures: test MMARs, volumes with known geometry, and one real server for the session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.mmars import SlowNet, segmentation_config, write_mmar, write_threshold_mmar
from tests.support.server import LiveServer, start_server
from tests.support.volumes import cube_volume, lps_affine, save_nifti


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

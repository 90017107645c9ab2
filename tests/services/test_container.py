"""The `Services` container: what `aiaa_server.services` exports and how `build` wires the services."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import aiaa_server.services as services_package
from aiaa_server.engines.factory import EngineFactory
from aiaa_server.logs import LogTail
from aiaa_server.services import GIL_SWITCH_INTERVAL, Services, factory_from_settings
from aiaa_server.settings import Settings


@pytest.fixture()
def process_tuning() -> Iterator[None]:
    """`Services.build` tunes the process; put it back for the tests that follow."""
    threads, interval = torch.get_num_threads(), sys.getswitchinterval()
    yield
    torch.set_num_threads(threads)
    sys.setswitchinterval(interval)


def test_package_exports() -> None:
    assert set(services_package.__all__) >= {"Services", "factory_from_settings", "GIL_SWITCH_INTERVAL"}
    assert isinstance(factory_from_settings(Settings(workspace=Path("unused"))), EngineFactory)


def test_build_wires_the_services(tmp_path: Path, process_tuning: None) -> None:
    settings = Settings(workspace=tmp_path / "ws", torch_threads=2, bundled_models=False)
    tail = LogTail(10)
    services = Services.build(settings, tail)
    try:
        assert services.system.registry is services.registry and services.system.log_tail is tail
        assert services.polygons.limits == settings.decode_limits
        assert services.model_admin.store.root == settings.workspace_models_dir
        assert settings.tmp_dir.is_dir()  # the workspace is prepared
        assert torch.get_num_threads() == 2
        assert sys.getswitchinterval() == pytest.approx(GIL_SWITCH_INTERVAL)
    finally:
        services.close()


def test_build_wires_the_uncertainty_scorer(tmp_path: Path, process_tuning: None) -> None:
    settings = Settings(workspace=tmp_path / "ws", bundled_models=False, uncertainty_model="m",
                        uncertainty_interval=5)
    services = Services.build(settings, LogTail(10))
    try:
        scorer = services.uncertainty
        assert scorer.registry is services.registry and scorer.pool is services.pool
        assert scorer.datastore is services.datastore and services.monai_label.uncertainty is scorer
        assert (scorer.model_name, scorer.interval_s, scorer.limits) == ("m", 5, settings.decode_limits)
    finally:
        services.close()
    assert services.uncertainty._closed

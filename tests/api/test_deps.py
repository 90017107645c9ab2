"""The quick answers (model lists, liveness) never wait for FastAPI's thread pool: their endpoint and every
dependency they use are coroutines (a plain `def` is run in the pool, which a busy CPU makes slow)."""

from __future__ import annotations

import inspect
from collections.abc import Iterator

import pytest
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from aiaa_server.api import models, monai_label, system


def _calls(dependant: Dependant) -> Iterator[object]:
    yield dependant.call
    for sub in dependant.dependencies:
        yield from _calls(sub)


@pytest.mark.parametrize(("router", "path"), [
    (models.router, "/v1/models"), (models.router, "/v1/models/"), (monai_label.router, "/info/"),
    (system.router, "/health"),
])
def test_quick_routes_run_on_the_event_loop(router: object, path: str) -> None:
    routes = [r for r in router.routes if isinstance(r, APIRoute) and r.path == path]  # type: ignore[attr-defined]
    assert routes, f"no route {path}"
    for route in routes:
        sync = [getattr(c, "__name__", repr(c)) for c in _calls(route.dependant) if not inspect.iscoroutinefunction(c)]
        assert not sync, f"{path} runs {sync} in the thread pool"

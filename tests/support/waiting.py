"""Test support: waiting for something to happen by polling a condition until a deadline (never a bare sleep)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from tests.support.server import LiveServer

T = TypeVar("T")


def until(condition: Callable[[], T], timeout: float = 10.0, interval: float = 0.02, message: str | None = None) -> T:
    """Poll `condition` until it returns a truthy value, and return that value.

    Args:
        condition: called every `interval` seconds (and once more at the deadline).
        timeout: seconds before giving up; generous, since only a hang should ever reach it.
        interval: seconds between polls.
        message: the failure message (default: names the condition and the timeout).

    Raises:
        AssertionError: the condition still fails after `timeout` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(message or f"still false after {timeout} s: {getattr(condition, '__name__', condition)}")
        time.sleep(interval)


def metric(server: LiveServer, name: str, **labels: str) -> float:
    """The value of a live server's Prometheus sample `name{labels...}` (0.0 when absent), e.g. to wait on."""
    with server.client(timeout=10) as client:
        text = client.get("/metrics").text
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0

"""Router access to the shared services."""

from __future__ import annotations

from starlette.requests import Request

from aiaa_server.services import Services


def get_services(request: Request) -> Services:
    return request.app.state.services

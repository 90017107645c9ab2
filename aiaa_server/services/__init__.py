"""Use cases behind the routers, one module per concern, and the `Services` container that wires them.

Services take plain values and return plain results; they never import FastAPI.
"""

from aiaa_server.services.container import Services
from aiaa_server.services.polygons import FixedPolygon, PolygonService
from aiaa_server.services.runtime import GIL_SWITCH_INTERVAL, factory_from_settings
from aiaa_server.services.system import Readiness, SystemService

__all__ = [
    "GIL_SWITCH_INTERVAL",
    "FixedPolygon",
    "PolygonService",
    "Readiness",
    "Services",
    "SystemService",
    "factory_from_settings",
]

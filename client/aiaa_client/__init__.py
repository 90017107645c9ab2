"""A small Python client for AI-Assisted Annotation (NVIDIA Clara AIAA protocol) servers."""

from aiaa_client.client import DEFAULT_SERVER, AIAAClient
from aiaa_client.errors import (
    AIAAConnectionError,
    AIAAError,
    AIAATimeoutError,
    BadRequestError,
    ConnectionError,
    NotFoundError,
    ProtocolError,
    ServerError,
    SessionExpiredError,
)
from aiaa_client.types import FixPolygonResult, InferenceResult, ModelInfo, Session

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_SERVER",
    "AIAAClient",
    "AIAAConnectionError",
    "AIAAError",
    "AIAATimeoutError",
    "BadRequestError",
    "ConnectionError",
    "FixPolygonResult",
    "InferenceResult",
    "ModelInfo",
    "NotFoundError",
    "ProtocolError",
    "ServerError",
    "Session",
    "SessionExpiredError",
]

"""Exception hierarchy: every failure the client reports derives from `AIAAError`."""

from __future__ import annotations

import json


class AIAAError(Exception):
    """Base class. `status` is the HTTP status (None when no response came back)."""

    status: int | None = None

    def __init__(self, message: str, status: int | None = None, body: bytes = b"") -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        self.body = body


class AIAAConnectionError(AIAAError):
    """The server could not be reached, the connection broke, or the call timed out."""


# The usual spelling; it shadows the builtin only for `from aiaa_client.errors import *` users.
ConnectionError = AIAAConnectionError


class ProtocolError(AIAAError):
    """The server answered 200 but with a body this client cannot understand."""


class BadRequestError(AIAAError):
    """A 4xx answer that has no more specific class (400, 401, 403, 409, 413, 422…)."""


class NotFoundError(BadRequestError):
    """404: unknown model, unknown session, unknown path."""


class SessionExpiredError(BadRequestError):
    """Clara's non-standard 440: the session is unknown or expired; create a new one and retry."""


class ServerError(AIAAError):
    """A 5xx answer (the message carries the server's `detail`)."""


def error_detail(body: bytes) -> str:
    """The server's JSON `detail` message when there is one, else the start of the body as text."""
    text = body.decode("utf-8", errors="replace").strip()
    try:
        parsed = json.loads(text)
    except ValueError:
        return text[:500]
    if isinstance(parsed, dict) and "detail" in parsed:
        detail = parsed["detail"]
        return detail if isinstance(detail, str) else json.dumps(detail)
    return text[:500]


def error_for_status(status: int, reason: str, body: bytes, what: str) -> AIAAError:
    """Map a non-2xx answer to the matching exception class."""
    detail = error_detail(body) or reason
    message = f"{what}: HTTP {status} {reason}: {detail}" if detail != reason else f"{what}: HTTP {status} {reason}"
    if status == 440:
        return SessionExpiredError(message, status, body)
    if status == 404:
        return NotFoundError(message, status, body)
    if 400 <= status < 500:
        return BadRequestError(message, status, body)
    if status >= 500:
        return ServerError(message, status, body)
    return ProtocolError(message, status, body)


class AIAATimeoutError(AIAAConnectionError):
    """No answer within the client's timeout."""

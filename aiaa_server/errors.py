"""Errors raised by the core; the web layer maps each to an HTTP status and a JSON body.

The core never imports FastAPI: it raises these and `app.py` turns them into responses.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Protocol


class _HasErrors(Protocol):
    def errors(self) -> Sequence[Mapping[str, Any]]: ...


def format_validation_errors(
    exc: _HasErrors, *, loc_prefix: str = "", empty_loc: str = "", depth: int | None = None
) -> str:
    """One line for a pydantic `ValidationError` (or FastAPI's `RequestValidationError`): `loc: msg; loc: msg`.

    Each error's `loc` is joined with dots (`field.0.key`), keeping only its first `depth` parts when given,
    preceded by `loc_prefix` (the CLI writes `--option`), and written as `empty_loc` when it is empty (an error
    on the whole model).
    """
    problems = []
    for error in exc.errors():
        parts = tuple(error["loc"])[:depth]
        loc = ".".join(str(part) for part in parts) or empty_loc
        message = str(error["msg"]).removeprefix("Value error, ")  # pydantic's prefix for a validator's ValueError
        problems.append(f"{loc_prefix}{loc}: {message}")
    return "; ".join(problems)


class AIAAError(Exception):
    """Base class: `status` is the HTTP status the web layer answers with."""

    status: int = 500
    code: str = "internal_error"

    def __init__(self, message: str, **details: object) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_json(self) -> dict[str, object]:
        body: dict[str, object] = {"detail": self.message, "code": self.code}
        if self.details:
            body["details"] = self.details
        return body


class BadRequest(AIAAError):
    status = 400
    code = "bad_request"


class InvalidImage(BadRequest):
    code = "invalid_image"


class InvalidParams(BadRequest):
    code = "invalid_params"


class Unauthorized(AIAAError):
    status = 401
    code = "unauthorized"
    headers: ClassVar[dict[str, str]] = {"WWW-Authenticate": 'Bearer realm="aiaa-server admin"'}


class Forbidden(AIAAError):
    status = 403
    code = "forbidden"


class NotFound(AIAAError):
    status = 404
    code = "not_found"


class PayloadTooLarge(AIAAError):
    status = 413
    code = "payload_too_large"


class IncompatibleInput(AIAAError):
    """The request is well formed but the model cannot take it (e.g. a 2D image for a 3D model)."""

    status = 422
    code = "incompatible_input"


class SessionExpired(AIAAError):
    """Clara's non-standard 440: the clients drop their session and retry on it."""

    status = 440
    code = "session_expired"


class UpstreamError(AIAAError):
    """A remote server this one depends on (a DICOMweb PACS) failed, refused us or could not be reached.

    The message names the remote server's URL, never its credentials.
    """

    status = 502
    code = "upstream_error"


class ServiceUnavailable(AIAAError):
    status = 503
    code = "unavailable"

    def __init__(self, message: str, retry_after: int | None = None, **details: object) -> None:
        super().__init__(message, **details)
        self.retry_after = retry_after


class ModelError(AIAAError):
    """A model's own pipeline failed while processing a valid request."""

    status = 500
    code = "model_error"


class InvalidModel(AIAAError):
    """An MMAR that cannot be loaded: bad config, unknown component, unreadable TorchScript."""

    status = 422
    code = "invalid_model"


class Conflict(AIAAError):
    status = 409
    code = "conflict"


class InvalidModelName(BadRequest):
    code = "invalid_model_name"


class InvalidArchive(BadRequest):
    """An uploaded MMAR archive that is malformed or unsafe (path traversal, links, special files)."""

    code = "invalid_archive"


class ArchiveTooLarge(PayloadTooLarge):
    """An archive whose contents exceed the uncompressed-size or file-count limits (zip bombs)."""

    code = "archive_too_large"


class NotImplementedOnServer(AIAAError):
    status = 501
    code = "not_implemented"

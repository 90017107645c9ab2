"""Logging: a rotating file in the workspace plus an in-memory tail served by `GET /logs`.

Session ids are bearer secrets, and uvicorn's access log prints them (`DELETE /session/<id>`): every handler
masks them to a short prefix before a line is written anywhere."""

from __future__ import annotations

import collections
import logging
import logging.handlers
import re
import threading
from pathlib import Path

from aiaa_server.sessions.backends import SESSION_ID_TEXT, short_id

LOG_FORMAT = "%(asctime)s [%(levelname)s] %(name)s: %(message)s"
_SESSION_IDS = re.compile(rf"(?<![0-9A-Za-z]){SESSION_ID_TEXT}(?![0-9A-Za-z])")


def mask_session_ids(text: str) -> str:
    return _SESSION_IDS.sub(lambda match: short_id(match.group(0)), text)


class SessionIdMask(logging.Filter):
    """Rewrites a record's message (and traceback) with session ids cut to a prefix; never drops a record."""

    def __init__(self) -> None:
        super().__init__()
        self._formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad log call: the handler reports it as usual
            return True
        masked = mask_session_ids(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            record.exc_text = self._formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask_session_ids(record.exc_text)
        if record.stack_info:
            record.stack_info = mask_session_ids(record.stack_info)
        return True


class LogTail(logging.Handler):
    """Keeps the last `capacity` formatted log lines."""

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self._lines: collections.deque[str] = collections.deque(maxlen=capacity)
        self._guard = threading.Lock()
        self.setFormatter(logging.Formatter(LOG_FORMAT))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
        except Exception:  # noqa: BLE001 - a bad log call must never break a request
            return
        with self._guard:
            self._lines.extend(text.splitlines() or [""])

    def tail(self, lines: int) -> list[str]:
        with self._guard:
            if lines <= 0:
                return []
            return list(self._lines)[-lines:]


def setup_logging(level: str, log_file: Path, capacity: int) -> LogTail:
    """Attach the file and tail handlers to the root logger (idempotent for repeated app creation)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_aiaa", False):
            root.removeHandler(handler)
            handler.close()
    tail = LogTail(capacity)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    file_handler = logging.handlers.RotatingFileHandler(log_file, maxBytes=20 * 2**20, backupCount=3, encoding="utf-8")
    file_handler.setFormatter(logging.Formatter(LOG_FORMAT))
    console = logging.StreamHandler()
    console.setFormatter(logging.Formatter(LOG_FORMAT))
    mask = SessionIdMask()
    for handler in (tail, file_handler, console):
        handler._aiaa = True  # type: ignore[attr-defined]
        handler.addFilter(mask)  # on handlers: logger filters would miss records propagated from child loggers
        root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    return tail

"""Logging: a rotating file in the workspace plus an in-memory tail served by `GET /logs`."""

from __future__ import annotations

import collections
import logging
import logging.handlers
import threading
from pathlib import Path

LOG_FORMAT = "%(asctime)s [%(levelname)s] %(name)s: %(message)s"


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
        except Exception:  # a bad log call must never break a request
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
    file_handler = logging.handlers.RotatingFileHandler(log_file, maxBytes=20 * 2**20, backupCount=3)
    file_handler.setFormatter(logging.Formatter(LOG_FORMAT))
    console = logging.StreamHandler()
    console.setFormatter(logging.Formatter(LOG_FORMAT))
    for handler in (tail, file_handler, console):
        handler._aiaa = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    return tail

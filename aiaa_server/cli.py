"""`aiaa-server` command: parse settings, build the app, run uvicorn (and make sure SIGTERM ends it)."""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
from pathlib import Path
from types import FrameType

import uvicorn
from pydantic import ValidationError

from aiaa_server.app import create_app
from aiaa_server.errors import format_validation_errors
from aiaa_server.settings import Settings, settings_from_cli

log = logging.getLogger(__name__)

# After uvicorn's graceful timeout it cancels the requests, runs the lifespan shutdown and exits; this much
# more is allowed for that before the process is ended regardless (a thread that never returns, a stuck loop).
SHUTDOWN_MARGIN_S = 10.0
STARTUP_FAILURE = 3  # uvicorn's exit status when the app could not start


class _Server(uvicorn.Server):
    """uvicorn's server plus a watchdog armed by the first SIGTERM/SIGINT."""

    def __init__(self, config: uvicorn.Config, deadline_s: float) -> None:
        super().__init__(config)
        self._deadline_s = deadline_s
        self._watchdog: threading.Timer | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        if self._watchdog is None:
            self._watchdog = threading.Timer(self._deadline_s, _force_exit, args=(sig, self._deadline_s))
            self._watchdog.daemon = True
            self._watchdog.start()


def _force_exit(sig: int, waited_s: float) -> None:
    log.error("graceful shutdown did not finish within %.0f s: ending the process now", waited_s)
    # os._exit skips joining threads; 128 + signal is the shell's status for "ended by that signal".
    os._exit(128 + sig)


def uvicorn_config(settings: Settings) -> uvicorn.Config:
    return uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=True,
        timeout_keep_alive=30,
        timeout_graceful_shutdown=math.ceil(settings.shutdown_timeout),
        # uvicorn believes X-Forwarded-For from 127.0.0.1 by default, which lets any local process (or a
        # proxy that passes the header on) pose as an --admin_hosts address: only listed proxies are trusted.
        proxy_headers=settings.forwarded_allow_ips is not None,
        forwarded_allow_ips=settings.forwarded_allow_ips or "",
        ssl_certfile=_optional_str(settings.ssl_certfile),
        ssl_keyfile=_optional_str(settings.ssl_keyfile),
    )


def main(argv: list[str] | None = None) -> None:
    try:
        settings = settings_from_cli(argv)
    except ValidationError as exc:
        problems = format_validation_errors(exc, loc_prefix="--")
        print(f"aiaa-server: invalid option: {problems}", file=sys.stderr)
        raise SystemExit(2) from None
    server = _Server(uvicorn_config(settings), deadline_s=settings.shutdown_timeout + SHUTDOWN_MARGIN_S)
    server.run()
    if not server.started:
        raise SystemExit(STARTUP_FAILURE)


def _optional_str(path: Path | None) -> str | None:
    return None if path is None else str(path)


if __name__ == "__main__":
    main()

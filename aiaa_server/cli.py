"""`aiaa-server` command: parse settings, build the app, run uvicorn."""

from __future__ import annotations

import sys
from pathlib import Path

import uvicorn
from pydantic import ValidationError

from aiaa_server.app import create_app
from aiaa_server.settings import settings_from_cli


def main(argv: list[str] | None = None) -> None:
    try:
        settings = settings_from_cli(argv)
    except ValidationError as exc:
        problems = "; ".join(f"--{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        print(f"aiaa-server: invalid option: {problems}", file=sys.stderr)
        raise SystemExit(2) from None
    app = create_app(settings)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=True,
        timeout_keep_alive=30,
        ssl_certfile=_optional_str(settings.ssl_certfile),
        ssl_keyfile=_optional_str(settings.ssl_keyfile),
    )


def _optional_str(path: Path | None) -> str | None:
    return None if path is None else str(path)


if __name__ == "__main__":
    main()

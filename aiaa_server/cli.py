"""`aiaa-server` command: parse settings, build the app, run uvicorn."""

from __future__ import annotations

import uvicorn

from aiaa_server.app import create_app
from aiaa_server.settings import settings_from_cli


def main(argv: list[str] | None = None) -> None:
    settings = settings_from_cli(argv)
    app = create_app(settings)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=True,
        timeout_keep_alive=30,
    )


if __name__ == "__main__":
    main()

"""A real `aiaa-server` process (the CLI entry point, real uvicorn) on a free loopback port.

The one launcher of the tests and of the benchmarks in bench/.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

import httpx

if TYPE_CHECKING:
    from typing_extensions import Self


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LiveServer:
    process: subprocess.Popen
    port: int
    workspace: Path
    log_path: Path
    prefix: str = ""
    scheme: str = "http"
    extra: dict = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}{self.prefix}"

    def url(self, path: str) -> str:
        return self.base_url + path

    def client(self, **kwargs: object) -> httpx.Client:
        kwargs.setdefault("timeout", 120.0)
        return httpx.Client(base_url=self.base_url, **kwargs)  # type: ignore[arg-type]

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()

    def stop(self, timeout: float = 15.0) -> None:
        stop_process(self.process, timeout)


def stop_process(process: subprocess.Popen, timeout: float) -> None:
    """Terminate `process`, then kill it if it has not exited within `timeout` seconds."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def start_server(
    workspace: Path,
    args: list[str] | None = None,
    env: dict[str, str] | None = None,
    port: int | None = None,
    startup_timeout: float = 120.0,
    prefix: str = "",
    scheme: str = "http",
    wait_ready: bool = True,
    log_path: Path | None = None,
    cwd: Path | None = None,
) -> LiveServer:
    """Start `python -m aiaa_server` and wait until `/health` answers (and `/ready`, unless told not to).

    Args:
        workspace: its `--workspace` (created if missing).
        args: more CLI arguments; env: more environment variables (over this process's own).
        port: the port to listen on (default: a free one).
        startup_timeout: seconds until it must answer; prefix, scheme: how `base_url` reaches it.
        wait_ready: also wait for `/ready` (models loaded).
        log_path: where its stdout and stderr go (default: `server-<port>.log` beside the workspace).
        cwd: its working directory (default: this process's).

    Also a context manager that stops the server on exit.
    """
    port = port or free_port()
    workspace.mkdir(parents=True, exist_ok=True)
    log_path = log_path or workspace.parent / f"server-{port}.log"
    command = [sys.executable, "-m", "aiaa_server", "--host", "127.0.0.1", "--port", str(port),
               "--workspace", str(workspace), *(args or [])]
    process_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=process_env, cwd=cwd)
    server = LiveServer(process=process, port=port, workspace=workspace, log_path=log_path, prefix=prefix,
                        scheme=scheme)
    deadline = time.monotonic() + startup_timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"aiaa-server exited with {process.returncode}:\n{server.output()}")
        if _answers(server, wait_ready):
            return server
        time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"aiaa-server did not start within {startup_timeout} s:\n{server.output()}")


def _answers(server: LiveServer, wait_ready: bool) -> bool:
    try:
        if httpx.get(server.url("/health"), timeout=2.0, verify=False).status_code != 200:
            return False
        return not wait_ready or bool(httpx.get(server.url("/ready"), timeout=2.0, verify=False).json()["ready"])
    except httpx.HTTPError:
        return False

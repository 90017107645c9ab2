"""A real `aiaa-server` process (the CLI entry point, real uvicorn) on a free loopback port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx


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

    def stop(self, timeout: float = 15.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_server(
    workspace: Path,
    args: list[str] | None = None,
    env: dict[str, str] | None = None,
    port: int | None = None,
    startup_timeout: float = 120.0,
    prefix: str = "",
    scheme: str = "http",
    wait_ready: bool = True,
) -> LiveServer:
    """Start `python -m aiaa_server` and wait until `/health` answers (and `/ready`, unless told not to)."""
    port = port or free_port()
    workspace.mkdir(parents=True, exist_ok=True)
    log_path = workspace.parent / f"server-{port}.log"
    command = [sys.executable, "-m", "aiaa_server", "--host", "127.0.0.1", "--port", str(port),
               "--workspace", str(workspace), *(args or [])]
    process_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=process_env)
    server = LiveServer(process=process, port=port, workspace=workspace, log_path=log_path, prefix=prefix,
                        scheme=scheme)
    deadline = time.monotonic() + startup_timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"aiaa-server exited with {process.returncode}:\n{server.output()}")
        try:
            response = httpx.get(server.url("/health"), timeout=2.0, verify=False)
            if response.status_code == 200:
                if not wait_ready or httpx.get(server.url("/ready"), timeout=2.0, verify=False).json()["ready"]:
                    return server
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"aiaa-server did not start within {startup_timeout} s:\n{server.output()}")

"""A real, throw-away `redis-server` on a free loopback port (no persistence), for the replica tests."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.support.server import free_port


@dataclass
class RedisServer:
    process: subprocess.Popen
    port: int
    log_path: Path

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def stop(self, timeout: float = 10.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def redis_server_binary() -> str | None:
    return shutil.which("redis-server")


def start_redis(folder: Path, startup_timeout: float = 20.0) -> RedisServer:
    binary = redis_server_binary()
    if binary is None:
        raise RuntimeError("redis-server is not installed (run .ci/deploy-deps.sh)")
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log_path = folder / "redis.log"
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder), "--save", "",
               "--appendonly", "no", "--daemonize", "no", "--logfile", str(log_path)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    server = RedisServer(process=process, port=port, log_path=log_path)
    deadline = time.monotonic() + startup_timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"redis-server exited with {process.returncode}: {_read(log_path)}")
        if _answers_ping(port):
            return server
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"redis-server did not start within {startup_timeout} s: {_read(log_path)}")


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""

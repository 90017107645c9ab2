"""A real Triton Inference Server (CPU, Python backend) from the `nvidia-pytriton` wheel in `.venv-triton`.

The wheel ships `pytriton/tritonserver/bin/tritonserver`, its shared libraries in `nvidia_pytriton.libs/`, the
Python backend (`backends/python/`) and one backend stub per Python version (`python_backend_stubs/3.X/`). Like
pytriton itself we assemble a backend directory holding the backend plus the stub that matches the venv's Python.
The stub links `libpython3.X.so` (found through LD_LIBRARY_PATH: the venv's base interpreter's LIBDIR) and embeds
that interpreter; PYTHONPATH points it at the venv's site-packages, where numpy<2 and torch (CPU) live.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.support.server import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
VENV_ENV = "AIAA_TRITON_VENV"
SETUP_HINT = "run .ci/triton-venv.sh (it builds .venv-triton with the nvidia-pytriton wheel)"

_PROBE = """
import json, pathlib, site, sys, sysconfig
import numpy, pytriton, torch
root = pathlib.Path(pytriton.__file__).resolve().parent
print(json.dumps({
    "tritonserver": str(root / "tritonserver"),
    "libs": str(root.parent / "nvidia_pytriton.libs"),
    "site_packages": site.getsitepackages(),
    "libdir": sysconfig.get_config_var("LIBDIR"),
    "python_version": f"{sys.version_info.major}.{sys.version_info.minor}",
    "numpy": numpy.__version__,
}))
"""


class TritonNotInstalled(RuntimeError):
    pass


@dataclass(frozen=True)
class TritonInstall:
    venv: Path
    tritonserver: Path  # pytriton/tritonserver: bin/, backends/, python_backend_stubs/
    libs: Path
    site_packages: list[str]
    libdir: str
    python_version: str

    @property
    def binary(self) -> Path:
        return self.tritonserver / "bin" / "tritonserver"

    def backend_directory(self, target: Path) -> Path:
        """`<target>/python/` = the Python backend + the stub for this venv's Python version."""
        python = target / "python"
        python.mkdir(parents=True, exist_ok=True)
        for source in (self.tritonserver / "backends" / "python").iterdir():
            if source.is_file():
                shutil.copy2(source, python / source.name)
        stub = self.tritonserver / "python_backend_stubs" / self.python_version / "triton_python_backend_stub"
        if not stub.is_file():
            raise TritonNotInstalled(f"no Python backend stub for Python {self.python_version} in {stub.parent.parent}")
        shutil.copy2(stub, python / stub.name)
        return target

    def environment(self) -> dict[str, str]:
        library_path = [str(self.libs), self.libdir, os.environ.get("LD_LIBRARY_PATH", "")]
        return {
            **os.environ,
            "LD_LIBRARY_PATH": ":".join(p for p in library_path if p),
            "PYTHONPATH": ":".join(self.site_packages),
            "PATH": f"{self.venv / 'bin'}:{os.environ.get('PATH', '')}",
            "OMP_NUM_THREADS": "1",  # the stub's torch: the test machines are small and shared
        }


def find_triton(venv: Path | None = None) -> TritonInstall:
    """The Triton install in `.venv-triton` (or $AIAA_TRITON_VENV); raises TritonNotInstalled saying how to fix it."""
    venv = venv or Path(os.environ.get(VENV_ENV) or REPO_ROOT / ".venv-triton")
    python = venv / "bin" / "python"
    if not python.is_file():
        raise TritonNotInstalled(f"no Triton venv at {venv}: {SETUP_HINT}")
    probe = subprocess.run([str(python), "-c", _PROBE], capture_output=True, text=True, timeout=300, check=False)
    if probe.returncode != 0:
        raise TritonNotInstalled(f"{venv} is incomplete ({probe.stderr.strip()[-500:]}): {SETUP_HINT}")
    found = json.loads(probe.stdout.strip().splitlines()[-1])
    if int(found["numpy"].split(".")[0]) >= 2:
        raise TritonNotInstalled(f"{venv} has numpy {found['numpy']}; the Python backend stub needs numpy<2")
    install = TritonInstall(
        venv=venv,
        tritonserver=Path(found["tritonserver"]),
        libs=Path(found["libs"]),
        site_packages=list(found["site_packages"]),
        libdir=str(found["libdir"] or ""),
        python_version=found["python_version"],
    )
    if not install.binary.is_file():
        raise TritonNotInstalled(f"no tritonserver binary at {install.binary}: {SETUP_HINT}")
    return install


@dataclass
class TritonServer:
    """`tritonserver` on loopback in explicit model-control mode; restartable on the same ports."""

    install: TritonInstall
    repository: Path
    workdir: Path
    http_port: int = field(default_factory=free_port)
    grpc_port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None
    starts: int = 0

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"tritonserver-{self.starts}.log"

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def command(self, backends: Path) -> list[str]:
        return [
            str(self.install.binary),
            f"--model-repository={self.repository}",
            "--model-control-mode=explicit",
            f"--backend-directory={backends}",
            "--http-address=127.0.0.1",
            f"--http-port={self.http_port}",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={self.grpc_port}",
            "--allow-metrics=false",
            "--allow-gpu-metrics=false",
            # Several Tritons may run at once on a machine: keep their shared-memory regions apart.
            f"--backend-config=python,shm-region-prefix-name=aiaa{os.getpid()}p{self.grpc_port}_",
        ]

    def start(self, timeout: float = 120.0) -> TritonServer:
        backends = self.install.backend_directory(self.workdir / "backends")
        self.starts += 1
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(self.command(backends), stdout=log, stderr=subprocess.STDOUT,
                                            env=self.install.environment())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"tritonserver exited with {self.process.returncode}:\n{self.output()[-4000:]}")
            try:
                ready = httpx.get(f"http://{self.http_url}/v2/health/ready", timeout=2.0).status_code == 200
                if ready and _accepts_connections(self.grpc_port):  # the gRPC endpoint can come up later
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"tritonserver did not get ready within {timeout} s:\n{self.output()[-4000:]}")

    def stop(self, timeout: float = 30.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def restart(self) -> None:
        self.stop()
        self.start()


def _accepts_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


def start_triton(install: TritonInstall, repository: Path, workdir: Path) -> TritonServer:
    repository.mkdir(parents=True, exist_ok=True)
    workdir.mkdir(parents=True, exist_ok=True)
    return TritonServer(install=install, repository=repository, workdir=workdir).start()

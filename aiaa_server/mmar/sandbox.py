"""Validating an uploaded MMAR in a separate, confined process.

The dry run loads the upload's network and builds its pipeline; with `--allow_uploaded_code` it also
imports the upload's `custom/` code and may load a `torch.export` `models/model.pt2` (which unpickles). That
happens here, in a child process with:

* resource limits (address space, CPU seconds, file size, open files, no core dumps) and a wall-clock
  timeout enforced by the parent;
* no network: a fresh network namespace where the kernel allows one (`unshare`), and in every case an
  audit hook that refuses sockets, new processes, `ctypes` loading and signals to other processes;
* a read-only view of everything outside its staging folder: the same audit hook refuses opening files
  for writing, and removing, renaming, creating or changing files, anywhere else.

The child reports its verdict as one JSON object on a pipe; the parent re-raises refusals with their
original status and code. Run as `python -m aiaa_server.mmar.sandbox` by `validate_isolated` only.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from aiaa_server.errors import AIAAError, InvalidModel

CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
STDERR_TAIL = 2000
MUTATING_EVENTS = frozenset({
    "os.remove", "os.rename", "os.mkdir", "os.rmdir", "os.symlink", "os.link", "os.chmod", "os.chown",
    "os.truncate", "os.utime", "os.chflags", "os.lchflags", "os.setxattr", "os.removexattr", "shutil.rmtree",
    "shutil.move", "shutil.copyfile", "shutil.copytree",
})
FORBIDDEN_EVENTS = frozenset({
    "socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg", "socket.getaddrinfo", "socket.__new__",
    "subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty", "pty.spawn",
    "os.kill", "os.killpg", "signal.pthread_kill", "ctypes.dlopen", "ctypes.dlsym", "ctypes.call_function",
    "os.startfile", "webbrowser.open", "urllib.Request", "http.client.connect", "ftplib.connect",
    "smtplib.connect", "imaplib.open", "poplib.connect", "telnetlib.Telnet.open",
})
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits of one validation.

    Args:
        memory_bytes: address-space limit of the child (torch needs ~1 GiB just to import).
        cpu_seconds: CPU time limit of the child.
        wall_seconds: the parent kills the child after this long.
        file_bytes: largest file the child may write (inside its staging folder).
    """

    memory_bytes: int = 8 * 2**30
    cpu_seconds: int = 300
    wall_seconds: float = 600.0
    file_bytes: int = 2**30


# ------------------------------------------------------------------------------------------ parent


def validate_isolated(mmar: Path, name: str, allow_code: bool, default_device: str,
                      limits: SandboxLimits | None = None) -> dict[str, Any]:
    """Run `validation.validate_mmar` on `mmar` in a confined child process; raise what it refused.

    Returns the child's verdict (`network_namespace`: whether it ran without any network interface).

    Args:
        mmar: the staged MMAR folder: the child's working and temporary folder, and all it may write.
        name: the model name to validate it as.
        allow_code: `--allow_uploaded_code`: import `custom/` code, skip the upload allow-list.
        default_device: the device when the config names none.
        limits: the child's resource limits; None: `SandboxLimits()`.

    Raises:
        AIAAError: the child's refusal, as the same error class (status and code), e.g. InvalidModel (422).
        InvalidModel: (422) the child ran out of time, crashed or was killed (e.g. by a resource limit).
    """
    limits = limits or SandboxLimits()
    request = {"mmar": str(mmar.resolve()), "name": name, "allow_code": allow_code, "device": default_device,
               "limits": asdict(limits)}
    read_end, write_end = os.pipe()
    env = {key: value for key, value in os.environ.items() if not key.lower().endswith("_proxy")}
    env.update({"PYTHONDONTWRITEBYTECODE": "1", "TMPDIR": str(mmar.resolve())})
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "aiaa_server.mmar.sandbox", json.dumps(request), str(write_end)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, pass_fds=(write_end,),
            cwd=mmar, env=env,
        )
    finally:
        os.close(write_end)
    with os.fdopen(read_end, "rb") as verdict_pipe:
        try:
            _, stderr = process.communicate(timeout=limits.wall_seconds)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            raise InvalidModel(f"validating the upload took longer than {limits.wall_seconds:.0f} s") from None
        verdict = verdict_pipe.read(2**20)
    return _checked_verdict(verdict, process.returncode, stderr.decode("utf-8", "replace"), limits)


def _checked_verdict(raw: bytes, returncode: int, stderr: str, limits: SandboxLimits) -> dict[str, Any]:
    try:
        verdict: dict[str, Any] = json.loads(raw) if raw else {}
    except ValueError:
        verdict = {}
    if verdict.get("ok") is True and returncode == 0:
        return verdict
    if "status" in verdict:
        raise _error_from(verdict)
    raise InvalidModel(
        f"validating the upload failed in its sandbox (exit status {returncode}; limits: "
        f"{limits.memory_bytes // 2**20} MiB memory, {limits.cpu_seconds} s CPU): {stderr[-STDERR_TAIL:].strip()}",
        exit_status=returncode,
    )


def _error_classes(base: type[AIAAError] = AIAAError) -> list[type[AIAAError]]:
    found = [base]
    for sub in base.__subclasses__():
        found += _error_classes(sub)
    return found


def _error_from(verdict: dict[str, Any]) -> AIAAError:
    """The child's refusal as the same error class (same status and code) in this process."""
    status, code = int(verdict["status"]), str(verdict.get("code", "invalid_model"))
    message, details = str(verdict.get("message", "the upload was refused")), verdict.get("details") or {}
    for cls in _error_classes():
        if cls.status == status and cls.code == code and cls.__init__ is AIAAError.__init__:
            return cls(message, **details)
    error = InvalidModel(message, **details)
    error.status, error.code = status, code
    return error


# ------------------------------------------------------------------------------------------- child


def _set_limits(limits: dict[str, Any]) -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
    for which, value in ((resource.RLIMIT_AS, limits["memory_bytes"]), (resource.RLIMIT_CPU, limits["cpu_seconds"]),
                         (resource.RLIMIT_FSIZE, limits["file_bytes"])):
        _, hard = resource.getrlimit(which)
        value = int(value) if hard == resource.RLIM_INFINITY else min(int(value), hard)
        resource.setrlimit(which, (value, value))


def _leave_network() -> bool:
    """Move into an empty network namespace (only loopback, down); False where the kernel refuses."""
    libc = ctypes.CDLL(None, use_errno=True)
    return any(libc.unshare(flags) == 0 for flags in (CLONE_NEWNET, CLONE_NEWUSER | CLONE_NEWNET))


def _inside(path: Any, root: str) -> bool:
    if isinstance(path, int):  # an already open descriptor
        return True
    try:
        real = os.path.realpath(os.fsdecode(path))
    except (TypeError, ValueError):
        return False
    return real == root or real.startswith(root + os.sep) or real == os.devnull


def _install_audit_hook(root: str) -> None:
    def hook(event: str, args: tuple[Any, ...]) -> None:
        if event in FORBIDDEN_EVENTS or event.startswith(("os.exec", "os.spawn", "os.posix_spawn")):
            raise PermissionError(f"{event} is not allowed while validating an upload")
        if event == "open" and len(args) >= 3 and _opens_for_writing(args[1], args[2]) and not _inside(args[0], root):
            raise PermissionError(f"writing {args[0]!r} is not allowed while validating an upload")
        if event in MUTATING_EVENTS and not all(_inside(a, root) for a in args[:2] if isinstance(a, (str, bytes))):
            raise PermissionError(f"{event} outside the upload is not allowed while validating it")

    sys.addaudithook(hook)


def _opens_for_writing(mode: Any, flags: Any) -> bool:
    if isinstance(mode, str):
        return any(c in mode for c in "wax+")
    return isinstance(flags, int) and bool(flags & WRITE_FLAGS)


def _verdict_of(error: BaseException) -> dict[str, Any]:
    if isinstance(error, AIAAError):
        return {"status": error.status, "code": error.code, "message": error.message,
                "details": json.loads(json.dumps(error.details, default=str))}
    if isinstance(error, MemoryError):
        return {"status": 422, "code": "invalid_model", "message": "validating the upload ran out of memory"}
    return {"status": 422, "code": "invalid_model",
            "message": f"validating the upload failed: {type(error).__name__}: {error}"}


def _child(request: dict[str, Any], verdict_fd: int) -> int:
    isolated = _leave_network()  # first: unshare needs a single-threaded process
    _set_limits(request["limits"])
    from aiaa_server.mmar.validation import validate_mmar  # torch and MONAI load before the hook is in place

    _install_audit_hook(os.path.realpath(request["mmar"]))
    try:
        validate_mmar(Path(request["mmar"]), request["name"], request["allow_code"], request["device"])
        verdict: dict[str, Any] = {"ok": True, "network_namespace": isolated}
    except BaseException as error:  # noqa: BLE001 - whatever the upload raises is a verdict, not a crash
        verdict = _verdict_of(error)
    with os.fdopen(verdict_fd, "w") as out:
        out.write(json.dumps(verdict))
    return 0


if __name__ == "__main__":
    sys.exit(_child(json.loads(sys.argv[1]), int(sys.argv[2])))

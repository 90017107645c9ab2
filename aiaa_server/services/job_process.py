"""How the server runs a training job process: at idle CPU priority with bounded memory, killed with the server,
and signalled as a process group (the job and anything it starts)."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import resource
import signal
from collections.abc import Callable

PR_SET_PDEATHSIG = 1


def signal_group(process: asyncio.subprocess.Process, which: signal.Signals) -> None:
    """Send `which` to the process's group, unless it has exited."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, which)


def job_env(threads: int) -> dict[str, str]:
    """The server's environment with the thread pools of OpenMP and MKL bounded to `threads`."""
    count = str(threads)
    return {**os.environ, "OMP_NUM_THREADS": count, "MKL_NUM_THREADS": count, "PYTHONUNBUFFERED": "1"}


def _die_with_parent() -> None:
    """SIGKILL the job when the server dies, even while it is frozen (Linux prctl PR_SET_PDEATHSIG)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL))


def _idle_priority() -> None:
    """Run only on CPU time nothing else wants (Linux SCHED_IDLE): with a mere `nice` the job still takes time
    slices from inference threads, and every parallel op of a click waits for its slowest thread."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        os.nice(19)


def limited(memory_bytes: int) -> Callable[[], None]:
    """A `preexec_fn`: in the child, before exec, lowest priority (clicks first), die with the server, address
    space bounded to `memory_bytes`, no core dumps."""
    def apply() -> None:
        _die_with_parent()
        _idle_priority()
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply

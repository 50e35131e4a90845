"""Local workers end when the ``mia-hpc run`` driver that started them dies.

submitit's local controller is built to outlive the Python session that started it, and its tasks
ignore SIGTERM ("Bypassing signal SIGTERM"), so a ``kill -9`` of the driver used to leave its
workers training while a re-run started new ones. The driver now names itself in the environment
(:data:`DRIVER_ENV`, its pid and the pid's start time) and each worker it starts watches that
process: on Linux ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` covers the worker's direct parent (the
controller), and a watchdog thread polls the driver itself. When it is gone the worker kills
itself with SIGKILL: a shadow in flight is never marked done and is redone by the next run, and
the worker's lease, whose pid is then dead, is taken over at once (:mod:`mia_hpc.launch.leases`).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
from typing import Iterator

from mia_hpc.launch.leases import pid_alive, pid_start

DRIVER_ENV = "MIA_HPC_DRIVER"
#: Seconds between the watchdog's checks of the driver.
POLL_S = 1.0
PR_SET_PDEATHSIG = 1


@contextlib.contextmanager
def as_driver() -> Iterator[None]:
    """Within the block, processes started from this one treat it as their driver."""
    pid = os.getpid()
    before = os.environ.get(DRIVER_ENV)
    os.environ[DRIVER_ENV] = f"{pid}:{pid_start(pid)}"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(DRIVER_ENV, None)
        else:
            os.environ[DRIVER_ENV] = before


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _watch(pid: int, start: str) -> None:
    stop = threading.Event()
    while not stop.wait(POLL_S):
        if not pid_alive(pid, start):
            _die()


def die_with_driver() -> None:
    """If started by a driver (:data:`DRIVER_ENV` set), end this process when the driver ends."""
    raw = os.environ.get(DRIVER_ENV, "")
    if not raw or raw.split(":", 1)[0] == str(os.getpid()):
        return
    pid_s, _, start = raw.partition(":")
    pid = int(pid_s)
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if not pid_alive(pid, start):  # the driver died before we could watch it
        _die()
    threading.Thread(target=_watch, args=(pid, start), name="driver watchdog", daemon=True).start()

"""Fault injection for the kill-and-resume tests: a real SIGKILL of a worker at a named point.

``MIA_HPC_KILL_AT=POINT`` (or ``POINT@SHADOW``) makes the process SIGKILL itself the first time it
reaches ``POINT`` (for that shadow). The points are ``load`` (the store's data read), ``train``
(a shadow batch's training started), ``write:NAME`` (just before writing array NAME of a shadow:
logits, accuracy, train_loss, finished_at, features, done) and ``done`` (the shadow's ``done`` flag
written and synced). ``train`` may carry a delay, ``train+0.4``: the kill then comes that many
seconds into training, from a timer thread. ``MIA_HPC_STALL_AT=POINT+SECONDS`` instead makes the
process sleep there, alive (a hung or slow node, e.g. to kill its driver meanwhile). Unset (the
normal case), every call is two dict lookups.

Torch-free.
"""

from __future__ import annotations

import os
import signal
import threading
import time

KILL_ENV = "MIA_HPC_KILL_AT"
STALL_ENV = "MIA_HPC_STALL_AT"


def _kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _match(env: str, point: str, shadow: int | None) -> str | None:
    """The ``+`` argument ('' if none) when ``env`` names ``point`` (and ``shadow``); else None."""
    want = os.environ.get(env)
    if not want:
        return None
    name, _, at = want.partition("@")
    name, _, arg = name.partition("+")
    if name != point or (at and shadow is not None and int(at) != shadow):
        return None
    return arg


def kill_point(point: str, shadow: int | None = None) -> None:
    """SIGKILL this process if :data:`KILL_ENV` names ``point`` (and ``shadow``, if it names one);
    sleep if :data:`STALL_ENV` does."""
    stall = _match(STALL_ENV, point, shadow)
    if stall:
        time.sleep(float(stall))
    delay = _match(KILL_ENV, point, shadow)
    if delay is None:
        return
    if delay:
        threading.Timer(float(delay), _kill).start()
    else:
        _kill()

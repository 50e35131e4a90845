"""Run shard workers on this machine: as submitit local jobs (real subprocesses) or in-process.

``local`` runs each shard through ``submitit.LocalExecutor`` in its own process, at most
``parallel`` at a time (the cores are divided between them only for specs with ``train.threads =
0``; otherwise every worker uses the spec's thread count, so results do not depend on
``parallel``); ``debug`` calls the worker in this process (for tests and debuggers). Progress is read from the store's ``done`` flags, the same
source of truth ``mia-hpc status`` uses.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import time
from pathlib import Path
from typing import Iterator, Sequence

from tqdm.auto import tqdm

from mia_hpc.contract.errors import ShardFailed
from mia_hpc.launch.lifeline import as_driver
from mia_hpc.launch.worker import default_threads, train_shard
from mia_hpc.contract.store import done_mask, open_store

EXECUTORS = ("local", "debug")


def _error_line(text: str) -> str:
    """The exception line (``SomeError: message``) from a worker's traceback text."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):
        head = ln.split(":", 1)[0]
        if head.endswith(("Error", "Exception", "Interrupt")) and " " not in head:
            return ln
    return lines[-1] if lines else ""


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """SIGINT ignored within the block, so processes started in it inherit it ignored."""
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)


def run_shards(store: str | Path, n_shards: int, shards: Sequence[int], *, executor: str = "local",
               log_dir: str | Path | None = None, parallel: int = 0, device: str = "auto",
               progress: bool = True, limit: int | None = None) -> list[int]:
    """Run the given shards to completion; return the shadows trained (not those already done)."""
    if executor not in EXECUTORS:
        raise ValueError(f"--executor: must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    if not shards:
        return []
    if executor == "debug":
        return [s for i in shards
                for s in train_shard(store, i, n_shards, device=device, progress=progress, limit=limit)]
    import submitit

    parallel = parallel or min(len(shards), os.cpu_count() or 1)
    log_dir = Path(log_dir or Path(store).parent / "logs")
    ex = submitit.LocalExecutor(folder=log_dir / "%j")
    ex.update_parameters(timeout_min=7 * 24 * 60)
    fn = functools.partial(train_shard, device=device, threads=default_threads(parallel), progress=False,
                           limit=limit)
    root = open_store(store)
    total = len(done_mask(root))
    trained: list[int] = []
    bar = tqdm(total=total, initial=int(done_mask(root).sum()), desc="shadows", unit="shadow",
               disable=not progress)
    try:
        for start in range(0, len(shards), parallel):
            wave = list(shards[start:start + parallel])
            # Ctrl-C reaches the whole foreground group: submitit's controllers would each print a
            # KeyboardInterrupt traceback. They inherit SIGINT ignored (Python then installs no
            # handler); this process alone handles it, and its workers end with it (as_driver).
            with as_driver(), _sigint_ignored():  # the workers end when this process dies, even by SIGKILL
                jobs = ex.map_array(fn, [str(store)] * len(wave), wave, [n_shards] * len(wave))
            while not all(j.done() for j in jobs):
                time.sleep(0.5)
                n = int(done_mask(root).sum())
                if n != bar.n:  # redraw only on progress: logs of non-interactive runs stay short
                    bar.update(n - bar.n)
            for shard, job in zip(wave, jobs):
                try:
                    trained += job.result()
                except Exception as err:  # submitit wraps the worker's traceback
                    last = _error_line(str(err)) or type(err).__name__
                    raise ShardFailed(f"shard {shard} failed ({last}); log: {job.paths.stderr}; "
                                      "re-run the same command to resume") from None
    finally:
        with contextlib.suppress(OSError):  # each submitit controller makes the folder template literally
            (log_dir / "%j").rmdir()
        bar.n = int(done_mask(root).sum())
        bar.close()
    return trained

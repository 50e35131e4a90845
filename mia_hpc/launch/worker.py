"""The shard worker: train the unfinished shadows of one shard and write them to the store.

This is what one Slurm array task, one submitit local job or one container runs
(``mia-hpc train-shard STORE --shard i --of n``). It takes the shard's lease first
(:mod:`mia_hpc.launch.leases`: a second worker for a live shard refuses, naming the owner), reads
everything it needs from the store, skips shadows already ``done``, and writes each finished shadow
before starting the next batch, so killing it loses at most the batch in flight. Started by a local
driver, it ends when the driver does (:mod:`mia_hpc.launch.lifeline`).

Compute settings that change a shadow's bits come from the spec, never from where or how the
worker runs: torch's intra-op threads are ``train.threads`` (CPU kernels split their reductions by
thread count), so a shadow redone alone, beside other shards or on another node with the same CPU
kind gives the same logits bit for bit.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import Iterator

import numpy as np

from mia_hpc.contract.faults import kill_point


def train_shard(store: str | Path, shard: int, n_shards: int, *, device: str = "auto", threads: int = 0,
                progress: bool = True, limit: int | None = None, lease_wait: float = 0.0) -> list[int]:
    """Train shard ``shard`` of ``n_shards`` (its shadows below ``limit``, if given).

    ``threads`` is used only by specs with ``train.threads = 0``; ``lease_wait``: seconds to wait
    for another live worker holding the shard's lease before refusing with :class:`LeaseHeld`.
    Returns the shadows trained by this call (those not already done).
    """
    from mia_hpc.contract.store import spec_of
    from mia_hpc.launch.leases import ShardLease
    from mia_hpc.launch.lifeline import die_with_driver
    from mia_hpc.contract.shards import shard_shadows
    from mia_hpc.contract.store import open_store

    die_with_driver()
    m = spec_of(open_store(store)).shadows.count
    owned = shard_shadows(m, n_shards, shard)
    shadows = [s for s in owned if limit is None or s < limit]
    lease = ShardLease(store, shard, n_shards, owned)
    lease.acquire(wait=lease_wait)
    try:  # the done flags are read only now: a previous owner may have finished shadows meanwhile
        with _terminate_as_exit():
            return train_shadow_list(store, shadows, device=device, threads=threads, progress=progress,
                                     before_write=lease.check)
    finally:
        lease.release()


@contextlib.contextmanager
def _terminate_as_exit() -> Iterator[None]:
    """SIGTERM (scancel, a requeue, ``kill``) ends the worker through ``finally`` blocks, so its lease
    is given back at once: a requeued task on another node need not wait for the lease to go stale.

    Only where SIGTERM still has its default action: submitit's jobs handle it themselves.
    """
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL):
        yield
        return

    def _exit(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op thread count set to ``n`` (0: unchanged) within the block."""
    import torch

    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_shadow_list(store: str | Path, shadows: list[int], *, device: str = "auto", threads: int = 0,
                      progress: bool = True, before_write=None) -> list[int]:
    """Train the given shadows that are not done yet, a batch at a time; return those trained.

    ``before_write()`` is called before each shadow is written (the lease check: it raises to stop).
    """
    import torch

    from mia_hpc.contract.store import spec_of
    from mia_hpc.contract.store import done_mask, open_store, read_strings, write_shadow
    from mia_hpc.train.batched import TrainData, iter_batches, resolve_shadow_batch, train_shadows

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    root = open_store(store)
    spec = spec_of(root)
    done = done_mask(root)
    todo = [s for s in shadows if not done[s]]
    if not todo:
        return []
    kill_point("load")
    data = TrainData(
        image=np.asarray(root["image"][...]), label=np.asarray(root["label"][...]),
        group=read_strings(root, "group"), split=read_strings(root, "split"),
        keep=np.asarray(root["keep"][...]), n_classes=int(root.attrs["n_classes"]),
        queries=[(str(n), int(dx), int(dy), bool(m)) for n, dx, dy, m in zip(
            root["query"][...], root["query_dx"][...], root["query_dy"][...], root["query_mirror"][...])],
    )
    trained = []
    k = resolve_shadow_batch(spec, data, device, len(todo))  # shadows.batch = 0: CUDA memory probe / CPU default
    with torch_threads(spec.train.threads or threads):
        for batch in iter_batches(todo, k):
            # one line per batch: logs then show which process trained which shadow, and when
            print(f"mia-hpc worker: pid {os.getpid()} on {socket.gethostname()} trains shadows {batch}",
                  file=sys.stderr, flush=True)
            kill_point("train")
            for res in train_shadows(spec, data, batch, device=device, progress=progress):
                if before_write is not None:
                    before_write()
                write_shadow(root, res.shadow, res.logits, res.accuracy, res.train_loss, res.features)
                trained.append(res.shadow)
    return trained


def default_threads(n_parallel: int) -> int:
    """Torch threads per local worker for specs with ``train.threads = 0``: the cores shared out."""
    return max(1, (os.cpu_count() or 1) // max(1, n_parallel))

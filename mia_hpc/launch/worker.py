"""The shard worker: train the unfinished shadows of one shard and write them to the store.

This is what one Slurm array task, one submitit local job or one container runs
(``mia-hpc train-shard STORE --shard i --of n``). It reads everything it needs from the store,
skips shadows already ``done``, and writes each finished shadow before starting the next batch,
so killing it loses at most the batch in flight.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def train_shard(store: str | Path, shard: int, n_shards: int, *, device: str = "auto", threads: int = 0,
                progress: bool = True, limit: int | None = None) -> list[int]:
    """Train shard ``shard`` of ``n_shards`` (its shadows below ``limit``, if given).

    Returns the shadows trained by this call (those not already done).
    """
    from mia_hpc.experiment import spec_of
    from mia_hpc.launch.shards import shard_shadows
    from mia_hpc.store import open_store

    m = spec_of(open_store(store)).shadows.count
    shadows = [s for s in shard_shadows(m, n_shards, shard) if limit is None or s < limit]
    return train_shadow_list(store, shadows, device=device, threads=threads, progress=progress)


def train_shadow_list(store: str | Path, shadows: list[int], *, device: str = "auto", threads: int = 0,
                      progress: bool = True) -> list[int]:
    """Train the given shadows that are not done yet, a batch at a time; return those trained."""
    import torch

    from mia_hpc.experiment import spec_of
    from mia_hpc.store import done_mask, open_store, read_strings, write_shadow
    from mia_hpc.train.batched import TrainData, iter_batches, resolve_shadow_batch, train_shadows

    if threads:
        torch.set_num_threads(threads)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    root = open_store(store)
    spec = spec_of(root)
    done = done_mask(root)
    todo = [s for s in shadows if not done[s]]
    if not todo:
        return []
    data = TrainData(
        image=np.asarray(root["image"][...]), label=np.asarray(root["label"][...]),
        group=read_strings(root, "group"), split=read_strings(root, "split"),
        keep=np.asarray(root["keep"][...]), n_classes=int(root.attrs["n_classes"]),
        queries=[(str(n), int(dx), int(dy), bool(m)) for n, dx, dy, m in zip(
            root["query"][...], root["query_dx"][...], root["query_dy"][...], root["query_mirror"][...])],
    )
    trained = []
    k = resolve_shadow_batch(spec, data, device, len(todo))  # shadows.batch = 0: CUDA memory probe / CPU default
    for batch in iter_batches(todo, k):
        for res in train_shadows(spec, data, batch, device=device, progress=progress):
            write_shadow(root, res.shadow, res.logits, res.accuracy, res.train_loss, res.features)
            trained.append(res.shadow)
    return trained


def default_threads(n_parallel: int) -> int:
    """Torch threads per local worker so that parallel workers do not oversubscribe the cores."""
    return max(1, (os.cpu_count() or 1) // max(1, n_parallel))

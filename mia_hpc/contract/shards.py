"""Shard planning: shard i of n owns a contiguous range of shadows and writes only those.

Torch-free, so ``mia-hpc status`` and the analysis side can use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mia_hpc.contract.store import done_mask, open_store, spec_of


def shard_shadows(n_shadows: int, n_shards: int, shard: int) -> range:
    """The shadows of shard ``shard`` (0-based) of ``n_shards``: near-equal contiguous ranges."""
    if not 0 <= shard < n_shards:
        raise ValueError(f"shard: must be in 0..{n_shards - 1}, got {shard}")
    bounds = np.linspace(0, n_shards and n_shadows, n_shards + 1).round().astype(int)
    return range(int(bounds[shard]), int(bounds[shard + 1]))


@dataclass(frozen=True)
class ShardState:
    """Progress of one shard."""

    shard: int
    shadows: range
    done: int
    job: str = ""  # Slurm task id of the latest submission, if any
    job_state: str = ""  # its Slurm state (sacct), if known

    @property
    def complete(self) -> bool:
        return self.done == len(self.shadows)


def shard_states(done: np.ndarray, n_shards: int) -> list[ShardState]:
    """Per-shard progress from the store's ``done`` flags."""
    out = []
    for i in range(n_shards):
        r = shard_shadows(len(done), n_shards, i)
        out.append(ShardState(i, r, int(done[r.start:r.stop].sum())))
    return out


def pending_shards(store: str | Path) -> list[int]:
    """Shards with at least one shadow not done."""
    root = open_store(store)
    return [s.shard for s in shard_states(done_mask(root), spec_of(root).shadows.shards) if not s.complete]

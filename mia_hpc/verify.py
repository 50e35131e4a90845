"""Verify a store chunk by chunk against its crc32c checksums, and reset what is broken.

Every chunk is written with a crc32c codec (``mia_hpc.store``), so a flipped byte fails on read.
``verify_store`` reads every chunk that exists on disk and names each broken one with the shadow
and shard it belongs to; ``reset_shadows`` clears those shadows' ``done`` flags so that the next
run (or re-submit) redoes exactly them. Torch-free.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr
from tqdm.auto import tqdm

from mia_hpc.launch.shards import shard_shadows
from mia_hpc.store import open_store, store_spec


@dataclass(frozen=True)
class BrokenChunk:
    """One chunk that failed to decode."""

    array: str
    key: str  # path of the chunk inside the store, e.g. "logits/c/3/0/0/0"
    shadow: int | None  # None for arrays written at creation (not per shadow)
    shard: int | None
    error: str

    def line(self, store: str | Path) -> str:
        if self.shadow is None:
            return (f"{self.key}: {self.error}; this chunk was written when the store was created, "
                    "re-create the store (new --out) from its spec")
        return (f"{self.key}: {self.error}; shadow {self.shadow} of shard {self.shard}: run "
                f"'mia-hpc status {store} --verify --reset-broken', then re-run shard {self.shard}")


def verify_store(path: str | Path, *, progress: bool = True) -> list[BrokenChunk]:
    """Read every stored chunk of every array; return the ones that do not decode."""
    root = open_store(path)
    spec = store_spec(root)
    m, n_shards = spec["shadows"]["count"], spec["shadows"]["shards"]
    shard_of = np.empty(m, dtype=int)
    for i in range(n_shards):
        shard_of[list(shard_shadows(m, n_shards, i))] = i
    base = Path(path)
    broken: list[BrokenChunk] = []
    arrays = [(name, arr) for name, arr in root.arrays()]
    total = sum(int(np.prod(arr.cdata_shape)) for _, arr in arrays)
    with tqdm(total=total, desc="verify chunks", disable=not progress, unit="chunk") as bar:
        for name, arr in arrays:
            per_shadow = (arr.metadata.dimension_names or (None,))[0] == "shadow" and arr.chunks[0] == 1
            for idx in itertools.product(*(range(c) for c in arr.cdata_shape)):
                bar.update()
                key = f"{name}/c/" + "/".join(map(str, idx))
                if not (base / key).is_file():
                    continue  # never written: reads as the fill value, which is what done=False means
                try:
                    arr.get_block_selection(idx)
                except Exception as err:  # zarr raises ValueError for checksum and decode failures
                    msg = str(err).splitlines()[0] if str(err) else type(err).__name__
                    if "checksum" in msg.lower():
                        msg = "crc32c checksum mismatch"
                    shadow = int(idx[0]) if per_shadow else None
                    broken.append(BrokenChunk(name, key, shadow, None if shadow is None else int(shard_of[shadow]),
                                              msg[:200]))
    return broken


def reset_shadows(path: str | Path, shadows: list[int]) -> None:
    """Mark shadows not done, so that the next run retrains them (their chunks are overwritten)."""
    root: zarr.Group = open_store(path)
    for s in sorted(set(shadows)):
        root["done"][s] = False

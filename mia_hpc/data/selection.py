"""Restricting D_U to selected candidates (the attack stage of a staged spec, paper §6 (b), (c)).

A *candidate index* numbers the pool's under-represented samples (``group == "under"`` and
``split == "train"``) in sample order, 0..n_candidates-1: the oracle store and the selection use the
same numbering. Torch-free, numpy only.
"""

from __future__ import annotations

import numpy as np

from mia_hpc.contract.store import StaticData

__all__ = ["candidate_positions", "restrict_under"]


def candidate_positions(group: np.ndarray, split: np.ndarray) -> np.ndarray:
    """Sample positions of the D_U candidates (pool D_U samples), in sample order."""
    group, split = np.asarray(group).astype(str), np.asarray(split).astype(str)
    return np.flatnonzero((group == "under") & (split == "train"))


def restrict_under(data: StaticData, indices: np.ndarray | list[int]) -> StaticData:
    """``data`` with its pool D_U reduced to the candidates ``indices`` (candidate numbering above).

    Pool D_O and every test sample are kept, in their order; the kept D_U samples keep their
    relative order. Raises ValueError for an index out of range or repeated.
    """
    cand = candidate_positions(data.group, data.split)
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if idx.size and (idx.min() < 0 or idx.max() >= cand.size):
        raise ValueError(f"candidate indices must lie in [0, {cand.size}), got {idx.min()}..{idx.max()}")
    if np.unique(idx).size != idx.size:
        raise ValueError("candidate indices repeat")
    keep = np.ones(len(data.label), dtype=bool)
    keep[cand] = False
    keep[cand[idx]] = True
    return StaticData(image=np.ascontiguousarray(data.image[keep]), label=data.label[keep], group=data.group[keep],
                      split=data.split[keep], source=data.source[keep], dataset=data.dataset[keep],
                      n_classes=data.n_classes)

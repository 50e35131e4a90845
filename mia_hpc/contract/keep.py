"""Keep masks: which pool samples each shadow trains on (the LiRA construction).

For M shadows, every pool sample is IN for exactly M/2 of them: draw a uniform matrix (M, N), and
per sample mark IN the M/2 shadows with the smallest draws. With ``block`` < M the construction is
applied within consecutive blocks of shadows, so every prefix made of whole blocks is balanced too
(waves of an adaptive run). Test-split samples are never IN.
"""

from __future__ import annotations

import numpy as np

from mia_hpc.contract.seeding import PURPOSE_KEEP, rng_for


def make_keep(n_shadows: int, is_pool: np.ndarray, seed: int, block: int = 0) -> np.ndarray:
    """(n_shadows, N) bool membership matrix.

    Parameters
    ----------
    n_shadows : int
        M, even.
    is_pool : (N,) bool
        True for candidate members (train split); other samples are never IN.
    seed : int
        The spec's root seed.
    block : int
        Balance within blocks of this many shadows (even, divides M); 0 means one block of M.
    """
    block = block or n_shadows
    if n_shadows % 2 or block % 2 or n_shadows % block:
        raise ValueError(f"keep: need even n_shadows divisible by an even block, got {n_shadows}, {block}")
    n = len(is_pool)
    rng = rng_for(seed, PURPOSE_KEEP)
    keep = np.empty((n_shadows, n), dtype=bool)
    for start in range(0, n_shadows, block):
        order = rng.uniform(size=(block, n)).argsort(axis=0).argsort(axis=0)
        keep[start:start + block] = order < block // 2
    keep[:, ~np.asarray(is_pool, dtype=bool)] = False
    return keep

"""Every random choice derives from (spec seed, purpose, index): results never depend on how
shadows are grouped into batches or shards, or on the order processes run in."""

from __future__ import annotations

import numpy as np


def seed_sequence(seed: int, purpose: int, *index: int) -> np.random.SeedSequence:
    """The seed sequence of one use (``purpose``) of randomness, optionally per shadow."""
    return np.random.SeedSequence([seed, purpose, *index])


def rng_for(seed: int, purpose: int, *index: int) -> np.random.Generator:
    """A numpy Generator for one use of randomness."""
    return np.random.default_rng(seed_sequence(seed, purpose, *index))


def int_seed(seed: int, purpose: int, *index: int) -> int:
    """A 63-bit integer seed (for torch.manual_seed) for one use of randomness."""
    return int(seed_sequence(seed, purpose, *index).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))

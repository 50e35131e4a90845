"""Every random choice derives from (spec seed, purpose, index): results never depend on how
shadows are grouped into batches or shards, or on the order processes run in."""

from __future__ import annotations

import numpy as np


# --- purposes: the registry -------------------------------------------------------------------------
# One number per use of randomness; a number is never reused for another use (that would correlate
# two draws) and never changed (that would change every store made since). Purposes 1-99 belong to
# training (keep masks, init, order, DP); the data side uses 101+.

PURPOSE_KEEP = 1  # the IN/OUT keep masks (contract.keep)
PURPOSE_INIT = 2  # a shadow's weight initialisation (train.batched)
PURPOSE_ORDER = 3  # a shadow's minibatch order and shift augmentation (train.batched)
PURPOSE_POISSON = 4  # a shadow's DP-SGD Poisson sampling (train.dp_sgd)
PURPOSE_NOISE = 5  # a shadow's DP-SGD gradient noise (train.dp_sgd)
PURPOSE_FLIP = 6  # horizontal-flip draws (own generator: existing shift/order streams stay unchanged)
PURPOSE_SPLIT = 101  # train/test split of the digits (data.mixture)
PURPOSE_OVER = 102  # which train digits form D_O
PURPOSE_UNDER_POOL_SOURCES = 103  # source digits of the pool D_U samples
PURPOSE_UNDER_TEST_SOURCES = 104  # source digits of the test D_U samples
PURPOSE_FRACTALS = 105  # the procedural fractal set
PURPOSE_UNDER_POOL_MIX = 106  # fractal choice and PixMix draws of the pool D_U samples
PURPOSE_UNDER_TEST_MIX = 107  # fractal choice and PixMix draws of the test D_U samples
PURPOSE_TEST_OVER = 108  # which test images form test D_O when data.test_over caps it (data.real)
PURPOSE_FRACTAL_COLOUR = 109  # per-fractal channel gammas of generated fractals for RGB PixMix


def seed_sequence(seed: int, purpose: int, *index: int) -> np.random.SeedSequence:
    """The seed sequence of one use (``purpose``) of randomness, optionally per shadow."""
    return np.random.SeedSequence([seed, purpose, *index])


def rng_for(seed: int, purpose: int, *index: int) -> np.random.Generator:
    """A numpy Generator for one use of randomness."""
    return np.random.default_rng(seed_sequence(seed, purpose, *index))


def int_seed(seed: int, purpose: int, *index: int) -> int:
    """A 63-bit integer seed (for torch.manual_seed) for one use of randomness."""
    return int(seed_sequence(seed, purpose, *index).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))

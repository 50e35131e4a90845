"""Shared fixtures: small in-memory training data that needs no data module."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture
def tiny_spec_dict() -> dict:
    """A spec small enough to train 8 shadows in a couple of seconds."""
    return {
        "name": "tiny", "seed": 3,
        "data": {"size": 240, "alpha": 0.8, "test_under": 20},
        "model": {"arch": "cnn32", "width": 8},
        "train": {"epochs": 2, "batch_size": 32, "augment_shift": 1},
        "shadows": {"count": 8, "batch": 8, "shards": 2},
        "queries": {"shift": 1},
    }


@pytest.fixture
def random_train_data():
    """Random images and labels in the store's layout (pool then test)."""
    from mia_hpc.contract.keep import make_keep
    from mia_hpc.contract.queries import make_queries
    from mia_hpc.train.batched import TrainData

    def make(n_shadows: int = 8, seed: int = 0):
        rng = np.random.default_rng(seed)
        n_pool, n_test = 240, 60
        n = n_pool + n_test
        split = np.array(["train"] * n_pool + ["test"] * n_test)
        group = np.array(["over"] * 200 + ["under"] * 40 + ["over"] * 40 + ["under"] * 20)
        return TrainData(image=rng.random((n, 1, 8, 8), dtype=np.float32), label=rng.integers(0, 10, n),
                         group=group, split=split, keep=make_keep(n_shadows, split == "train", seed),
                         queries=make_queries(1, False), n_classes=10)

    return make


@pytest.fixture
def one_torch_thread():
    """Tiny kernels on a shared two-core machine: one torch thread is faster than two contending."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

"""Shared fixtures: small in-memory training data that needs no data module, the real MNIST digits
(where present), and the benchmark scripts as modules."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
#: Real MNIST in torchvision's raw layout (10,000 digits; see its README); MIA_HPC_MNIST overrides.
DEFAULT_MNIST = Path("/work/shared/data/mnist-10k")

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


@pytest.fixture(scope="session")
def mnist_root() -> Path:
    """The real MNIST folder; skips with how to enable it, except under CI=true, where it fails."""
    root = Path(os.environ.get("MIA_HPC_MNIST", DEFAULT_MNIST))
    if not (root / "MNIST" / "raw").is_dir():
        reason = (f"real MNIST not found at {root}/MNIST/raw; set MIA_HPC_MNIST to a folder in torchvision's "
                  "raw layout to run this test")
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} (CI=true: this is a failure, not a skip)")
        pytest.skip(reason)
    return root


@pytest.fixture(scope="session")
def load_benchmark():
    """``load_benchmark(NAME)``: ``benchmarks/NAME.py`` as a module (benchmarks is not a package; its
    scripts import each other, so the folder goes on the path)."""
    if str(REPO / "benchmarks") not in sys.path:
        sys.path.insert(0, str(REPO / "benchmarks"))

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod

    return load

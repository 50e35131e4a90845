"""A shadow's outputs do not depend on how many shards run beside it (CPU, bit for bit).

Each worker is started the way the local driver starts it, with ``--threads`` set to the cores
shared out among the shards in flight (``default_threads``); the spec's ``train.threads`` decides
the arithmetic, so shard 0's shadows trained alone, beside one and beside two other shards are
byte-identical, and so are the shadows of shard 1 in the last two runs.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from shard_helpers import forked_worker, make_store, shadow_arrays, tiny_spec

from mia_hpc.launch.worker import default_threads
from mia_hpc.contract.store import done_mask, open_store


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return make_store(tiny_spec(count=6, shards=3, batch=2, augment_shift=1),
                      tmp_path_factory.mktemp("bitexact") / "pristine" / "store.zarr")


def _run_in_flight(pristine, tmp_path, n: int):
    """Shards 0..n-1 of a copy of the store, all at once, each with the driver's thread count for n."""
    store = tmp_path / f"inflight{n}" / "store.zarr"
    shutil.copytree(pristine, store)
    # what the local driver hands each worker for `--parallel n`: torch threads = cores / n
    procs = [forked_worker(store, shard, 3, tmp_path / f"inflight{n}.log", threads=default_threads(n))
             for shard in range(n)]
    for p in procs:
        p.join(300)
    assert [p.exitcode for p in procs] == [0] * n, (tmp_path / f"inflight{n}.log").read_text()
    assert done_mask(open_store(store)).tolist() == [True] * (2 * n) + [False] * (6 - 2 * n)
    return shadow_arrays(store), store


def test_shadow_is_bit_identical_with_one_two_or_three_shards_in_flight(pristine, tmp_path):
    runs = {}
    for n in (1, 2, 3):
        runs[n], store = _run_in_flight(pristine, tmp_path, n)
    assert json.loads(open_store(store).attrs["spec"])["train"]["threads"] == 1  # recorded in the store
    for name in ("logits", "accuracy", "train_loss"):
        a, b, c = runs[1][name], runs[2][name], runs[3][name]
        assert np.isfinite(a[:2]).all()
        assert a[:2].tobytes() == b[:2].tobytes() == c[:2].tobytes(), f"{name}: shard 0 differs"
        assert b[2:4].tobytes() == c[2:4].tobytes(), f"{name}: shard 1 differs"
    assert runs[1]["features"].tobytes() == runs[3]["features"].tobytes()


def test_shadow_redone_alone_after_a_reset_is_bit_identical(pristine, tmp_path):
    """What ``status --verify --reset-broken`` leads to: one shadow of a batch redone on its own (K = 1)."""
    store = tmp_path / "store.zarr"
    shutil.copytree(pristine, store)
    log = tmp_path / "worker.log"
    first = forked_worker(store, 0, 3, log, threads=2)  # first run: two shards' worth of cores
    first.join(300)
    assert first.exitcode == 0, log.read_text()
    before = shadow_arrays(store)
    root = open_store(store)
    root["done"][1] = False  # the reset: shadow 1 is redone, shadow 0 kept
    root["logits"][1] = np.full(root["logits"].shape[1:], np.nan, dtype=np.float32)
    p = forked_worker(store, 0, 3, log, threads=1)
    p.join(300)
    assert p.exitcode == 0, log.read_text()
    assert "trains shadows [1]" in log.read_text()
    after = shadow_arrays(store)
    for name in ("logits", "accuracy", "train_loss"):
        assert after[name].tobytes() == before[name].tobytes(), name

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
from mia_hpc.store import done_mask, open_store


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

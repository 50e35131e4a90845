"""A diverged shadow is never stored as done: the worker stops at the first non-finite loss.

A spec with a learning rate that blows the embedded digits' CNN up (train.lr 10, momentum 0.9,
constant schedule) is trained by a real worker process: it exits 1 with one line naming the shadow,
the step and the loss, writes none of the batch's outputs, marks nothing done and gives its lease back.
"""

from __future__ import annotations

import re

import numpy as np
from shard_helpers import make_store, run_forked, tiny_spec

from mia_hpc.launch.leases import lease_dir
from mia_hpc.contract.store import done_mask, open_store


def test_worker_stops_at_the_first_non_finite_loss_and_fails_the_shard(tmp_path):
    spec = tiny_spec(count=2, shards=1, batch=2, lr=10.0, momentum=0.9, epochs=10, schedule="constant")
    store = make_store(spec, tmp_path / "store.zarr")
    log = tmp_path / "worker.log"
    assert run_forked(store, 0, 1, log) == 1
    errors = [ln for ln in log.read_text().splitlines() if ln.startswith("mia-hpc: error:")]
    assert len(errors) == 1, log.read_text()
    m = re.fullmatch(r"mia-hpc: error: shadow ([01]) diverged: loss (nan|inf|-inf) at step (\d+) of 20 "
                     r"\(train\.lr 10\); not stored, not marked done; .*", errors[0])
    assert m, errors[0]
    assert 1 <= int(m[3]) < 20  # it stopped there, before the end of training
    root = open_store(store)
    assert not done_mask(root).any()
    assert np.isnan(root["logits"][...]).all() and np.isnan(root["train_loss"][...]).all()
    assert not list(lease_dir(store).iterdir())

"""Keep masks: the LiRA construction, exactly balanced, test samples never IN."""

from __future__ import annotations

import numpy as np
import pytest

from mia_hpc.contract.keep import make_keep


def test_each_pool_sample_in_for_exactly_half():
    is_pool = np.r_[np.ones(500, bool), np.zeros(100, bool)]
    keep = make_keep(16, is_pool, seed=7)
    assert keep.shape == (16, 600)
    assert (keep[:, :500].sum(0) == 8).all()
    assert not keep[:, 500:].any()
    # shadows' IN sets differ and are about half the pool
    assert 200 < keep[0].sum() < 300
    assert (keep[0] != keep[1]).any()


def test_deterministic_in_seed():
    is_pool = np.ones(50, bool)
    assert (make_keep(8, is_pool, 1) == make_keep(8, is_pool, 1)).all()
    assert (make_keep(8, is_pool, 1) != make_keep(8, is_pool, 2)).any()


def test_block_prefixes_balanced():
    keep = make_keep(32, np.ones(300, bool), seed=0, block=8)
    for prefix in (8, 16, 24, 32):
        assert (keep[:prefix].sum(0) == prefix // 2).all()


@pytest.mark.parametrize("m,block", [(7, 0), (8, 3), (8, 6)])
def test_bad_shapes_refused(m, block):
    with pytest.raises(ValueError):
        make_keep(m, np.ones(10, bool), 0, block)

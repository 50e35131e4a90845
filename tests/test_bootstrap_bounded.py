"""The bootstrap's fast path in bounded memory (issue #18): with a tiny ``block_bytes`` the sorted pool
waits on disk (:class:`analysis.kernels.bootstrap._DiskPool`: hundreds of bucket groups, reads of a
few keys, several blocks of samples) and every number is the in-memory path's, bit for bit, ties
(and a tie group longer than many reads) included."""

from __future__ import annotations

import numpy as np
import pytest

import analysis.kernels.bootstrap as bs
from analysis.kernels.bootstrap import bootstrap_columns

FPRS = [0.001, 0.01, 0.2]


def _pairs(dtype, t=40, n=400, seed=0):
    """Members and scores with ties: scores rounded to a coarse grid, a fifth of them exactly 0."""
    rng = np.random.default_rng(seed)
    member = rng.random((t, n)) < 0.5
    score = np.round(rng.standard_normal((t, n)) + 0.8 * member, 1)
    score[rng.random((t, n)) < 0.2] = 0.0
    return member, score.astype(dtype)


def _masks(n, seed=1):
    rng = np.random.default_rng(seed)
    return {"all": None, "every": np.ones(n, dtype=bool), "some": rng.random(n) < 0.6, "few": rng.random(n) < 0.1}


def _same(a, b):
    assert a.names == b.names and a.settings == b.settings
    assert (a.n_targets, a.n_samples, a.n_pos, a.n_neg, a.n_degenerate) == \
        (b.n_targets, b.n_samples, b.n_pos, b.n_neg, b.n_degenerate)
    np.testing.assert_array_equal(a.replicates, b.replicates)  # NaNs equal, every bit otherwise
    for d_a, d_b in ((a.point, b.point), (a.lo, b.lo), (a.hi, b.hi)):
        assert np.array_equal(list(d_a.values()), list(d_b.values()), equal_nan=True)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("block_bytes", [512, 40_000])
def test_tiny_block_same_bits_as_the_pool_in_memory(dtype, block_bytes, tmp_path, monkeypatch):
    monkeypatch.setattr(bs, "_KG_COLS", 128)  # both paths multiply 128 columns at a time: four blocks of samples
    member, score = _pairs(dtype)
    masks = _masks(member.shape[1])
    kw = dict(fprs=FPRS, n_boot=40, seed=3, exact_budget=0)
    whole = bootstrap_columns(member, score, masks, **kw)
    built = []
    real = bs._DiskPool.build
    monkeypatch.setattr(bs._DiskPool, "build", lambda *a, **k: built.append(1) or real(*a, **k))
    spill = tmp_path / "spill"
    spill.mkdir()
    bounded = bootstrap_columns(member, score, masks, block_bytes=block_bytes, spill_dir=spill, threads=3, **kw)
    assert built == [1]  # one pool on disk, every column from it
    assert not any(spill.iterdir())  # its files are removed
    assert all(r.settings["method"].startswith("linearised") for r in whole.values())
    for name in masks:
        _same(whole[name], bounded[name])


def test_disk_pool_keys_are_the_pools(tmp_path):
    """The keys on disk, and a column's taken from them, are the in-memory pool's, in the same order."""
    member, score = _pairs(np.float32, t=12, n=150, seed=4)
    mask = np.random.default_rng(5).random(150) < 0.5
    pool = bs._SortedPool(member, score)
    disk = bs._DiskPool.build(member, score, 256, tmp_path)
    np.testing.assert_array_equal(disk.read(0, disk.size), pool.key)
    np.testing.assert_array_equal(disk.subset(mask, tmp_path).read(0, 12 * int(mask.sum())), pool.subset(mask).key)
    assert disk.top_length(7) == pool.top_length(7)
    for lo in (0, 1, 500, 1799):
        assert disk.group_start(lo) == pool.group_start(lo)


def test_memmaps_and_bounded_nan_refused(tmp_path):
    """Read-only memmaps are read a block of rows at a time; a NaN score is refused as in memory."""
    member, score = _pairs(np.float32, t=20, n=200, seed=6)
    np.save(tmp_path / "m.npy", member)
    np.save(tmp_path / "s.npy", score)
    mm, sm = np.load(tmp_path / "m.npy", mmap_mode="r"), np.load(tmp_path / "s.npy", mmap_mode="r")
    kw = dict(fprs=FPRS, n_boot=30, seed=1, exact_budget=0)
    masks = _masks(200, seed=7)
    whole = bootstrap_columns(member, score, masks, **kw)
    bounded = bootstrap_columns(mm, sm, masks, block_bytes=1024, spill_dir=tmp_path, **kw)
    for name in masks:
        _same(whole[name], bounded[name])
    score[3, 7] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        bootstrap_columns(member, score, masks, block_bytes=1024, spill_dir=tmp_path, **kw)

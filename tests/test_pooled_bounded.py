"""The pooled metrics in bounded memory (issue #18): with a budget so small that the pairs split into
many groups (and tied runs span groups), the AUROC and TPR@FPR are bit-identical to today's one-row
sort; the streamed ROC points are sklearn's ``roc_curve``'s; memmapped scores work."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score, roc_curve

from analysis.kernels.metrics import attack_metrics, per_target_metrics, tpr_at_fpr
from analysis.kernels.pooled import pooled_metrics, pooled_roc_points

FPRS = [0.001, 0.01, 0.1, 0.5]


def _data(dtype, decimals, seed=0, t=30, n=200):
    rng = np.random.default_rng(seed)
    s = rng.normal(size=(t, n))
    if decimals is not None:  # ties, some across many pairs
        s = np.round(s, decimals)
    s = s.astype(dtype)
    m = rng.random((t, n)) < 0.5 + 0.2 * np.tanh(s)
    mask = rng.random(n) < 0.6
    return m, s, mask


def _today(m, s, mask):
    if mask is not None:
        m, s = m[:, mask], s[:, mask]
    return per_target_metrics(m.reshape(1, -1), s.reshape(1, -1), FPRS)[0]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("decimals", [None, 1, 2])
@pytest.mark.parametrize("budget", [512, 4096, 1 << 20])
def test_pooled_bit_identical(dtype, decimals, budget):
    m, s, mask = _data(dtype, decimals)
    for mk in (None, mask):
        ref = _today(m, s, mk)
        got = pooled_metrics(m, s, FPRS, mk, block_bytes=budget)
        assert np.array_equal(ref, got), (ref, got)


def test_one_value_larger_than_a_group():
    # a tie bigger than a group: the bucket is split down to single keys, fed as counts
    rng = np.random.default_rng(1)
    s = np.where(rng.random((20, 100)) < 0.5, np.float32(0.25), rng.normal(size=(20, 100)).astype(np.float32))
    m = rng.random((20, 100)) < 0.5
    assert np.array_equal(_today(m, s, None), pooled_metrics(m, s, FPRS, block_bytes=256))


def test_missing_class_and_nonfinite():
    m, s, _ = _data(np.float32, 2)
    assert np.isnan(pooled_metrics(np.zeros_like(m), s, FPRS, block_bytes=512)).all()
    s[3, 4] = np.nan
    with pytest.raises(ValueError, match="NaN or infinity"):
        pooled_metrics(m, s, FPRS, block_bytes=512)


def test_attack_metrics_bounded_equals_whole_on_memmap(tmp_path):
    m, s, mask = _data(np.float32, 2, seed=3)
    np.save(tmp_path / "s.npy", s)
    np.save(tmp_path / "m.npy", m)
    sm = np.load(tmp_path / "s.npy", mmap_mode="r")
    mm = np.load(tmp_path / "m.npy", mmap_mode="r")
    masks = {"All": np.ones(s.shape[1], bool), "Under": mask}
    ref = attack_metrics(m, s, masks, FPRS)  # fits the default budget: today's path
    for threads in (1, 2):
        got = attack_metrics(mm, sm, masks, FPRS, threads=threads, block_bytes=2048)
        for a, b in zip(ref, got):
            assert a.keys() == b.keys()
            for k in a:
                assert a[k] == b[k] or (np.isnan(a[k]) and np.isnan(b[k])), k


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_streamed_points_are_sklearns(dtype):
    m, s, mask = _data(dtype, 2, seed=5)
    mm, sm = m[:, mask].ravel(), s[:, mask].ravel()
    f, t, thr = roc_curve(mm, sm.astype(np.float64))
    got = ([], [], [])

    def on_points(a, b, c):
        for lst, x in zip(got, (a, b, c)):
            lst.append(x)

    out, n_pos, n_neg, n_full = pooled_roc_points(m, s, FPRS, on_points, mask, block_bytes=512)
    gf, gt, gthr = (np.concatenate(x) for x in got)
    assert (n_pos, n_neg, n_full) == (int(mm.sum()), int((~mm).sum()), f.size)
    assert np.array_equal(gf, f) and np.array_equal(gt, t)
    if dtype == np.float32:  # float64 keys give up the score's lowest bit to the member flag
        assert np.array_equal(gthr, thr)
    assert abs(out[0] - roc_auc_score(mm, sm)) < 1e-12
    assert [tpr_at_fpr(f, t, x) for x in FPRS] == list(out[1:])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("budget", [4096, 1 << 14])
def test_block_boundaries_lose_or_double_no_pair(tmp_path, dtype, budget):
    # rows of 1,031 samples (not a whole number of pages) read from a read-only memmap a row or two
    # at a time, whose pages are given back after each block; ~60 distinct scores, so every tied
    # run spans every block of rows and the largest ones are bigger than a group
    rng = np.random.default_rng(7)
    s = np.round(rng.normal(size=(12, 1031)), 1).astype(dtype)
    m = rng.random(s.shape) < 0.5 + 0.2 * np.tanh(s)
    mask = rng.random(s.shape[1]) < 0.7
    np.save(tmp_path / "s.npy", s)
    np.save(tmp_path / "m.npy", m)
    sm = np.load(tmp_path / "s.npy", mmap_mode="r")
    mm = np.load(tmp_path / "m.npy", mmap_mode="r")
    for mk in (None, mask):
        ms = m if mk is None else m[:, mk]
        last = []
        out, p, q, _ = pooled_roc_points(mm, sm, FPRS, lambda f, t, thr: last.append((f[-1], t[-1])), mk,
                                         block_bytes=budget)
        assert (p, q) == (int(ms.sum()), int((~ms).sum()))
        assert last[-1] == (1.0, 1.0)  # the scan met every pair once: a lost or doubled one moves the end
        assert np.array_equal(out, _today(m, s, mk))
        assert np.array_equal(pooled_metrics(mm, sm, FPRS, mk, block_bytes=budget), _today(m, s, mk))


def test_mapped_pages_given_back_only_where_nothing_is_lost(tmp_path):
    from mapped_pages import resident_bytes_of

    from analysis.kernels.pages import drop_mapped_pages

    a = np.arange(4 << 20, dtype=np.float32).reshape(64, -1)  # 16 MiB
    path = tmp_path / "a.npy"
    np.save(path, a)
    r = np.asarray(np.load(path, mmap_mode="r"))
    assert float(r.sum(dtype=np.float64)) == float(a.sum(dtype=np.float64))
    assert resident_bytes_of(path) > 15 << 20
    drop_mapped_pages(r[:32])
    drop_mapped_pages(r[32:, 5:9])  # a strided view: its pages, from its first byte to its last
    assert resident_bytes_of(path) < 1 << 20
    assert np.array_equal(r, a)  # read again from the page cache
    c = np.load(tmp_path / "a.npy", mmap_mode="c")  # copy-on-write: a change lives only in its pages
    c[0, 0] = -1
    drop_mapped_pages(c)
    assert c[0, 0] == -1
    drop_mapped_pages(a)  # in memory: nothing to give back

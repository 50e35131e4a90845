"""The pooled ROC curves in bounded memory (issue #18): with a budget so small that the pairs stream
in many chunks, every field of every :class:`analysis.output.roc.RocCurve` is the whole-curve path's,
bit for bit (the kept points, the AUROC as ``np.trapezoid`` sums it, TPR@f, the counts)."""

from __future__ import annotations

import numpy as np
import pytest

from mapped_pages import resident_bytes_of

from analysis.output import roc as roc_mod
from analysis.output.roc import _StreamDown, _Terms, corners, downsample, roc_curves

FPRS = [0.001, 0.01, 0.1]


def _data(seed=0, t=40, n=500, decimals=2):
    rng = np.random.default_rng(seed)
    s = rng.normal(size=(t, n))
    if decimals is not None:  # ties, some across many pairs
        s = np.round(s, decimals)
    s = s.astype(np.float32)
    m = rng.random((t, n)) < 0.5 + 0.2 * np.tanh(s)
    masks = {"All": np.ones(n, dtype=bool), "x": rng.random(n) < 0.3, "none": np.zeros(n, dtype=bool),
             "members only": np.zeros(n, dtype=bool)}
    return m, s, masks


def _same(ref, got):
    assert [(c.attack, c.column) for c in ref] == [(c.attack, c.column) for c in got]
    for r, g in zip(ref, got):
        for k in ("fpr", "tpr", "threshold"):
            assert np.array_equal(getattr(r, k), getattr(g, k)), (r.column, k)
        assert r.auroc == g.auroc, (r.column, r.auroc - g.auroc)
        assert r.tpr_at == g.tpr_at
        assert (r.n_pos, r.n_neg, r.n_full) == (g.n_pos, g.n_neg, g.n_full)


def _bounded_taken(monkeypatch):
    calls = []
    real = roc_mod._bounded_curve
    monkeypatch.setattr(roc_mod, "_bounded_curve", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


@pytest.mark.parametrize("decimals", [None, 1, 2])
@pytest.mark.parametrize("kw", [{}, {"per_decade": 3, "dense_fpr": 0.2}, {"per_decade": 1, "area_tol": 1e-2},
                                {"dense_fpr": 0.0, "area_tol": 1e-12, "per_decade": 1000}])
def test_bounded_equals_whole(monkeypatch, decimals, kw):
    m, s, masks = _data(decimals=decimals)
    m[:, np.flatnonzero(~masks["x"])[:5]] = True
    masks["members only"][np.flatnonzero(~masks["x"])[:5]] = True
    ref = roc_curves({"a": (m, s)}, masks, FPRS, **kw)  # fits the default budget: the whole curve
    assert [c.column for c in ref] == ["All", "x"]
    calls = _bounded_taken(monkeypatch)
    monkeypatch.setattr(roc_mod, "_SUB", 97)  # the downsampler's sub-chunks too
    got = roc_curves({"a": (m, s)}, masks, FPRS, block_bytes=4096, **kw)
    assert len(calls) == 2
    _same(ref, got)


def test_bounded_on_memmap(tmp_path, monkeypatch):
    m, s, masks = _data(seed=4, decimals=3)
    np.save(tmp_path / "s.npy", s)
    np.save(tmp_path / "m.npy", m)
    sm = np.load(tmp_path / "s.npy", mmap_mode="r")
    mm = np.load(tmp_path / "m.npy", mmap_mode="r")
    pairs = {"a": (m, s), "b": (m, -s)}
    ref = roc_curves(pairs, masks, FPRS)
    calls = _bounded_taken(monkeypatch)
    got = roc_curves({"a": (mm, sm), "b": (mm, -s)}, masks, FPRS, block_bytes=4096)
    assert len(calls) == 4
    _same(ref, got)


def test_float64_scores_keep_the_whole_path(monkeypatch):
    # float64 keys give up the score's lowest bit: such scores are not streamed
    m, s, masks = _data(seed=2)
    calls = _bounded_taken(monkeypatch)
    got = roc_curves({"a": (m, s.astype(np.float64))}, masks, FPRS, block_bytes=4096)
    assert not calls and [c.column for c in got] == ["All", "x"]


@pytest.mark.parametrize("kw", [{}, {"per_decade": 1, "area_tol": 1e-3}, {"per_decade": 1, "area_tol": 1.0}])
def test_stream_downsample_any_chunking(kw):
    # a long staircase with collinear runs: chords that reach the 2048-point look-ahead
    rng = np.random.default_rng(7)
    n = 20_000
    up = rng.random(n) < 0.5
    up[3000:9000] = rng.random(6000) < 0.01
    tp = np.cumsum(up)
    fp = np.cumsum(~up)
    f = np.concatenate([[0.0], fp / fp[-1]])
    t = np.concatenate([[0.0], tp / tp[-1]])
    thr = np.concatenate([[np.inf], -np.arange(n, dtype=np.float64)])
    dense = kw.pop("dense_fpr", 1e-2)
    keep = downsample(f, t, dense_fpr=dense, **kw)
    for sizes in ([1], [2049], [5, 3000, 1, 7], [n + 1]):
        sd = _StreamDown(dense, kw.get("area_tol", 1e-9), kw.get("per_decade", 200), FPRS, spill_limit=4096)
        i, k = 0, 0
        while i < f.size:
            step = sizes[k % len(sizes)]
            sd.feed(f[i:i + step], t[i:i + step], thr[i:i + step])
            i, k = i + step, k + 1
        gf, gt, gthr, auroc, tpr_at, n_full = sd.finish()
        assert np.array_equal(gf, f[keep]) and np.array_equal(gt, t[keep]) and np.array_equal(gthr, thr[keep])
        assert auroc == float(np.trapezoid(t, f)) and n_full == f.size


@pytest.mark.parametrize("n", [0, 1, 7, 8, 127, 128, 129, 1000, 4097, 100_003])
def test_terms_sum_as_numpy(n):
    a = np.random.default_rng(n).normal(size=n) * np.exp(np.random.default_rng(n + 1).normal(size=n) * 8)
    for limit in (64, 1 << 30):  # spilled to a temporary file, or held
        terms = _Terms(limit)
        for i in range(0, n, 333):
            terms.add(a[i:i + 333])
        assert terms.total() == float(np.add.reduce(a))


def test_dense_region_is_capped_in_false_positives(monkeypatch):
    """Every corner is kept up to dense_fpr or DENSE_NEGATIVES false positives, whichever is first:
    the kept points there are the full curve's corners, fewer points are kept overall, the exact numbers
    (auroc, tpr_at, counts) do not change, and the bounded path still equals the whole one."""
    from sklearn.metrics import roc_curve

    m, s, masks = _data(decimals=None, t=60, n=500)
    masks = {"All": masks["All"]}
    full = roc_curves({"a": (m, s)}, masks, FPRS)[0]
    monkeypatch.setattr(roc_mod, "DENSE_NEGATIVES", 40)
    capped = roc_curves({"a": (m, s)}, masks, FPRS)[0]
    assert capped.fpr.size < full.fpr.size
    assert capped.auroc == full.auroc and capped.tpr_at == full.tpr_at
    assert (capped.n_pos, capped.n_neg, capped.n_full) == (full.n_pos, full.n_neg, full.n_full)
    f, t, _ = roc_curve(m.ravel(), s.ravel().astype(np.float64))
    fp_max = 40 / capped.n_neg
    low = (f <= fp_max) & corners(f, t)
    # every corner of the full curve up to 40 false positives is kept, and every kept point is a vertex
    assert np.array_equal(capped.fpr[capped.fpr <= fp_max], f[low])
    assert np.array_equal(capped.tpr[capped.fpr <= fp_max], t[low])
    assert set(zip(capped.fpr.tolist(), capped.tpr.tolist())) <= set(zip(f.tolist(), t.tolist()))
    monkeypatch.setattr(roc_mod, "_SUB", 97)
    _same([capped], roc_curves({"a": (m, s)}, masks, FPRS, block_bytes=4096))


@pytest.mark.parametrize("kw", [{}, {"dense_fpr": 1.0}, {"per_decade": 1, "area_tol": 1e-3}])
def test_bounded_thins_the_runs_as_the_whole_path(monkeypatch, kw):
    # member-only and non-member-only ties of varying counts: straight runs whose interior points
    # go, in chunks of 97 points and 4 KiB of keys that cut runs anywhere
    rng = np.random.default_rng(11)
    m = rng.random((60, 500)) < 0.5
    s = np.round(rng.normal(size=m.shape) + np.where(m, 1.5, 0.0), 2).astype(np.float32)
    masks = {"All": np.ones(500, dtype=bool), "x": rng.random(500) < 0.3}
    ref = roc_curves({"a": (m, s)}, masks, FPRS, **kw)
    assert all(c.fpr.size < c.n_full for c in ref)
    calls = _bounded_taken(monkeypatch)
    monkeypatch.setattr(roc_mod, "_SUB", 97)
    got = roc_curves({"a": (m, s)}, masks, FPRS, block_bytes=4096, **kw)
    assert len(calls) == 2
    _same(ref, got)


def test_table_fprs_past_the_dense_end_are_read_exactly(monkeypatch):
    # the dense end stops at the first false positive, below every table FPR: no chord may skip the point
    # that gives the TPR there, in the whole and the streamed path alike
    from analysis.kernels.metrics import tpr_at_fpr

    m, s, masks = _data(decimals=2, t=60, n=500)
    masks = {"All": masks["All"], "x": masks["x"]}
    monkeypatch.setattr(roc_mod, "DENSE_NEGATIVES", 1)
    ref = roc_curves({"a": (m, s)}, masks, FPRS, per_decade=1, area_tol=1e-3)
    for c in ref:
        assert 1 / c.n_neg < min(FPRS)
        for x in FPRS:
            assert tpr_at_fpr(c.fpr, c.tpr, x) == c.tpr_at[x], (c.column, x)
    monkeypatch.setattr(roc_mod, "_SUB", 97)
    _same(ref, roc_curves({"a": (m, s)}, masks, FPRS, per_decade=1, area_tol=1e-3, block_bytes=4096))


def test_whole_path_gives_back_a_mapped_files_pages(tmp_path):
    """``score[:, mask]`` of a memmap touches every page of the file: the whole-curve path reads it a
    block of rows at a time and gives the pages back, so a column of a few samples does not leave
    the attack's whole score file resident (0.4 GB per attack at 2000 x 50,000); same curve."""
    rng = np.random.default_rng(5)
    member = rng.random((256, 16384)) < 0.5
    score = np.round(rng.standard_normal(member.shape) + member, 2).astype(np.float32)  # 16 MiB
    path = tmp_path / "s.npy"
    np.save(path, score)
    mapped = np.load(path, mmap_mode="r")
    mask = np.zeros(member.shape[1], dtype=bool)
    mask[::20] = True
    got = roc_mod.pooled_curve(member, mapped, mask)
    assert resident_bytes_of(path) < 1 << 20  # of the file's 16 MiB, read whole
    ref = roc_mod.pooled_curve(member, score, mask)
    assert all(np.array_equal(a, b) for a, b in zip(got, ref))

"""Bootstrap intervals over targets and samples: exact point estimates, coverage, width."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from analysis.kernels.bootstrap import bootstrap_metrics
from analysis.kernels.metrics import attack_metrics


def _gauss(rng, t, n, d):
    """(member, score): members ~ N(d, 1), non-members ~ N(0, 1); AUROC = Phi(d / sqrt 2)."""
    m = rng.random((t, n)) < 0.5
    return m, rng.normal(size=(t, n)) + d * m


def _phi(x):
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


@pytest.mark.parametrize("samples", ["within", "shared"])
def test_point_estimate_matches_sklearn_with_ties(samples):
    rng = np.random.default_rng(0)
    m, s = _gauss(rng, 5, 400, 1.0)
    s = np.round(s, 1)  # many ties: they must count one half, as in sklearn
    mask = rng.random(400) < 0.3
    r = bootstrap_metrics(m, s, fprs=[0.001, 0.01, 0.1], n_boot=20, samples=samples, mask=mask)
    p, _, _ = attack_metrics(m, s, {"X": mask}, [0.001, 0.01, 0.1])
    assert r.names == ["AUROC", "TPR@0.1%", "TPR@1%", "TPR@10%"]
    for k in r.names:
        assert r.point[k] == pytest.approx(p[f"{k} X"], abs=1e-12)
        assert r.lo[k] <= r.hi[k]
    assert r.n_targets == 5 and r.n_samples == int(mask.sum()) and r.n_pos + r.n_neg == 5 * mask.sum()


def test_mask_equals_slicing_and_seed_is_deterministic():
    rng = np.random.default_rng(1)
    m, s = _gauss(rng, 3, 200, 1.0)
    mask = np.arange(200) % 3 == 0
    a = bootstrap_metrics(m, s, mask=mask, n_boot=50, seed=7)
    b = bootstrap_metrics(m[:, mask], s[:, mask], n_boot=50, seed=7)
    c = bootstrap_metrics(m, s, mask=mask, n_boot=50, seed=8)
    np.testing.assert_array_equal(a.replicates, b.replicates)
    assert not np.array_equal(a.replicates, c.replicates)
    # batching does not change the draws' distribution, only how many are drawn at once
    d = bootstrap_metrics(m, s, mask=mask, n_boot=50, seed=7, max_bytes=1)
    assert d.replicates.shape == (50, 2) and np.isfinite(d.replicates).all()


@pytest.mark.parametrize("samples", ["within", "shared"])
def test_coverage_of_analytic_auroc(samples):
    """Known answer: over 40 independent experiments the 95% interval covers Phi(d/sqrt 2) >= 85%."""
    d, truth = 1.0, _phi(1.0 / math.sqrt(2))
    rng = np.random.default_rng(2024)
    hits = 0
    for rep in range(40):
        m, s = _gauss(rng, 4, 150, d)
        r = bootstrap_metrics(m, s, n_boot=200, seed=rep, samples=samples)
        hits += r.lo["AUROC"] <= truth <= r.hi["AUROC"]
    assert hits / 40 >= 0.85, f"coverage {hits}/40"


def test_intervals_shrink_with_more_samples():
    rng = np.random.default_rng(3)
    w = {}
    for n in (100, 2000):
        m, s = _gauss(rng, 4, n, 1.0)
        r = bootstrap_metrics(m, s, n_boot=200, seed=0)
        w[n] = r.hi["AUROC"] - r.lo["AUROC"]
    # width ~ 1/sqrt(samples): 20x more samples, ~4.5x narrower
    assert w[2000] < 0.4 * w[100], w


def test_tpr_at_low_fpr_with_few_negatives_is_wide():
    """One target, ~150 negatives: 0.1% FPR allows no false positive, so the TPR hinges on the top
    negative score and the interval is wide (far wider than the AUROC's)."""
    rng = np.random.default_rng(1)
    m, s = _gauss(rng, 1, 300, 2.0)
    r = bootstrap_metrics(m, s, fprs=[0.001], n_boot=200, seed=0)
    assert r.n_neg < 200
    width = r.hi["TPR@0.1%"] - r.lo["TPR@0.1%"]
    assert width > 0.2, (r.lo, r.hi)
    assert width > 3 * (r.hi["AUROC"] - r.lo["AUROC"])
    assert r.lo["TPR@0.1%"] <= r.point["TPR@0.1%"] <= r.hi["TPR@0.1%"]


def test_degenerate_and_invalid_inputs():
    m = np.ones((2, 10), dtype=bool)
    r = bootstrap_metrics(m, np.zeros((2, 10)), n_boot=10)
    assert math.isnan(r.point["AUROC"]) and r.n_degenerate == 10 and math.isnan(r.lo["AUROC"])
    empty = bootstrap_metrics(m, np.zeros((2, 10)), mask=np.zeros(10, bool), n_boot=10)
    assert math.isnan(empty.point["AUROC"]) and empty.n_samples == 0
    with pytest.raises(ValueError, match="NaN"):
        bootstrap_metrics(m, np.full((2, 10), np.nan))
    with pytest.raises(ValueError, match="must both be"):
        bootstrap_metrics(m, np.zeros((2, 9)))
    with pytest.raises(ValueError, match="samples"):
        bootstrap_metrics(~np.eye(2, 10, dtype=bool), np.zeros((2, 10)), samples="nope")


def test_speed_64_targets_1200_samples():
    rng = np.random.default_rng(5)
    m, s = _gauss(rng, 64, 1200, 1.0)
    t = time.perf_counter()
    r = bootstrap_metrics(m, s, fprs=[0.001, 0.01], n_boot=200, seed=0)
    dt = time.perf_counter() - t
    assert r.replicates.shape == (200, 3)
    assert dt < 20, f"B=200 on 64 x 1200 took {dt:.1f} s"


def test_large_weights_take_the_two_cumsum_path():
    from analysis.kernels.bootstrap import _SortedPairs, weighted_roc_metrics

    rng = np.random.default_rng(4)
    m, s = _gauss(rng, 2, 50, 1.0)
    pairs = _SortedPairs(m, s)
    w = rng.integers(0, 4, size=(3, 100))
    small = weighted_roc_metrics(pairs, w, [0.01, 0.1])
    big = weighted_roc_metrics(pairs, w * 2**28, [0.01, 0.1])  # totals > 2^31: no bit packing
    np.testing.assert_allclose(small, big, rtol=1e-12)


def test_shared_samples_cover_with_per_sample_difficulty():
    """Scores a_i + d*member + noise with a per-sample offset a_i common to all targets (as LiRA
    scores of real shadows): pooled AUROC = Phi(d / sqrt(2 (1 + s_a^2))). The crossed ("shared")
    bootstrap covers it; drawing samples per target ("within") gives narrower intervals."""
    d, sa = 2.0, 2.0
    truth = _phi(d / math.sqrt(2 * (1 + sa ** 2)))
    rng = np.random.default_rng(5)
    hits, w_shared, w_within = 0, [], []
    for rep in range(40):
        a = rng.normal(size=100) * sa
        m = rng.random((8, 100)) < 0.5
        s = a + d * m + rng.normal(size=(8, 100))
        r = bootstrap_metrics(m, s, n_boot=200, seed=rep)  # default: shared
        hits += r.lo["AUROC"] <= truth <= r.hi["AUROC"]
        w_shared.append(r.hi["AUROC"] - r.lo["AUROC"])
        r = bootstrap_metrics(m, s, n_boot=200, seed=rep, samples="within")
        w_within.append(r.hi["AUROC"] - r.lo["AUROC"])
    assert hits / 40 >= 0.85, f"coverage {hits}/40"
    assert np.mean(w_within) < np.mean(w_shared)


@pytest.mark.parametrize("decimals", [1, 3])
def test_fast_shared_path_matches_the_exact_bootstrap(decimals):
    # Same draws on both paths: TPR replicates identical, AUROC (first-order) within a few % of
    # the interval width, point estimates identical; ties included (rounded scores).
    rng = np.random.default_rng(1)
    t, n = 40, 1500
    difficulty = rng.normal(0, 0.5, n)  # sample effects shared by the targets: the crossed design
    member = rng.random((t, n)) < 0.5
    score = np.round(rng.normal(size=(t, n)) + member * (1 + difficulty) + rng.normal(0, 0.3, t)[:, None], decimals)
    kw = dict(fprs=[0.001, 0.01], n_boot=150, seed=3)
    exact = bootstrap_metrics(member, score, exact_budget=10**12, **kw)
    fast = bootstrap_metrics(member, score, exact_budget=0, **kw)
    assert fast.settings["method"].startswith("linearised") and exact.settings["method"] == "exact weighted ROC"
    for k in exact.names:
        assert fast.point[k] == pytest.approx(exact.point[k], abs=1e-12)
    np.testing.assert_array_equal(fast.replicates[:, 1:], exact.replicates[:, 1:])
    width = exact.hi["AUROC"] - exact.lo["AUROC"]
    d = np.abs(fast.replicates[:, 0] - exact.replicates[:, 0])
    assert np.median(d) < 0.02 * width and d.max() < 0.15 * width  # second-order terms: O(1/T + 1/N)
    assert abs(fast.lo["AUROC"] - exact.lo["AUROC"]) < 0.1 * width
    assert abs(fast.hi["AUROC"] - exact.hi["AUROC"]) < 0.1 * width


def test_columns_from_one_sort_equal_separate_bootstraps():
    # bootstrap_columns sorts the pooled pairs once and takes each column's pairs from that order;
    # with float32 scores (all bits kept) every column equals its own bootstrap of the sliced pairs,
    # exactly, on the fast path (derived order) and on the exact path (small column)
    from analysis.kernels.bootstrap import bootstrap_columns

    rng = np.random.default_rng(7)
    t, n = 30, 900
    member = rng.random((t, n)) < 0.5
    under = rng.random(n) < 0.3
    score = np.round(rng.normal(size=(t, n)) + member * np.where(under, 2.0, 0.3), 2).astype(np.float32)
    masks = {"All": None, "Under": under, "few": np.arange(n) < 5}
    kw = dict(fprs=[0.001, 0.01], n_boot=60, seed=2, exact_budget=50_000)
    cols = bootstrap_columns(member, score, masks, **kw)
    assert cols["All"].settings["method"].startswith("linearised")
    assert cols["Under"].settings["method"].startswith("linearised")
    assert cols["few"].settings["method"] == "exact weighted ROC"
    for name, mask in masks.items():
        sl = slice(None) if mask is None else mask
        alone = bootstrap_metrics(member[:, sl], score[:, sl], **kw)
        np.testing.assert_array_equal(cols[name].replicates, alone.replicates)
        assert cols[name].point == alone.point and cols[name].n_pos == alone.n_pos
    with pytest.raises(ValueError, match="NaN"):
        bad = score.copy()
        bad[3, 4] = np.nan
        bootstrap_columns(member, bad, {"All": None}, **kw)

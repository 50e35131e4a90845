"""Hellinger closed forms (univariate, multivariate, Bernoulli) and the Eq. 8 check (analysis.studies.theory)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import integrate
from scipy.stats import multivariate_normal, norm

from analysis.studies.memorization import MemCounts
from analysis.tools.synthetic_store import synthetic_keep
from analysis.studies.theory import (bernoulli_check, gauss_fits, hellinger2_bernoulli, hellinger2_gauss_multi,
                             hellinger2_gauss_uni, null_h2, theory_per_sample, theory_summary)


def _h2_quad(mu0, s0, mu1, s1):
    lo = min(mu0 - 12 * s0, mu1 - 12 * s1)
    hi = max(mu0 + 12 * s0, mu1 + 12 * s1)
    f = lambda x: 0.5 * (np.sqrt(norm.pdf(x, mu0, s0)) - np.sqrt(norm.pdf(x, mu1, s1))) ** 2  # noqa: E731
    # breakpoints at both means so quad does not miss a narrow peak
    val, _ = integrate.quad(f, lo, hi, points=sorted({mu0, mu1}), limit=400, epsabs=1e-12, epsrel=1e-10)
    return val


@pytest.mark.parametrize("mu0,s0,mu1,s1", [(0.0, 1.0, 0.0, 1.0), (0.0, 1.0, 1.0, 1.0), (0.0, 1.0, 0.3, 2.5),
                                           (5.0, 0.2, 4.0, 3.0), (-2.0, 0.05, 2.0, 0.07), (10.0, 4.0, 10.5, 0.5)])
def test_univariate_closed_form_matches_numerical_integration(mu0, s0, mu1, s1):
    # tolerance: 1e-7 absolute (quad is accurate to ~1e-10 here)
    got = hellinger2_gauss_uni(mu0, s0 ** 2, mu1, s1 ** 2)
    assert got == pytest.approx(_h2_quad(mu0, s0, mu1, s1), abs=1e-7)


def test_multivariate_closed_form_matches_a_2d_grid_integral():
    # 2-D Gaussians with correlation; H^2 = 1 - int sqrt(p0 p1), integrated on a 1601^2 grid
    # (trapezoid on a smooth, rapidly decaying integrand: error << 1e-5, the stated tolerance)
    a = np.array
    cases = [
        (a([0.0, 0.0]), a([[1.0, 0.6], [0.6, 2.0]]), a([1.0, -0.5]), a([[0.5, -0.1], [-0.1, 0.8]])),
        (a([0.0, 1.0]), a([[1.0, 0.0], [0.0, 1.0]]), a([0.0, 1.0]), a([[2.0, 0.9], [0.9, 1.0]])),
        (a([0.3, 0.0]), a([[1.0, 0.95], [0.95, 1.0]]), a([-0.3, 0.2]), a([[1.0, 0.9], [0.9, 1.2]])),
    ]
    g = np.linspace(-9, 9, 1601)
    xx, yy = np.meshgrid(g, g, indexing="ij")
    pts = np.stack([xx, yy], axis=-1)
    for mu0, c0, mu1, c1 in cases:
        bc = np.sqrt(multivariate_normal(mu0, c0).pdf(pts) * multivariate_normal(mu1, c1).pdf(pts))
        num = 1.0 - integrate.trapezoid(integrate.trapezoid(bc, g, axis=1), g)
        assert hellinger2_gauss_multi(mu0, c0, mu1, c1) == pytest.approx(num, abs=1e-5)
    # batched over samples: the same values stacked
    mu0 = np.stack([c[0] for c in cases]); c0 = np.stack([c[1] for c in cases])
    mu1 = np.stack([c[2] for c in cases]); c1 = np.stack([c[3] for c in cases])
    batch = hellinger2_gauss_multi(mu0, c0, mu1, c1)
    one = [hellinger2_gauss_multi(*c) for c in cases]
    np.testing.assert_allclose(batch, one, rtol=1e-12)


def test_multivariate_with_one_query_equals_univariate():
    rng = np.random.default_rng(0)
    mu0, mu1 = rng.normal(size=(2, 50))
    v0, v1 = rng.uniform(0.1, 3.0, size=(2, 50))
    multi = hellinger2_gauss_multi(mu0[:, None], v0[:, None, None], mu1[:, None], v1[:, None, None])
    np.testing.assert_allclose(multi, hellinger2_gauss_uni(mu0, v0, mu1, v1), rtol=1e-10, atol=1e-14)
    # a diagonal multivariate Gaussian factorises: BC is the product of the per-dimension BCs
    mu0, mu1 = rng.normal(size=(2, 3)); v0, v1 = rng.uniform(0.2, 2.0, size=(2, 3))
    bc = np.prod(1 - hellinger2_gauss_uni(mu0, v0, mu1, v1))
    assert hellinger2_gauss_multi(mu0, np.diag(v0), mu1, np.diag(v1)) == pytest.approx(1 - bc, rel=1e-10)


def test_edge_cases_identical_and_far_apart():
    assert hellinger2_gauss_uni(3.0, 2.0, 3.0, 2.0) == 0.0
    assert hellinger2_gauss_uni(0.0, 1.0, 100.0, 1.0) == pytest.approx(1.0, abs=1e-12)
    assert hellinger2_gauss_uni(0.0, 1e-6, 0.0, 1e6) > 0.99  # same mean, very different spreads
    c = np.array([[1.0, 0.3], [0.3, 0.5]])
    assert hellinger2_gauss_multi(np.ones(2), c, np.ones(2), c) == pytest.approx(0.0, abs=1e-14)
    assert hellinger2_gauss_multi(np.zeros(2), c, np.array([50.0, -50.0]), c) == pytest.approx(1.0, abs=1e-12)
    # a singular covariance gives NaN for that sample only
    out = hellinger2_gauss_multi(np.zeros((2, 2)), np.stack([c, np.zeros((2, 2))]), np.zeros((2, 2)), np.stack([c, c]))
    assert out[0] == 0.0 and np.isnan(out[1])
    assert hellinger2_bernoulli(0.3, 0.3) == pytest.approx(0.0, abs=1e-15)
    assert hellinger2_bernoulli(1.0, 0.0) == 1.0


def test_bernoulli_h2_matches_definition_and_is_below_tv():
    rng = np.random.default_rng(1)
    p, q = rng.uniform(size=(2, 10_000))
    p[:50], q[50:100] = 0.0, 1.0  # boundaries
    h2 = hellinger2_bernoulli(p, q)
    direct = 0.5 * ((np.sqrt(p) - np.sqrt(q)) ** 2 + (np.sqrt(1 - p) - np.sqrt(1 - q)) ** 2)
    np.testing.assert_allclose(h2, direct, atol=1e-12)
    assert (h2 <= np.abs(p - q) + 1e-12).all()  # H^2 <= TV
    assert (h2 >= 0).all()


def test_violation_detection_on_hand_made_counts():
    # 0: clearly memorized (no violation); 1: mem strongly negative (violation);
    # 2: slightly negative within noise (no violation); 3: no IN shadow (undefined, not a violation);
    # 4: both sides always right (mem 0, H^2 0, smoothed se > 0: no violation)
    n_in = np.array([100, 100, 10, 0, 32]); c_in = np.array([100, 0, 9, 0, 32])
    n_out = np.array([100, 100, 10, 64, 32]); c_out = np.array([0, 100, 10, 30, 32])
    df = bernoulli_check(n_in, c_in, n_out, c_out, z=2.0)
    assert df["violation"].tolist() == [False, True, False, False, False]
    assert df["mem"].iloc[0] == 1.0 and df["H2_bernoulli"].iloc[0] == 1.0
    assert np.isnan(df["mem"].iloc[3])
    assert df["se_smooth"].iloc[4] > 0
    # a larger z forgives more: case 2 stays clean, case 1 (H^2 - mem = 2) is flagged at any sane z
    assert bernoulli_check(n_in, c_in, n_out, c_out, z=10.0)["violation"].tolist()[1]


def _phi(m=24, n=30, q=3, seed=0):
    rng = np.random.default_rng(seed)
    keep = synthetic_keep(m, n, 0, rng)
    a = rng.normal(0, 2, size=(1, n, 1))
    sep = np.where(np.arange(n) < n // 2, 3.0, 0.0)[None, :, None]
    noise = rng.multivariate_normal(np.zeros(q), 0.5 * np.eye(q) + 0.5, size=(m, n))
    return 500.0 + a + sep * keep[..., None] + noise, keep


def test_fits_equal_direct_recomputation_and_dask_equals_numpy():
    import dask.array as da

    phi, keep = _phi()
    f = gauss_fits(phi, keep)
    for i in (0, 7, 29):
        xi, xo = phi[keep[:, i], i], phi[~keep[:, i], i]
        np.testing.assert_allclose(f.mu_in[i], xi.mean(0), rtol=1e-12)
        np.testing.assert_allclose(f.cov_in[i], np.cov(xi, rowvar=False), rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(f.cov_out[i], np.cov(xo, rowvar=False), rtol=1e-8, atol=1e-10)
    lazy = gauss_fits(da.from_array(phi, chunks=(6, 16, 3)), keep)
    np.testing.assert_allclose(lazy.cov_in, f.cov_in, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(lazy.mu_out, f.mu_out, rtol=1e-12)


def test_theory_per_sample_end_to_end():
    phi, keep = _phi(m=32, n=40)
    correct = phi[..., 0] > 500.0 + 1.5 * np.array([0.0])  # a function of the signal: IN helps the separated half
    c = MemCounts(n_in=keep.sum(0), c_in=(correct & keep).sum(0), n_out=(~keep).sum(0), c_out=(correct & ~keep).sum(0))
    sel = np.arange(40) >= 2  # evaluate a subset; labels follow
    df = theory_per_sample(phi, keep, c, sample_ids=np.arange(100, 140), samples=sel, ridge=1e-3)
    assert len(df) == 38 and df["sample"].iloc[0] == 102
    for col in ("H2_gauss_uni", "H2_gauss_multi", "H2_bernoulli"):
        v = df[col].to_numpy()
        assert np.isfinite(v).all() and (v >= 0).all() and (v <= 1).all()
    # the separated half (IN shifts phi by 3 sd-units) is far apart; the other half close
    sep = df["sample"].to_numpy() < 120
    assert df.loc[sep, "H2_gauss_uni"].mean() > 0.5 > df.loc[~sep, "H2_gauss_uni"].mean()
    # univariate column equals the closed form on the fitted query-0 moments
    exp = hellinger2_gauss_uni(df["mu_in"], df["sd_in"] ** 2, df["mu_out"], df["sd_out"] ** 2)
    np.testing.assert_allclose(df["H2_gauss_uni"], exp, rtol=1e-10)
    # multi with more (correlated) queries sees at least about as much as query 0 alone
    assert df.loc[sep, "H2_gauss_multi"].mean() >= df.loc[sep, "H2_gauss_uni"].mean() - 0.05
    # the memorized half never violates; the null half (true mem 0) may by chance, at the
    # one-sided z-test rate (~2.3% per sample at z = 2)
    assert not df.loc[sep, "violation"].any() and df["violation"].sum() <= 2
    s = theory_summary(df, {"sep": sep, "all": np.ones(len(df), bool)})
    assert s.loc["all", "n"] == 38 and s.loc["sep", "n"] == 18
    assert s.loc["sep", "frac violations"] == 0.0
    assert s.loc["all", "expected by chance (null)"] == pytest.approx(38 * norm.sf(2.0))
    # estimation-noise floor: small for one query, larger for three; the separated half is far above it
    assert 0 < s.loc["all", "null H2_gauss_uni"] < s.loc["all", "null H2_gauss_multi"] < 0.3
    assert s.loc["sep", "mean H2_gauss_multi"] > 3 * s.loc["sep", "null H2_gauss_multi"]


def test_null_h2_matches_known_small_sample_behaviour():
    # fits to one distribution: H^2 > 0 from noise alone, shrinking as the counts grow, growing with Q
    assert null_h2(32, 32, 1) == pytest.approx(0.016, abs=0.004)
    assert null_h2(32, 32, 5) == pytest.approx(0.16, abs=0.02)
    assert null_h2(256, 256, 1) < null_h2(32, 32, 1) / 4
    assert np.isnan(null_h2(1, 10, 1))


def _null_h2_all_at_once(n_in, n_out, q, ridge=1e-3, reps=2000, seed=0):
    """null_h2 as it was before its draws were blocked: every replicate drawn and fitted at once."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((reps, n_in, q))
    b = rng.standard_normal((reps, n_out, q))

    def fit(x):
        mu = x.mean(axis=1)
        d = x - mu[:, None]
        return mu, np.einsum("rnq,rnp->rqp", d, d) / (x.shape[1] - 1)

    ma, ca = fit(a)
    mb, cb = fit(b)
    if q == 1:
        return float(hellinger2_gauss_uni(ma[:, 0], ca[:, 0, 0], mb[:, 0], cb[:, 0, 0]).mean())
    lam = ridge * (np.trace(ca, axis1=1, axis2=2) + np.trace(cb, axis1=1, axis2=2)) / (2 * q)
    eye = np.eye(q)
    return float(np.nanmean(hellinger2_gauss_multi(ma, ca + lam[:, None, None] * eye, mb, cb + lam[:, None, None] * eye)))


@pytest.mark.parametrize("n_in,n_out,q", [(32, 32, 1), (32, 29, 5), (7, 40, 18)])
@pytest.mark.parametrize("block_bytes", [1, 8 * 32 * 5 * 3 + 17, 64 << 20])
def test_null_h2_in_blocks_of_replicates_changes_no_bit(n_in, n_out, q, block_bytes):
    """The null's draws are made and fitted a block of replicates at a time (bounded memory at 2000
    shadows): one replicate per block, blocks that do not divide the replicates, or one block give
    the value of drawing every replicate at once, bit for bit (a block boundary that skipped or
    re-drew a replicate, or mixed the two sides' draws, would change it)."""
    want = _null_h2_all_at_once(n_in, n_out, q, reps=301, seed=3)
    assert null_h2(n_in, n_out, q, reps=301, seed=3, block_bytes=block_bytes) == want


def test_blocks_of_the_multivariate_distances_change_no_bit(monkeypatch):
    """H2_gauss_multi is computed a block of samples at a time (bounded temporaries): any block size
    gives the same frame, bit for bit."""
    import analysis.studies.theory as theory
    from analysis.kernels.stats import MemCounts

    rng = np.random.default_rng(2)
    m, n, q = 24, 500, 3
    keep = rng.random((m, n)) < 0.5
    phi = rng.normal(size=(m, n, q)) + keep[..., None] * rng.random((1, n, 1))
    phi[:, 7, :] = 1.0  # a degenerate sample (NaN fits) inside a block
    ok = rng.random((m, n)) < 0.7
    counts = MemCounts(n_in=keep.sum(0), c_in=(keep & ok).sum(0), n_out=(~keep).sum(0), c_out=(~keep & ok).sum(0))
    whole = theory.theory_per_sample(phi, keep, counts)
    monkeypatch.setattr(theory, "THEORY_BLOCK", 7)
    pd.testing.assert_frame_equal(theory.theory_per_sample(phi, keep, counts), whole)
    assert np.isfinite(whole["H2_gauss_multi"]).sum() > n // 2


@pytest.mark.parametrize("block", [7, 4096])
def test_given_fits_are_read_by_rows_of_the_evaluated_samples(monkeypatch, block):
    """With the pass' fits over every sample and ``samples`` a subset (the train split), the frame
    is that of the subset's own fits (what theory_per_sample copied out of them before), bit for
    bit, in blocks that do not divide the subset too."""
    import analysis.studies.theory as theory
    from analysis.kernels.stats import GaussFits, MemCounts

    rng = np.random.default_rng(5)
    m, n, q = 20, 300, 4
    keep = rng.random((m, n)) < 0.5
    phi = rng.normal(size=(m, n, q)) + keep[..., None] * rng.random((1, n, 1))
    keep[:, 11] = False
    keep[0, 11] = True  # one IN shadow: NaN fits inside the subset
    ok = rng.random((m, n)) < 0.7
    counts = MemCounts(n_in=keep.sum(0), c_in=(keep & ok).sum(0), n_out=(~keep).sum(0), c_out=(~keep & ok).sum(0))
    fits = gauss_fits(phi, keep)
    subset = rng.random(n) < 0.6
    subset[11] = True
    idx = np.flatnonzero(subset)
    ids = np.arange(n) + 1000
    own = GaussFits(*(getattr(fits, f)[idx] for f in ("n_in", "mu_in", "cov_in", "n_out", "mu_out", "cov_out")))
    own_counts = MemCounts(*(np.asarray(getattr(counts, f))[idx] for f in ("n_in", "c_in", "n_out", "c_out")))
    want = theory.theory_per_sample(None, keep[:, idx], own_counts, sample_ids=ids[idx], fits=own)
    monkeypatch.setattr(theory, "THEORY_BLOCK", block)
    got = theory.theory_per_sample(None, keep, counts, sample_ids=ids, samples=subset, fits=fits)
    pd.testing.assert_frame_equal(got, want, check_exact=True)
    assert np.isnan(got["H2_gauss_multi"]).any() and np.isfinite(got["H2_gauss_multi"]).sum() > len(idx) // 2

"""Hellinger distances between the IN and OUT distributions of each sample, and the check of Eq. 8.

Paper §2.2 (Eq. 4): ``H^2(P0, P1) = 1/2 * int (sqrt(p0) - sqrt(p1))^2 = 1 - BC(P0, P1)`` with the
Bhattacharyya coefficient ``BC = int sqrt(p0 p1)``; H^2 lies in [0, 1]. By Lemma 1 it is the
advantage of the soft likelihood-ratio test on one observation, and by Lemma 2 the optimal number
of observations (here: shadow models) to tell P0 from P1 is Theta(1 / H^2).

Three per-sample distances are computed:

``H2_gauss_uni``
    Gaussians fitted to phi (logit-scaled confidence, :func:`analysis.store_io.load.phi_from_logits`) of the
    identity query over the IN shadows and over the OUT shadows of the sample (ddof=1):
    ``H^2 = 1 - sqrt(2 s0 s1 / (s0^2 + s1^2)) * exp(-(m0 - m1)^2 / (4 (s0^2 + s1^2)))``.
``H2_gauss_multi``
    Multivariate Gaussians over the Q queries (§5.1):
    ``H^2 = 1 - (det G0 det G1)^(1/4) / det(G)^(1/2) * exp(-1/8 d^T G^-1 d)``, ``G = (G0 + G1) / 2``,
    evaluated in log space (``slogdet``, ``solve``) batched over samples. The sample covariances
    (ddof=1) of correlated queries are often near-singular (Q queries from M/2 shadows), so both
    get a ridge ``lambda * I`` with ``lambda = ridge * (tr G0 + tr G1) / (2 Q)`` per sample
    (default ``ridge = 1e-3``: relative to the sample's average per-query variance, so
    scale-free), plus the absolute variance floor below. With Q = 1 this equals the univariate
    form up to the ridge.
``H2_bernoulli``
    The IN/OUT distributions of the correctness indicator, Bernoulli(p_in) and Bernoulli(p_out),
    with ``p = correct / count`` over the IN / OUT shadows:
    ``H^2 = 1 - (sqrt(p_in p_out) + sqrt((1 - p_in)(1 - p_out)))``.

Variance floor: a sample every shadow fits identically has variance 0 on a side; variances are
floored at ``floor^2`` with ``floor = max(1e-4, 1e-3 * typical std)`` per query, the typical std
being the root of the median per-sample variance (the same scale-free idea as LiRA's
:func:`analysis.attacks.lira.sd_floor`), so that H^2 stays defined (two point masses at the same value
give 0, at different values ~1).

Caveat: H^2 of *fitted* Gaussians is biased upwards by estimation noise (two fits to samples from
one distribution are not identical), the more so the more dimensions per shadow: with M/2 = 32
shadows per side and Q = 5 queries, two fits to the *same* distribution have mean H^2 ~0.16
(~0.016 with Q = 1). :func:`null_h2` estimates this floor by simulation (it depends only on the
counts, Q and the ridge: H^2 and the fits are affine-invariant), and :func:`theory_summary`
reports it beside the means. Compare sets with one another and with the null, rather than read
absolute values.

The check of Eq. 8, ``H^2 <= mem``: for Bernoullis TV = |p_in - p_out| = |mem| and
``H^2 <= TV`` holds identically (also for the plug-in estimates), so the estimated H2_bernoulli
can exceed the *signed* mem only where mem < 0 (for small |mem|, ``H^2 - mem ~ -mem``). A
violation is counted only beyond sampling noise:
``H^2 - mem > z * se`` with ``z = 2`` by default and ``se`` the binomial standard error of mem
computed with add-1/2 smoothed proportions ``(c + 1/2) / (n + 1)``, so that it is not 0 where
every shadow on a side agrees (then the plain standard error is 0 and any difference would count).
This is a per-sample one-sided test: a sample with true mem = 0 is flagged with probability about
``P(Z > z)`` (2.3% at z = 2), so :func:`theory_summary` reports that chance count beside the count.
The same test is also reported, as a diagnostic only, for ``H2_gauss_uni``: by the data-processing
inequality, the distance between the distributions of the *outputs* may legitimately exceed that
between the correctness indicators (a function of them), so "violations" there are expected where
training on a sample moves its confidence but not its argmax, and do not contradict Eq. 8.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import pandas as pd
from scipy.stats import norm

from analysis.kernels.stats import GaussFits, fits_from_sums

__all__ = ["null_h2", "hellinger2_gauss_uni", "hellinger2_gauss_multi", "hellinger2_bernoulli", "bernoulli_check",
           "GaussFits", "gauss_fits", "theory_per_sample", "theory_summary"]


# --- closed forms -----------------------------------------------------------------------------

def hellinger2_gauss_uni(mu0: Any, var0: Any, mu1: Any, var1: Any) -> np.ndarray:
    """Squared Hellinger distance between N(mu0, var0) and N(mu1, var1), elementwise.

    ``1 - sqrt(2 s0 s1 / (var0 + var1)) * exp(-(mu0 - mu1)^2 / (4 (var0 + var1)))``, computed as
    ``-expm1(log BC)`` so that values near 0 keep their relative precision. Variances must be > 0.
    """
    mu0, var0, mu1, var1 = (np.asarray(a, dtype=np.float64) for a in (mu0, var0, mu1, var1))
    with np.errstate(invalid="ignore", divide="ignore"):
        vs = var0 + var1
        log_bc = 0.5 * (0.5 * np.log(var0) + 0.5 * np.log(var1) + np.log(2.0) - np.log(vs)) \
            - (mu0 - mu1) ** 2 / (4.0 * vs)
    return np.clip(-np.expm1(np.minimum(log_bc, 0.0)), 0.0, 1.0)


def hellinger2_gauss_multi(mu0: Any, cov0: Any, mu1: Any, cov1: Any) -> np.ndarray:
    """Squared Hellinger distance between multivariate Gaussians (paper §5.1), batched.

    Parameters
    ----------
    mu0, mu1 : array-like, shape (..., Q)
    cov0, cov1 : array-like, shape (..., Q, Q)
        Symmetric positive definite (add a ridge first if they may be singular).

    Returns
    -------
    ndarray, shape (...)
        ``1 - (det G0 det G1)^(1/4) / det((G0 + G1)/2)^(1/2) * exp(-1/8 d^T ((G0 + G1)/2)^-1 d)``;
        NaN where a covariance is not positive definite.
    """
    mu0, cov0, mu1, cov1 = (np.asarray(a, dtype=np.float64) for a in (mu0, cov0, mu1, cov1))
    g = 0.5 * (cov0 + cov1)
    s0, ld0 = np.linalg.slogdet(cov0)
    s1, ld1 = np.linalg.slogdet(cov1)
    sg, ldg = np.linalg.slogdet(g)
    d = mu0 - mu1
    ok = (s0 > 0) & (s1 > 0) & (sg > 0)
    # solve only where G is positive definite (a singular G would raise for the whole batch)
    eye = np.broadcast_to(np.eye(g.shape[-1]), g.shape)
    sol = np.linalg.solve(np.where(ok[..., None, None], g, eye), d[..., None])[..., 0]
    maha = np.einsum("...q,...q->...", d, sol)
    log_bc = 0.25 * (ld0 + ld1) - 0.5 * ldg - maha / 8.0
    h2 = np.clip(-np.expm1(np.minimum(log_bc, 0.0)), 0.0, 1.0)
    return np.where(ok, h2, np.nan)


def hellinger2_bernoulli(p_in: Any, p_out: Any) -> np.ndarray:
    """``1 - (sqrt(p_in p_out) + sqrt((1 - p_in)(1 - p_out)))``, elementwise, in [0, 1]."""
    p, q = np.asarray(p_in, dtype=np.float64), np.asarray(p_out, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        bc = np.sqrt(p * q) + np.sqrt((1.0 - p) * (1.0 - q))
    return np.clip(1.0 - bc, 0.0, 1.0)


def bernoulli_check(n_in: Any, c_in: Any, n_out: Any, c_out: Any, *, z: float = 2.0) -> pd.DataFrame:
    """Per-sample Bernoulli H^2 against mem (Eq. 8) with a noise-aware violation flag.

    Parameters
    ----------
    n_in, c_in, n_out, c_out : array-like, shape (N,)
        IN/OUT shadow counts and their correct predictions (:class:`analysis.studies.memorization.MemCounts`).
    z : float
        A violation is ``H2_bernoulli - mem > z * se_smooth`` (see the module docstring).

    Returns
    -------
    DataFrame with columns p_in, p_out, mem, tv, H2_bernoulli, se_smooth, violation (bool; False
    where undefined, e.g. test-split samples with no IN shadow).
    """
    n_in, c_in, n_out, c_out = (np.asarray(a, dtype=np.float64) for a in (n_in, c_in, n_out, c_out))
    ok = (n_in > 0) & (n_out > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        p_in = np.where(ok, c_in / n_in, np.nan)
        p_out = np.where(ok, c_out / n_out, np.nan)
        a_in = (c_in + 0.5) / (n_in + 1.0)
        a_out = (c_out + 0.5) / (n_out + 1.0)
        se = np.where(ok, np.sqrt(a_in * (1 - a_in) / n_in + a_out * (1 - a_out) / n_out), np.nan)
    mem = p_in - p_out
    h2 = hellinger2_bernoulli(p_in, p_out)
    with np.errstate(invalid="ignore"):
        viol = ok & (h2 - mem > z * se)
    return pd.DataFrame({"p_in": p_in, "p_out": p_out, "mem": mem, "tv": np.abs(mem), "H2_bernoulli": h2,
                         "se_smooth": se, "violation": viol})


def null_h2(n_in: int, n_out: int, q: int, *, ridge: float = 1e-3, reps: int = 2000, seed: int = 0,
            block_bytes: int = 64 << 20) -> float:
    """Mean H^2 between Gaussians fitted (as :func:`theory_per_sample` does) to ``n_in`` and ``n_out``
    draws of one and the same Q-dimensional Gaussian: the estimation-noise floor of H2_gauss_*.

    Monte Carlo with ``reps`` replicates (standard error ~ 0.002 at the default); the variance
    floor is ignored (it is far below the unit scale simulated here).

    The draws are made and fitted a block of replicates at a time, about ``block_bytes`` of draws
    each: the stream is the same as one draw of all of them, and each replicate's fit is its own,
    so no result depends on it (at 2000 shadows all draws at once were ~0.9 GB).
    """
    if n_in < 2 or n_out < 2 or q < 1:
        return float("nan")
    rng = np.random.default_rng(seed)

    def fit(x):
        mu = x.mean(axis=1)
        d = x - mu[:, None]
        return mu, np.einsum("rnq,rnp->rqp", d, d) / (x.shape[1] - 1)

    def fits(n):  # all of one side's draws (those of ``a``, then those of ``b``), in blocks of replicates
        step = max(1, int(block_bytes) // (8 * n * q))
        parts = [fit(rng.standard_normal((min(step, reps - lo), n, q))) for lo in range(0, reps, step)]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    ma, ca = fits(n_in)
    mb, cb = fits(n_out)
    if q == 1:
        return float(hellinger2_gauss_uni(ma[:, 0], ca[:, 0, 0], mb[:, 0], cb[:, 0, 0]).mean())
    lam = ridge * (np.trace(ca, axis1=1, axis2=2) + np.trace(cb, axis1=1, axis2=2)) / (2 * q)
    eye = np.eye(q)
    return float(np.nanmean(hellinger2_gauss_multi(ma, ca + lam[:, None, None] * eye, mb, cb + lam[:, None, None] * eye)))


# --- per-sample Gaussian fits -----------------------------------------------------------------

def _is_lazy(a: Any) -> bool:
    return hasattr(a, "chunks") and hasattr(a, "compute") and not isinstance(a, np.ndarray)


def gauss_fits(phi: Any, keep: Any, *, samples: np.ndarray | None = None) -> GaussFits:
    """Fit per-sample IN and OUT Gaussians (mean, full Q x Q covariance) to phi over the shadows.

    Parameters
    ----------
    phi : array-like, shape (M, N, Q)
        numpy, dask or an xarray DataArray (shadow, sample, query). Lazy input is reduced with dask
        (one read; memory ~ a few store chunks plus the (N, Q, Q) result).
    keep : array-like of bool, shape (M, N)
    samples : ndarray, optional
        Indices (or bool mask) of the samples to fit; default all.

    Returns
    -------
    GaussFits
    """
    if hasattr(phi, "dims") and hasattr(phi, "data"):  # xarray
        phi = phi.data
    keep = np.asarray(getattr(keep, "values", keep), dtype=bool)
    if samples is not None:
        samples = np.flatnonzero(samples) if np.asarray(samples).dtype == bool else np.asarray(samples)
        phi = phi[:, samples]
        keep = keep[:, samples]
    lazy = _is_lazy(phi)
    if lazy:
        import dask.array as da

        shift = np.asarray(phi[0].compute(), dtype=np.float64)
        kin = da.from_array(keep, chunks=phi.chunks[:2])
        xp = da
    else:
        phi = np.asarray(phi, dtype=np.float64)
        shift = phi[0]
        kin = keep
        xp = np
    d = phi.astype(np.float64) - shift  # shifted for numerically stable second moments
    d_in = xp.where(kin[..., None], d, 0.0)
    d_out = xp.where(kin[..., None], 0.0, d)
    parts = [d_in.sum(axis=0), xp.einsum("snq,snr->nqr", d_in, d_in),
             d_out.sum(axis=0), xp.einsum("snq,snr->nqr", d_out, d_out)]
    if lazy:
        import dask

        parts = list(dask.compute(*parts))
    s1i, s2i, s1o, s2o = (np.asarray(p, dtype=np.float64) for p in parts)
    return fits_from_sums(shift, keep.sum(axis=0), s1i, s2i, (~keep).sum(axis=0), s1o, s2o)


def _variance_floor(var_in: np.ndarray, var_out: np.ndarray) -> np.ndarray:
    """Per-query std floor ``max(1e-4, 1e-3 * typical std)``, the typical std being the root of the
    median per-sample variance over both sides (``var_*``: the covariances' diagonals, (N, Q);
    result shape (Q,))."""
    v = np.concatenate([var_in, var_out])
    with np.errstate(invalid="ignore"):
        typical = np.sqrt(np.nanmedian(v, axis=0)) if np.isfinite(v).any() else np.zeros(v.shape[-1])
    return np.maximum(1e-4, 1e-3 * np.nan_to_num(typical))


#: Samples per block of the multivariate Hellinger distances: each block's (B, Q, Q) temporaries
#: (ridged covariances, their mean, the determinants' and the solve's copies) instead of the whole
#: train split's (50,000 x 18 x 18 float64 is 130 MB per array). Samples are independent: no
#: result depends on it.
THEORY_BLOCK = 4096


def _h2_multi_block(fits: GaussFits, sl: slice | np.ndarray, floor: np.ndarray, ridge: float) -> np.ndarray:
    """H2_gauss_multi of the samples ``sl`` (a slice or indices) of ``fits`` (ridged and floored
    covariances; NaN where a fit is not finite)."""
    cov_in, cov_out, mu_in, mu_out = fits.cov_in[sl], fits.cov_out[sl], fits.mu_in[sl], fits.mu_out[sl]
    q = mu_in.shape[-1]
    eye = np.eye(q)
    with np.errstate(invalid="ignore"):
        tr = (np.trace(cov_in, axis1=-2, axis2=-1) + np.trace(cov_out, axis1=-2, axis2=-1)) / (2 * q)
    lam = ridge * np.nan_to_num(tr)[:, None, None] * eye
    fl = np.diag(floor ** 2)
    ci = cov_in + lam + fl
    co = cov_out + lam + fl
    good = np.isfinite(ci).all(axis=(-1, -2)) & np.isfinite(co).all(axis=(-1, -2)) & \
        np.isfinite(mu_in).all(-1) & np.isfinite(mu_out).all(-1)
    safe = lambda a, b: np.where(good[:, None, None] if a.ndim == 3 else good[:, None], a, b)  # noqa: E731
    h_multi = hellinger2_gauss_multi(safe(mu_in, 0.0), safe(ci, eye), safe(mu_out, 0.0), safe(co, eye))
    return np.where(good, h_multi, np.nan)


def theory_per_sample(phi: Any, keep: Any, counts: Any, *, sample_ids: np.ndarray | None = None,
                      samples: np.ndarray | None = None, ridge: float = 1e-3, z: float = 2.0,
                      fits: GaussFits | None = None) -> pd.DataFrame:
    """Per-sample Hellinger distances and the Eq. 8 check.

    Parameters
    ----------
    phi : array-like, shape (M, N, Q)
        phi of every done shadow (numpy, dask or xarray; see :func:`gauss_fits`).
    keep : array-like of bool, shape (M, N)
    counts : MemCounts
        Correctness counts of the same shadows (:func:`analysis.store_io.passes.reduce_over_shadows`'s third
        output, or :func:`analysis.studies.memorization.memorization_counts`); fields of shape (N,).
    sample_ids : ndarray, optional
        Labels for the ``sample`` column (default 0..N-1), before ``samples`` selection.
    samples : ndarray, optional
        Indices or bool mask of the samples to evaluate (e.g. the train split); default all.
    ridge : float
        Relative ridge on the multivariate covariances (module docstring).
    z : float
        Noise threshold of the violation flags, in standard errors.
    fits : GaussFits, optional
        Already computed fits over *all* samples (``phi`` is then not read; e.g.
        :attr:`analysis.store_io.passes.PassResult.fits`).

    Returns
    -------
    DataFrame, one row per evaluated sample: sample, n_in, n_out, mu_in, sd_in, mu_out, sd_out
    (query 0), H2_gauss_uni, H2_gauss_multi, p_in, p_out, mem, tv, H2_bernoulli, se_smooth,
    violation (H2_bernoulli - mem > z se), gauss_uni_exceeds_mem (diagnostic, see module docstring).
    """
    keep_np = np.asarray(getattr(keep, "values", keep), dtype=bool)
    n = keep_np.shape[1]
    idx = np.arange(n) if samples is None else (
        np.flatnonzero(samples) if np.asarray(samples).dtype == bool else np.asarray(samples))
    ids = (np.arange(n) if sample_ids is None else np.asarray(sample_ids))[idx]
    # ``rows``: the evaluated samples' rows of ``fits``; given fits over all samples are read a block
    # of rows at a time, not copied whole (two (N, Q, Q) float64 copies were 0.26 GB at 50,000 x 18)
    if fits is None:
        fits, rows = gauss_fits(phi, keep_np, samples=idx), np.arange(len(idx))
    else:
        rows = idx
    var_in = np.diagonal(fits.cov_in, axis1=-2, axis2=-1)[rows]
    var_out = np.diagonal(fits.cov_out, axis1=-2, axis2=-1)[rows]
    floor = _variance_floor(var_in, var_out)
    q = fits.mu_in.shape[-1]
    mu_in, mu_out = fits.mu_in[rows, 0], fits.mu_out[rows, 0]
    vi = np.maximum(var_in[:, 0], floor[0] ** 2)
    vo = np.maximum(var_out[:, 0], floor[0] ** 2)
    h_uni = hellinger2_gauss_uni(mu_in, vi, mu_out, vo)

    h_multi = np.concatenate([_h2_multi_block(fits, rows[lo:lo + THEORY_BLOCK], floor, ridge)
                              for lo in range(0, len(idx), THEORY_BLOCK)]) if len(idx) else np.empty(0)

    c = {k: np.asarray(getattr(counts, k))[idx] for k in ("n_in", "c_in", "n_out", "c_out")}
    b = bernoulli_check(c["n_in"], c["c_in"], c["n_out"], c["c_out"], z=z)
    with np.errstate(invalid="ignore"):
        g_exceeds = np.isfinite(h_uni) & np.isfinite(b["mem"].to_numpy()) & \
            (h_uni - b["mem"].to_numpy() > z * b["se_smooth"].to_numpy())
    df = pd.DataFrame({"sample": ids, "n_in": fits.n_in[rows], "n_out": fits.n_out[rows],
                       "mu_in": mu_in, "sd_in": np.sqrt(var_in[:, 0]),
                       "mu_out": mu_out, "sd_out": np.sqrt(var_out[:, 0]),
                       "H2_gauss_uni": h_uni, "H2_gauss_multi": h_multi})
    df = pd.concat([df, b.reset_index(drop=True)], axis=1)
    df["gauss_uni_exceeds_mem"] = g_exceeds
    df.attrs.update({"n_queries": int(q), "ridge": float(ridge), "z": float(z)})
    return df


def theory_summary(per_sample: pd.DataFrame, masks: Mapping[str, np.ndarray] | None = None,
                   z: float = 2.0) -> pd.DataFrame:
    """Per challenge set: counts, mean/median of mem and of each H^2, and violations of Eq. 8.

    Parameters
    ----------
    per_sample : DataFrame
        :func:`theory_per_sample`'s output.
    masks : mapping name -> bool ndarray aligned with ``per_sample``'s rows; default {"all": every row}.
    z : float
        The z the flags were computed with (:func:`theory_per_sample`); used for labels and the
        chance reference only.

    Returns
    -------
    DataFrame indexed by set: n, mean/median mem, mean/median H2_gauss_uni, H2_gauss_multi,
    H2_bernoulli, the null (estimation-noise) mean of H2_gauss_uni / _multi at the set's median
    IN/OUT counts (:func:`null_h2`), n_violations and frac_violations (Bernoulli, beyond z se), the number a
    per-sample one-sided z test flags by chance if every sample had mem = 0 exactly
    (``n * P(Z > z)``: for small |mem|, ``H^2 - mem ~ -mem``, so the flag is ~ ``mem < -z se``; a
    conservative reference, since samples every shadow agrees on cannot be flagged), n/frac where
    H2_gauss_uni exceeds mem beyond z se (diagnostic), max(H2_bernoulli - mem).
    """
    masks = {"all": np.ones(len(per_sample), dtype=bool)} if masks is None else masks
    q = int(per_sample.attrs.get("n_queries", 0))
    ridge = float(per_sample.attrs.get("ridge", 1e-3))
    null_cache: dict[tuple[int, int, int], float] = {}

    def null(n_in: int, n_out: int, qq: int) -> float:
        key = (n_in, n_out, qq)
        if key not in null_cache:
            null_cache[key] = null_h2(n_in, n_out, qq, ridge=ridge)
        return null_cache[key]

    rows = {}
    for name, mask in masks.items():
        d = per_sample[np.asarray(mask, dtype=bool)]
        ok = np.isfinite(d["mem"].to_numpy())
        d = d[ok]
        n = len(d)
        row = {"n": n}
        for col in ("mem", "H2_gauss_uni", "H2_gauss_multi", "H2_bernoulli"):
            v = d[col].to_numpy(dtype=np.float64)
            v = v[np.isfinite(v)]
            row[f"mean {col}"] = float(v.mean()) if v.size else np.nan
            row[f"median {col}"] = float(np.median(v)) if v.size else np.nan
        if n and q:
            ni, no = int(np.median(d["n_in"])), int(np.median(d["n_out"]))
            row["null H2_gauss_uni"] = null(ni, no, 1)
            row["null H2_gauss_multi"] = null(ni, no, q)
        nv = int(d["violation"].sum())
        ng = int(d["gauss_uni_exceeds_mem"].sum())
        row.update({f"n violations (H2_bern - mem > {z:g} se)": nv, "frac violations": nv / n if n else np.nan,
                    "expected by chance (null)": n * float(norm.sf(z)),
                    "n H2_gauss_uni > mem": ng, "frac H2_gauss_uni > mem": ng / n if n else np.nan,
                    "max H2_bern - mem": float((d["H2_bernoulli"] - d["mem"]).max()) if n else np.nan})
        rows[name] = row
    df = pd.DataFrame.from_dict(rows, orient="index")
    df.index.name = "set"
    return df

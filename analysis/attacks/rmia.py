"""RMIA (Zarifzadeh et al., ICML 2024), offline: relative likelihood against population samples.

For target theta and sample x (identity query, true-class probability ``Pr(x|theta) = p_y``):

* ``Pr(x)`` from the reference OUT models with the offline interpolation
  ``Pr(x) = 1/2 ((1 + a) Pr_OUT(x) + (1 - a))``, ``Pr_OUT`` the mean of ``p_y`` over the OUT
  references (``a`` default 0.3; the same formula is applied to the population samples z, for which
  every reference model is OUT);
* ``LR_x = Pr(x|theta) / Pr(x)``, likewise ``LR_z``;
* score(x) = fraction of population samples z with ``LR_x / LR_z >= gamma`` (gamma default 1).

Ties: the fraction takes only Z + 1 values, and on a well-fitted model many samples dominate every
z (score 1), which leaves the ROC no point between FPR 0 and the size of that tie, so TPR at 0.1%
FPR reads 0. With ``tiebreak=True`` (default) the score is ``(count + expit(log LR_x)) / (Z + 1)``,
still in [0, 1]: the count is unchanged (``floor(score * (Z + 1)) == count``), and within one count
the order is that of
``LR_x``, which is the order the count itself follows for a fixed target.

Population z: the test-split samples (never members of any shadow), at most ``max_z`` of them (a
fixed random subset). Without a test split: a fixed random subset of train samples, of which each
target uses those it did not train on (known non-members; their Pr(z) comes from the balanced
references, like x's).

Leave-one-out: ``Pr_OUT(x)`` from running sums of ``p_y`` over all shadows minus the target and one
partner (balanced counts, :meth:`analysis.kernels.stats.GaussianSums.without_pair`); ``Pr(z)`` from the
sums minus the target. The count over z is a sort and ``np.searchsorted`` on log-ratios,
O((N + Z) log Z) per target, never an N x Z comparison.
"""

from __future__ import annotations

import numba
import numpy as np
from scipy.special import expit

from ._common import SIGNALS, AttackContext, AttackResult

__all__ = ["run_rmia", "rmia_log_ratios", "population"]

_P = SIGNALS.index("prob")
_L = SIGNALS.index("loss")


def population(ctx: AttackContext, max_z: int = 5000, seed: int = 0) -> tuple[np.ndarray, bool]:
    """Indices of the population samples z and whether they are test-split (True) or a train subset."""
    rng = np.random.default_rng(seed)
    fixed = bool(ctx.test.any())
    z = np.flatnonzero(ctx.test if fixed else ctx.train)
    if z.size > max_z:
        z = np.sort(rng.choice(z, max_z, replace=False))
    return z, fixed


def _log_pr(p_out: np.ndarray, a: float) -> np.ndarray:
    return np.log(np.maximum(0.5 * ((1 + a) * p_out + (1 - a)), 1e-300))


def rmia_log_ratios(ctx: AttackContext, sl: slice, zidx: np.ndarray, a: float = 0.3,
                    x: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(log LR_x (B, N_train), log LR_z (B, Z))`` for the targets ``sl`` and population ``zidx``.

    ``x``: the targets' signals on all samples (B, N, 3) if already read.
    """
    sums, partner, _, _ = ctx.signal_sums()
    x = ctx.target_signals(sl) if x is None else x
    keep = ctx.keep[sl]
    tr = ctx.train
    ch = [_P]  # Pr(x | theta') needs the reference models' p_y only
    sums, partner, xp = sums.channels(ch), partner.channels(ch), x[..., ch]
    loo = sums.take(tr).without_pair(xp[:, tr], keep[:, tr], partner.take(tr))
    _, _, mu_out, _ = loo.unshifted_moments()
    lx = -x[:, tr, _L] - _log_pr(mu_out[..., 0], a)  # log p_y(theta) = -loss, exact
    if ctx.test[zidx].all():
        zl = sums.take(zidx).without(xp[:, zidx], keep[:, zidx])  # every reference is OUT for z
    else:
        zl = sums.take(zidx).without_pair(xp[:, zidx], keep[:, zidx], partner.take(zidx))
    _, _, mz, _ = zl.unshifted_moments()
    lz = -x[:, zidx, _L] - _log_pr(mz[..., 0], a)
    return lx, lz


@numba.njit(cache=True, nogil=True)
def _count_dominated(lz, use, q, cnt, nz):  # pragma: no cover - compiled
    """Row i: the finite ``lz[i, j]`` with ``use[i, j]`` sorted, ``nz[i]`` of them, and for each
    sample ``cnt[i, k]`` = how many are <= ``q[i, k]`` (``searchsorted(..., side="right")``)."""
    buf = np.empty(lz.shape[1])
    for i in range(lz.shape[0]):
        k = 0
        for j in range(lz.shape[1]):
            v = lz[i, j]
            if use[i, j] and np.isfinite(v):
                buf[k] = v
                k += 1
        zi = np.sort(buf[:k])
        nz[i] = k
        cnt[i] = np.searchsorted(zi, q[i], side="right")


def run_rmia(ctx: AttackContext, a: float = 0.3, gamma: float = 1.0, max_z: int = 5000, seed: int = 0,
             tiebreak: bool = True) -> AttackResult:
    """Scores (T, N_train) in [0, 1]: the fraction of population samples each sample dominates."""
    if not 0 <= a <= 1 or gamma <= 0:
        raise ValueError(f"need 0 <= a <= 1 and gamma > 0, got a={a}, gamma={gamma}")
    zidx, fixed = population(ctx, max_z, seed)
    scores = ctx.empty_scores()

    def batch(sl: slice) -> tuple[int, list[int]]:
        neutral, n_z = 0, []
        x = ctx.target_signals(sl)
        lx, lz = rmia_log_ratios(ctx, sl, zidx, a, x)
        kz = np.ones((len(lx), zidx.size), dtype=bool) if fixed else ~ctx.keep[sl][:, zidx]
        # LR_x / LR_z >= gamma  <=>  log LR_z <= log LR_x - log gamma: counted per row by a sort of
        # the row's population and a binary search per sample (one compiled loop over the rows)
        cnt = np.empty(lx.shape, dtype=np.int64)
        nz = np.empty(len(lx), dtype=np.int64)
        _count_dominated(lz, kz, lx - np.log(gamma), cnt, nz)
        n_z.extend(nz.tolist())
        bad = ~np.isfinite(lx)
        neutral += int(bad.sum())
        if tiebreak:
            frac = (cnt + expit(lx) * 0.999) / (nz[:, None] + 1)
        else:
            frac = cnt / np.maximum(nz, 1)[:, None]
        out = np.where(bad, 0.5, frac)
        scores[sl] = out
        return neutral, n_z

    done = ctx.map_batches(batch)
    neutral, n_z = sum(d[0] for d in done), [k for d in done for k in d[1]]
    return ctx.result("rmia", scores, neutral, a=a, gamma=gamma, tiebreak=tiebreak,
                      population="test split" if fixed else "train subset, OUT for the target",
                      n_z=int(np.median(n_z)) if n_z else 0)

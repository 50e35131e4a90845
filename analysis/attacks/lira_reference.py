"""LiRA scored as the reference code scores it (``analysis.lira_variant = "reference"``).

The reference is Carlini et al.'s ``research/mi_lira_2021`` in tensorflow/privacy: ``score.py``
turns logits into phi, ``plot.py`` (``generate_ours``, ``generate_ours_offline``) scores a held-out
model against the others. Our default (:mod:`analysis.attacks.lira`) differs on purpose; this module
reproduces the reference's per-target scores, given phi, so that both can be reported side by side
(``docs/lira-variants.md`` has the table of differences and what each does to the numbers).

For target t, the references are **all other** done shadows, in store order (the reference holds
out the last model(s) and fits on the rest). For every challenge sample i and query q:

* ``in_size`` = the smallest number of IN references over the challenge samples (the train split),
  ``out_size`` likewise; sample i uses its **first** ``in_size`` IN and ``out_size`` OUT references
  in shadow order (the reference pads its per-sample lists to a common length by truncation; we
  reproduce it exactly: with LiRA keep masks it also makes both counts independent of the target's
  membership, M/2 - 1 each);
* ``mu_in``, ``mu_out`` = the **median** of those values; ``sd_in``, ``sd_out`` = their population
  standard deviation (ddof 0);
* fixed variance (online): ``sd_in = sd_out = np.std(dat_in)``, one scalar over every truncated IN
  value of every challenge sample and query. The reference uses the IN values' std for *both*
  sides (``std_out = np.std(dat_in)`` in ``generate_ours``); reproduced, not corrected;
* every std gets ``+ 1e-30`` (the reference's only guard: a zero std makes scores huge, not
  infinite).

Scores, with ``lp(x; mu, sd) = scipy.stats.norm.logpdf(x, mu, sd + 1e-30)``, averaged over queries:

``lira-online``          ``mean_q [lp(x; mu_in, sd_in) - lp(x; mu_out, sd_out)]``
``lira-fixed-variance``  the same with the fixed std above on both sides
``lira-offline``         ``-mean_q lp(x; mu_out, sd_out)`` (two-sided: unlikely under OUT = member)

Orientation: the reference's ``prediction`` is "lower = member" (its ROC uses ``-prediction``);
ours is "higher = member", so each score here is exactly the negated reference prediction
(online: ``pr_in - pr_out`` with ``pr = -logpdf``; offline: ``logpdf``).

What is not the reference's: phi is ours (:func:`analysis.store_io.load.phi_from_logits`, exact; the
reference adds 1e-45 inside its logs, which only matters for saturated confidences); the challenge
points are the train split (the reference scores its whole training pool); scores are stored as
float32 like every attack's, and a score beyond float32's range (a zero std, e.g. one reference per
side) is clipped to it; a NaN score (a side with no reference at all, which then holds for every
sample of that target) is set to 0 and counted in ``n_neutral`` (the reference would fail there).

Cost: per target, a median over M/2 values for each (sample, query): O(T M N Q), about the
reference's; samples go in blocks so that memory stays at ``block_bytes`` per thread.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from analysis.attacks.lira import ATTACKS, LiraResult
from analysis.kernels.threads import thread_map

__all__ = ["STD_EPS", "reference_target_scores", "run_lira_reference"]

#: Added to every standard deviation, as the reference does.
STD_EPS = 1e-30
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
_F32_MAX = float(np.finfo(np.float32).max)


def _logpdf(x: np.ndarray, mu: np.ndarray, sd: np.ndarray | float) -> np.ndarray:
    """``scipy.stats.norm.logpdf(x, mu, sd)`` without scipy's per-call argument handling."""
    z = (x - mu) / sd
    return -0.5 * z * z - np.log(sd) - _HALF_LOG_2PI


def _first_k(order: np.ndarray, t: int, k: int) -> np.ndarray:
    """Per column of ``order`` (shadows of one side first, in store order), the first ``k`` entries
    other than shadow ``t``: shape (k, N)."""
    cand = order[:k + 1]
    # a stable sort of "is t" moves t (at most once per column) behind the others
    pick = np.argsort(cand == t, axis=0, kind="stable")[:k]
    return np.take_along_axis(cand, pick, axis=0)


def reference_target_scores(phi: np.ndarray, keep: np.ndarray, t: int, *, attacks: tuple[str, ...] = ATTACKS,
                            order_in: np.ndarray | None = None, order_out: np.ndarray | None = None,
                            block_bytes: int = 64 * 2**20, samples: np.ndarray | None = None
                            ) -> dict[str, np.ndarray]:
    """The reference's scores of target ``t`` against every other shadow (float64, "higher = member").

    Parameters
    ----------
    phi : ndarray, shape (M, N, Q)
        phi of every done shadow on the challenge samples.
    keep : ndarray of bool, shape (M, N)
    t : int
        The target's row.
    attacks : tuple of str
        Among :data:`analysis.attacks.lira.ATTACKS`.
    order_in, order_out : ndarray (M, N), optional
        ``argsort(~keep, axis=0, kind="stable")`` and ``argsort(keep, ...)``, when the caller scores
        several targets.
    block_bytes : int
        Rough memory for one block of samples' gathered reference values.
    samples : ndarray of int (N,), optional
        The columns of ``phi`` that are the N samples (default all): ``phi`` (e.g. memory-mapped
        from disk) is then read only where needed, never copied whole.

    Returns
    -------
    dict attack -> ndarray (N,); NaN where a side has no reference value.
    """
    keep = np.asarray(keep, dtype=bool)
    m, q = phi.shape[0], phi.shape[2]
    n = keep.shape[1]
    cols_of = np.arange(n) if samples is None else np.asarray(samples)
    if order_in is None:
        order_in = np.argsort(~keep, axis=0, kind="stable")
    if order_out is None:
        order_out = np.argsort(keep, axis=0, kind="stable")
    n_in = keep.sum(0) - keep[t]
    n_out = (~keep).sum(0) - ~keep[t]
    in_size, out_size = int(n_in.min()), int(n_out.min())
    x = np.asarray(phi[t], dtype=np.float64) if samples is None else np.asarray(phi[t][cols_of], dtype=np.float64)
    idx_in = _first_k(order_in, t, in_size)
    idx_out = _first_k(order_out, t, out_size)
    mu_in, sd_in = np.full((n, q), np.nan), np.full((n, q), np.nan)
    mu_out, sd_out = np.full((n, q), np.nan), np.full((n, q), np.nan)
    # (count, mean, sum of squared deviations) of all truncated IN / OUT values, combined over blocks
    pooled = {"in": (0, 0.0, 0.0), "out": (0, 0.0, 0.0)}
    b = max(1, block_bytes // max(1, (in_size + out_size) * q * 8))
    for s in range(0, n, b):
        cols = np.arange(s, min(s + b, n))
        for side, idx, mu, sd, k in (("in", idx_in, mu_in, sd_in, in_size), ("out", idx_out, mu_out, sd_out, out_size)):
            if k == 0:
                continue
            dat = np.asarray(phi[idx[:, cols], cols_of[cols]], dtype=np.float64)  # (k, block, Q)
            mu[cols] = np.median(dat, axis=0)
            sd[cols] = dat.std(axis=0)
            cnt, mean, m2 = pooled[side]
            bn, bmean = dat.size, float(dat.mean())
            bm2 = float(((dat - bmean) ** 2).sum())
            tot = cnt + bn
            delta = bmean - mean
            pooled[side] = (tot, mean + delta * bn / tot, m2 + bm2 + delta * delta * cnt * bn / tot)
    out: dict[str, np.ndarray] = {}
    for a in attacks:
        if a not in ATTACKS:
            raise ValueError(f"unknown attack {a!r}; choose from {ATTACKS}")
    if "lira-online" in attacks:
        out["lira-online"] = (_logpdf(x, mu_in, sd_in + STD_EPS) - _logpdf(x, mu_out, sd_out + STD_EPS)).mean(-1)
    if "lira-fixed-variance" in attacks:
        cnt, _, m2 = pooled["in"]
        g = math.sqrt(m2 / cnt) + STD_EPS if cnt else np.nan  # the IN std on both sides, as the reference
        out["lira-fixed-variance"] = (_logpdf(x, mu_in, g) - _logpdf(x, mu_out, g)).mean(-1)
    if "lira-offline" in attacks:
        out["lira-offline"] = -_logpdf(x, mu_out, sd_out + STD_EPS).mean(-1)
    return out


def run_lira_reference(phi: np.ndarray, keep: np.ndarray, train: np.ndarray, n_targets: int, *,
                       shadow_ids: np.ndarray | None = None, sample_ids: np.ndarray | None = None,
                       attacks: tuple[str, ...] = ATTACKS,
                       progress: Callable[[int], None] | None = None, threads: int = 1) -> LiraResult:
    """Attack the first ``n_targets`` shadows, each against all the others, as the reference does.

    Parameters
    ----------
    phi : ndarray, shape (M, N, Q)
        phi of every done shadow on every sample (e.g. :attr:`analysis.store_io.passes.PassResult.phi_all`).
    keep : ndarray of bool, shape (M, N)
    train : ndarray of bool, shape (N,)
        Challenge points; ``in_size`` / ``out_size`` and the fixed std are taken over them only.
    n_targets : int
    shadow_ids, sample_ids : ndarray, optional
        Store ids for the result's labels.
    attacks : tuple of str
    progress : callable, optional
        Called with 1 after each target.
    threads : int
        Threads the targets are scored on (no result depends on it).

    Returns
    -------
    LiraResult
        float32 scores (T, N_train), higher = member; ``n_neutral`` counts NaN scores set neutral.
    """
    keep = np.asarray(keep, dtype=bool)
    m, n = keep.shape
    train = np.asarray(train, dtype=bool)
    idx = np.flatnonzero(train)
    cols = idx if idx.size < n else None  # phi's train columns, read in place (no copy of phi)
    kp = keep[:, idx]
    order_in = np.argsort(~kp, axis=0, kind="stable")
    order_out = np.argsort(kp, axis=0, kind="stable")
    out = {a: np.empty((n_targets, idx.size), dtype=np.float32) for a in attacks}

    def one(t: int) -> dict[str, int]:
        s = reference_target_scores(phi, kp, t, attacks=attacks, order_in=order_in, order_out=order_out,
                                    samples=cols)
        nn = {}
        for a, v in s.items():
            bad = np.isnan(v)
            nn[a] = int(bad.sum())
            out[a][t] = np.clip(np.where(bad, 0.0, v), -_F32_MAX, _F32_MAX)
        if progress is not None:
            progress(1)
        return nn

    neutral = {a: 0 for a in attacks}
    for nn in thread_map(one, range(n_targets), threads):
        for a in attacks:
            neutral[a] += nn[a]
    shadow_ids = np.arange(m) if shadow_ids is None else np.asarray(shadow_ids)
    sample_ids = np.arange(n) if sample_ids is None else np.asarray(sample_ids)
    return LiraResult(targets=shadow_ids[:n_targets], samples=sample_ids[idx], member=kp[:n_targets],
                      scores=out, n_neutral=neutral)

"""Bootstrap confidence intervals for pooled AUROC and TPR at fixed FPR, over targets and samples.

The metrics of :mod:`analysis.metrics` pool every (target shadow, challenge sample) pair. Their
uncertainty has two sources: which target models were trained (targets) and which samples were
challenged (samples). One bootstrap replicate therefore

1. draws T targets with replacement from the T targets, and
2. draws N samples with replacement: one set of N samples shared by every drawn target
   (``samples="shared"``, the default: the crossed design, since the same challenge samples are
   attacked on every target, as in the experiment itself), or independently for each drawn target
   (``samples="within"``),

and computes the *pooled* metric over the T*N resampled pairs. Intervals are percentile intervals
of the B replicates, e.g. the 2.5 and 97.5 percentiles for 95%.

Implementation: a replicate is a vector of integer weights on the T*N original pairs (a pair drawn
k times has weight k). Drawing a target k times and its samples N times each is, for the pair
counts of that target, a Multinomial(k*N, uniform over N) draw, so the weights are drawn directly.
The pooled scores are sorted once; each replicate is then a weighted ROC over that fixed order:
cumulative weights of positives and negatives at every distinct score (ties form one ROC point, so
ties count one half in the AUROC, exactly as sklearn's ``roc_curve`` + ``auc``), no sorting per
replicate. AUROC is the trapezoidal area; TPR at FPR ``f`` is the largest TPR among ROC points with
FPR <= f (as :func:`analysis.metrics.tpr_at_fpr`). With unit weights the code reproduces the point
estimates of :func:`analysis.metrics.attack_metrics` (tested).

Large inputs (T * N * B above :data:`EXACT_BUDGET`, shared samples): the pair weights factorise,
``w_tj = k_t c_j``, and :func:`_fast_shared` never forms them for all pairs: the AUROC replicate is
its first-order expansion in the weights (one matrix product for all replicates), the TPR is exact
on a top prefix of the sorted pairs, and the draws are the exact path's, so the two are paired
(tested: identical TPR replicates, AUROC replicates within a few % of the interval width at
T = 40; the neglected terms shrink as 1/T + 1/N).

Replicates with no positive or no negative pair (possible for tiny inputs) are NaN and ignored by
the percentiles; their number is reported as ``n_degenerate``.

Notes on interpretation
-----------------------
* At FPR 0.1% with few negatives the TPR is decided by the handful of highest-scoring negatives;
  the intervals are then wide, and that is the honest answer (the tables show them).
* Why "shared" is the default: a sample's difficulty is common to all targets (its scores are
  correlated across targets). Drawing samples independently per target averages that sample-level
  variance over the T targets and understates it: on the demo store (64 CNN shadows, 180
  under-represented samples) LiRA-online's AUROC Under interval is [0.791, 0.811] "within" but
  [0.769, 0.839] "shared". "within" suits scores that are independent across targets.
* With scores that are i.i.d. across targets and samples, resampling both levels counts the
  sampling noise twice and the intervals are conservative (measured: 97-98% coverage of a 95%
  interval in that case, both schemes).
* Resampling with the same ``seed`` on inputs of the same shape draws the same weights, so the
  replicates of two attacks on the same (target, sample) pairs are paired.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numba
import numpy as np

__all__ = ["BootstrapResult", "bootstrap_metrics", "weighted_roc_metrics", "metric_names", "EXACT_BUDGET"]


def metric_names(fprs: Sequence[float]) -> list[str]:
    """``["AUROC", "TPR@0.1%", ...]``, the names used as keys of :class:`BootstrapResult`."""
    return ["AUROC"] + [f"TPR@{100 * f:g}%" for f in fprs]


@dataclass
class BootstrapResult:
    """Point estimates, percentile intervals and replicates of the pooled metrics.

    Attributes
    ----------
    point, lo, hi : dict metric -> float
        Metric on the original pairs and the interval bounds (keys: :func:`metric_names`).
    replicates : ndarray (B, K)
        Every replicate's metrics, columns in ``names`` order.
    names : list of str
    level : float
        Interval coverage, e.g. 0.95.
    n_boot, n_degenerate : int
        Replicates drawn, and those lacking positives or negatives (NaN, ignored).
    n_targets, n_samples, n_pos, n_neg : int
        Shape of the input and its class counts.
    """

    point: dict[str, float]
    lo: dict[str, float]
    hi: dict[str, float]
    replicates: np.ndarray
    names: list[str]
    level: float
    n_boot: int
    n_degenerate: int
    n_targets: int
    n_samples: int
    n_pos: int
    n_neg: int
    settings: dict = field(default_factory=dict)


class _SortedPairs:
    """Pooled pairs sorted by descending score, with the ends of the tie groups."""

    def __init__(self, member: np.ndarray, score: np.ndarray) -> None:
        s = np.asarray(score, dtype=np.float64).ravel()
        y = np.asarray(member, dtype=bool).ravel()
        if s.shape != y.shape:
            raise ValueError(f"member and score differ in shape: {np.shape(member)} vs {np.shape(score)}")
        if np.isnan(s).any():
            raise ValueError("scores contain NaN; score every pair (e.g. a neutral value) before the bootstrap")
        self.order = np.argsort(-s, kind="stable")
        ss = s[self.order]
        self.pos = y[self.order]
        # last index of each run of equal scores: one ROC point per distinct threshold
        self.ends = np.flatnonzero(np.append(ss[1:] != ss[:-1], True)) if ss.size else np.zeros(0, np.int64)


def weighted_roc_metrics(pairs: _SortedPairs, w: np.ndarray, fprs: Sequence[float]) -> np.ndarray:
    """Metrics of a batch of weightings of the sorted pairs.

    Parameters
    ----------
    pairs : _SortedPairs
    w : ndarray of int (b, P)
        Non-negative integer weights (draw counts) of the pairs *in the original (flattened) order*.
    fprs : sequence of float

    Returns
    -------
    ndarray (b, 1 + len(fprs)): AUROC, TPR at each FPR; NaN rows where a class has zero weight.
    """
    ws = np.asarray(w, dtype=np.int64)[:, pairs.order]
    if ws.size and ws.sum(axis=1).max() < 2**31:
        # one cumulative sum for both classes: a positive's weight goes to the high 32 bits, a
        # negative's to the low 32 bits; no carry between them since every total is < 2^31
        c = np.cumsum(ws << (32 * pairs.pos), axis=1)[:, pairs.ends]  # (b, G)
        tp = (c >> 32).astype(np.float64)
        fp = (c & 0xFFFFFFFF).astype(np.float64)
    else:
        wp = np.where(pairs.pos, ws, 0)
        tp = np.cumsum(wp, axis=1)[:, pairs.ends].astype(np.float64)
        fp = np.cumsum(ws - wp, axis=1)[:, pairs.ends].astype(np.float64)
    p_tot = tp[:, -1:]
    n_tot = fp[:, -1:]
    ok = (p_tot[:, 0] > 0) & (n_tot[:, 0] > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr = tp / p_tot
        fpr = fp / n_tot
    zero = np.zeros((tpr.shape[0], 1))
    tpr0 = np.concatenate([zero, tpr], axis=1)
    fpr0 = np.concatenate([zero, fpr], axis=1)
    out = np.empty((tpr.shape[0], 1 + len(fprs)))
    out[:, 0] = (np.diff(fpr0, axis=1) * (tpr0[:, 1:] + tpr0[:, :-1])).sum(axis=1) / 2.0
    rows = np.arange(tpr.shape[0])
    for j, f in enumerate(fprs):
        # FPR is non-decreasing along the points, so the admissible points are a prefix
        k = (fpr0 <= f).sum(axis=1) - 1  # >= 0: the (0, 0) point is always admissible
        out[:, 1 + j] = tpr0[rows, k]
    out[~ok] = np.nan
    return out


def _draw_weights(rng: np.random.Generator, b: int, t: int, n: int, samples: str) -> np.ndarray:
    """(b, T*N) integer weights of b bootstrap replicates."""
    k = rng.multinomial(t, np.full(t, 1.0 / t), size=b)  # (b, T): times each target is drawn
    if samples == "within":
        # k draws of a target, N samples each, independently: Multinomial(k N, uniform) counts per sample
        w = rng.multinomial(k * n, np.full(n, 1.0 / n))  # (b, T, N)
    elif samples == "shared":
        c = rng.multinomial(n, np.full(n, 1.0 / n), size=b)  # (b, N)
        w = k[:, :, None] * c[:, None, :]
    else:
        raise ValueError(f"samples must be 'within' or 'shared', got {samples!r}")
    return w.reshape(b, t * n)


def bootstrap_metrics(member: np.ndarray, score: np.ndarray, *, fprs: Sequence[float] = (0.001,),
                      n_boot: int = 200, seed: int = 0, level: float = 0.95, samples: str = "shared",
                      mask: np.ndarray | None = None, max_bytes: int = 16 * 2**20,
                      exact_budget: int | None = None) -> BootstrapResult:
    """Pooled AUROC and TPR@FPR with bootstrap percentile intervals over targets and samples.

    Parameters
    ----------
    member : ndarray of bool, shape (T, N)
        Truth of each (target, sample) pair (e.g. :attr:`analysis.lira.LiraResult.member`).
    score : ndarray, shape (T, N)
        Attack score, higher = more likely a member; no NaN.
    fprs : sequence of float
        FPRs at which the TPR is reported.
    n_boot : int
        B, replicates.
    seed : int
        Seed of the replicates (same seed and shape: same draws, so attacks are paired).
    level : float
        Interval coverage in (0, 1).
    samples : {"shared", "within"}
        Resample the samples once per replicate for all drawn targets (default), or independently
        per drawn target; see the module docstring.
    mask : ndarray of bool (N,), optional
        Restrict to these samples (a column such as "Under"); resampling is then within them.
    max_bytes : int
        Memory budget for a batch of replicates (each takes ~4 float64 copies of T*N).
    exact_budget : int, optional
        With ``samples="shared"``, inputs with more than this many pair-replicates (T * N * B;
        default :data:`EXACT_BUDGET`) take the fast path (:func:`_fast_shared`: linearised AUROC,
        exact TPR, exact class totals); smaller ones the exact weighted ROC of every replicate.

    Returns
    -------
    BootstrapResult
    """
    member = np.asarray(member, dtype=bool)
    score = np.asarray(score)
    if score.dtype != np.float32:  # float32 scores are keyed on their own bits: no float64 copy
        score = score.astype(np.float64)
    if member.ndim == 1:
        member, score = member[None], score[None]
    if member.shape != score.shape or member.ndim != 2:
        raise ValueError(f"member and score must both be (T, N), got {member.shape} and {score.shape}")
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        member, score = member[:, mask], score[:, mask]
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    fprs = [float(f) for f in fprs]
    names = metric_names(fprs)
    exact_budget = EXACT_BUDGET if exact_budget is None else int(exact_budget)
    t, n = member.shape
    n_pos = int(member.sum())
    settings = {"n_boot": n_boot, "seed": seed, "level": level, "samples": samples, "fprs": fprs}
    if t * n == 0:
        nan = {k: float("nan") for k in names}
        return BootstrapResult(dict(nan), dict(nan), dict(nan), np.full((0, len(names)), np.nan), names, level,
                               n_boot, n_boot, t, n, 0, 0, settings)
    if samples == "shared" and t * n * n_boot > exact_budget and 0 < n_pos < t * n:
        settings["method"] = "linearised AUROC, exact TPR (large input)"
        point, reps = _fast_shared(member, score, fprs, n_boot, seed, max_bytes)
    else:
        settings["method"] = "exact weighted ROC"
        pairs = _SortedPairs(member, score)
        point = weighted_roc_metrics(pairs, np.ones((1, t * n)), fprs)[0]
        rng = np.random.default_rng(seed)
        batch = max(1, min(n_boot, max_bytes // (t * n * 8 * 3)))
        reps = np.concatenate([weighted_roc_metrics(pairs, _draw_weights(rng, min(batch, n_boot - s), t, n, samples),
                                                    fprs) for s in range(0, n_boot, batch)])
    bad = np.isnan(reps).any(axis=1)
    a = 100 * (1 - level) / 2
    if bad.all():
        lo_v = hi_v = np.full(len(names), np.nan)
    else:
        lo_v, hi_v = np.percentile(reps[~bad], [a, 100 - a], axis=0)
    return BootstrapResult(point={k: float(v) for k, v in zip(names, point)},
                           lo={k: float(v) for k, v in zip(names, lo_v)},
                           hi={k: float(v) for k, v in zip(names, hi_v)},
                           replicates=reps, names=names, level=level, n_boot=n_boot, n_degenerate=int(bad.sum()),
                           n_targets=t, n_samples=n, n_pos=n_pos, n_neg=t * n - n_pos, settings=settings)


# --- large inputs: the linearised AUROC bootstrap ---------------------------------------------------

#: Above this many pair-replicates (T * N * B) the shared-sample bootstrap takes the fast path.
EXACT_BUDGET = 50_000_000


def _sorted_keys(member: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, int]:
    """The flattened pairs sorted ascending as uint64 keys: the score's order-preserving bits above,
    the pair index in the low ``b`` bits; returns ``(keys, b)``.

    One SIMD sort of integer keys instead of a 64-bit argsort: ~10x faster at 10^7 pairs. Scores
    are thereby compared on their top 64 - ceil(log2 P) bits (38 bits, ~1e-8 relative, at
    P = 4 * 10^7): closer scores count as tied in the intervals.
    """
    from .metrics import _order_keys

    p = member.size
    b = max(1, int(p - 1).bit_length())
    key = _order_keys(score.ravel())
    key >>= np.uint64(b)
    key <<= np.uint64(b)
    key |= np.arange(p, dtype=np.uint64)
    key.sort()
    return key, b


@numba.njit(cache=True, nogil=True)
def _tie_group(key, i, sh, mem_sorted):  # pragma: no cover - compiled
    """End (exclusive) of the tie group starting at ``i`` of the sorted keys, and its members."""
    v = key[i] >> sh
    j = i
    gp = 0
    while j < key.size and (key[j] >> sh) == v:
        gp += mem_sorted[j]
        j += 1
    return j, gp


@numba.njit(cache=True, nogil=True)
def _placements(key, b, member, g, mem_sorted):  # pragma: no cover - compiled
    """AUROC of the pairs and each pair's influence value ``g`` (at its index), from the sorted keys.

    Walks the tie groups twice: first the Mann-Whitney count (negatives below a positive, ties
    half), then ``g = (U_i / n_neg - A) / n_pos`` for a positive (U_i its placement) and
    ``(V_i / n_pos - A) / n_neg`` for a negative (V_i the positives above it, ties half).
    ``mem_sorted`` receives the membership in sorted order. Returns ``(A, n_pos, n_neg)``.
    """
    p = key.size
    low = (np.uint64(1) << np.uint64(b)) - np.uint64(1)
    sh = np.uint64(b)
    n_pos = 0
    for i in range(p):
        m = member[key[i] & low]
        mem_sorted[i] = m
        n_pos += m
    n_neg = p - n_pos
    u_sum = 0.0
    neg_below = 0
    i = 0
    while i < p:
        j, gp = _tie_group(key, i, sh, mem_sorted)
        gn = (j - i) - gp
        u_sum += gp * (neg_below + 0.5 * gn)
        neg_below += gn
        i = j
    if n_pos == 0 or n_neg == 0:
        return np.nan, n_pos, n_neg
    auc = u_sum / (float(n_pos) * float(n_neg))
    neg_below = 0
    pos_below = 0
    i = 0
    while i < p:
        j, gp = _tie_group(key, i, sh, mem_sorted)
        gn = (j - i) - gp
        g_pos = ((neg_below + 0.5 * gn) / n_neg - auc) / n_pos
        g_neg = (((n_pos - pos_below - gp) + 0.5 * gp) / n_pos - auc) / n_neg
        for k in range(i, j):
            g[key[k] & low] = g_pos if mem_sorted[k] else g_neg
        neg_below += gn
        pos_below += gp
        i = j
    return auc, n_pos, n_neg


def _prefix_tpr(w: np.ndarray, pos: np.ndarray, ends: np.ndarray, n_pos: np.ndarray, n_neg: np.ndarray,
                fprs: Sequence[float], complete: bool) -> tuple[np.ndarray, bool]:
    """TPR at each FPR of weightings ``w`` (b, L) of a descending top prefix of the pairs.

    ``pos``: membership along the prefix; ``ends``: last index of each tie group in it; ``n_pos``,
    ``n_neg``: (b,) total positive and negative weight of all pairs. Returns ``(tpr (b, F), ok)``,
    ``ok`` False when some row's prefix holds too little negative weight to decide its TPR (unless
    the prefix is ``complete``, i.e. all pairs).
    """
    tp = np.cumsum(np.where(pos, w, 0.0), axis=1)[:, ends]
    fp = np.cumsum(np.where(pos, 0.0, w), axis=1)[:, ends]
    f_max = max(fprs) if len(fprs) else 0.0
    if not complete and np.any(fp[:, -1] <= f_max * n_neg):
        return np.empty((w.shape[0], len(fprs))), False
    out = np.empty((w.shape[0], len(fprs)))
    rows = np.arange(w.shape[0])
    for j, f in enumerate(fprs):
        # the admissible points (FPR <= f) are a prefix; the (0, 0) point is always admissible
        kk = (fp <= f * n_neg[:, None]).sum(axis=1) - 1
        with np.errstate(invalid="ignore", divide="ignore"):
            out[:, j] = np.where(kk >= 0, tp[rows, np.maximum(kk, 0)], 0.0) / n_pos
    return out, True


@numba.njit(cache=True, nogil=True)
def _prefix_tpr_weighted(k, c, ti, si, mi, ends, n_pos, n_neg, fprs, complete, out):  # pragma: no cover
    """:func:`_prefix_tpr` of the replicate weights ``k[b, ti] * c[b, si]`` without forming them:
    fills ``out`` (B, F) and returns False when a replicate's prefix holds too little negative
    weight to decide its TPR (unless ``complete``)."""
    nb, nf = k.shape[0], fprs.size
    f_max = 0.0
    for j in range(nf):
        f_max = max(f_max, fprs[j])
    for b in range(nb):
        tp = 0.0
        fp = 0.0
        best = np.zeros(nf)  # the (0, 0) point is always admissible
        e = 0
        for i in range(ti.size):
            w = k[b, ti[i]] * c[b, si[i]]
            if mi[i]:
                tp += w
            else:
                fp += w
            if e < ends.size and ends[e] == i:  # the end of a tie group: a ROC point
                e += 1
                for j in range(nf):
                    if fp <= fprs[j] * n_neg[b]:
                        best[j] = tp
        if not complete and fp <= f_max * n_neg[b]:
            return False
        for j in range(nf):
            out[b, j] = best[j] / n_pos[b]
    return True


def _fast_shared(member: np.ndarray, score: np.ndarray, fprs: list[float], n_boot: int, seed: int,
                 max_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    """Point estimates (K,) and replicates (B, K) for the shared-sample design on large inputs.

    With shared samples a replicate's pair weight factorises, ``w_tj = k_t c_j`` (target and sample
    draw counts), so the bootstrap never needs per-pair weights over all T*N pairs:

    * AUROC: first-order (delta-method) expansion in the weights around 1,
      ``A(w) = A + sum_tj w_tj g_tj``, with ``g`` the AUROC's influence values from the pairs'
      placements (positives: ``(U/n_neg - A)/n_pos`` where U counts negatives below, ties half;
      negatives likewise), so each replicate is the bilinear form ``k^T G c``: one matrix product
      for all replicates. The dropped second-order terms are O(1/T + 1/N) of the first-order
      ones; the test compares the intervals with the exact bootstrap.
    * TPR at FPR f: exact. Only the highest-scoring pairs can decide it; the replicate's weighted
      ROC is walked over a top prefix of the sorted pairs that provably holds more than f of every
      replicate's negative weight (widened until it does).
    * The class totals ``k^T M c`` are exact.
    """
    t, n = member.shape
    p_tot = t * n
    key, nb = _sorted_keys(member, score)
    mem = np.empty(p_tot, dtype=np.bool_)
    g = np.empty(p_tot, dtype=np.float32)
    auc, n_pos, n_neg = _placements(key, nb, np.ascontiguousarray(member.ravel()), g, mem)
    n_pos, n_neg = float(n_pos), float(n_neg)
    g = g.reshape(t, n)
    mf = member.astype(np.float32)

    # the same draws as the exact path (same batches of the same generator): paired with it
    rng = np.random.default_rng(seed)
    batch = max(1, min(n_boot, max_bytes // (t * n * 8 * 3)))
    ks, cs = [], []
    for s0 in range(0, n_boot, batch):
        b = min(batch, n_boot - s0)
        ks.append(rng.multinomial(t, np.full(t, 1.0 / t), size=b))
        cs.append(rng.multinomial(n, np.full(n, 1.0 / n), size=b))
    k = np.concatenate(ks).astype(np.float32)  # (B, T) target draw counts
    c = np.concatenate(cs).astype(np.float64)  # (B, N) sample draw counts
    auc_b = auc + np.einsum("bn,bn->b", (k @ g).astype(np.float64), c)
    pos_b = np.einsum("bn,bn->b", (k @ mf).astype(np.float64), c)  # exact: small integers
    neg_b = float(t) * float(n) - pos_b
    del g, mf

    # TPR: walk the top of the (descending) order; start with 1.5x the negatives the largest FPR needs
    f_max = max(fprs) if fprs else 0.0
    need = int(min(n_neg, 1.5 * f_max * n_neg + 1000))
    length = int(min(p_tot, np.searchsorted(np.cumsum(~mem[::-1]), need) + 1))
    low, sh = np.uint64((1 << nb) - 1), np.uint64(nb)
    while True:
        lo = p_tot - length
        v0 = key[lo] >> sh
        while lo > 0 and (key[lo - 1] >> sh) == v0:  # the whole lowest tie group
            lo -= 1
        top = key[lo:][::-1]
        pair = (top & low).astype(np.int64)
        ti, si, mi, gi = pair // n, pair % n, mem[lo:][::-1], top >> sh
        ends = np.flatnonzero(np.append(gi[1:] != gi[:-1], True))
        point_tpr, ok = _prefix_tpr(np.ones((1, ti.size)), mi, ends, np.array([n_pos]), np.array([n_neg]), fprs,
                                    complete=lo == 0)
        tpr_b = np.empty((n_boot, len(fprs)))
        if ok:  # every replicate's weighted walk down the prefix in one compiled loop
            ok = _prefix_tpr_weighted(k, c, ti, si, mi, ends, pos_b, neg_b, np.asarray(fprs, dtype=np.float64),
                                      lo == 0, tpr_b)
        if ok:
            break
        length = min(p_tot, 2 * length)
    points = point_tpr[0]
    point = np.array([auc] + list(points))
    reps = np.column_stack([auc_b, tpr_b])
    reps[(pos_b == 0) | (neg_b == 0)] = np.nan  # a replicate without one class (tiny inputs only)
    return point, reps

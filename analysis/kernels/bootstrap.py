"""Bootstrap confidence intervals for pooled AUROC and TPR at fixed FPR, over targets and samples.

The metrics of :mod:`analysis.kernels.metrics` pool every (target shadow, challenge sample) pair. Their
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
FPR <= f (as :func:`analysis.kernels.metrics.tpr_at_fpr`). With unit weights the code reproduces the point
estimates of :func:`analysis.kernels.metrics.attack_metrics` (tested).

Large inputs (T * N * B above :data:`EXACT_BUDGET`, shared samples): the pair weights factorise,
``w_tj = k_t c_j``, and :func:`_fast_shared` never forms them for all pairs: the AUROC replicate is
its first-order expansion in the weights (one matrix product for all replicates), the TPR is exact
on a top prefix of the sorted pairs, and the draws are the exact path's, so the two are paired
(tested: identical TPR replicates, AUROC replicates within a few % of the interval width at
T = 40; the neglected terms shrink as 1/T + 1/N).

In bounded memory (``block_bytes``, issue #18): the fast path's pool (~16 bytes per pair: the sorted
keys and the AUROC influence values, 1.6 GB at 2000 x 50,000) waits on disk instead
(:class:`_DiskPool`): the keys are sorted a group of buckets at a time into a file (the passes of
:mod:`analysis.kernels.buckets`), the counts and influence values are walked from it a read at a
time (a tie group cut by a read is carried over), the influence values wait in one file per block
of samples until the block is multiplied by the target draws, and the TPR's top prefix is read
from the file's end. The keys are the in-memory pool's, so every number is too
(tests/test_bootstrap_bounded.py); ``k @ G`` is one product per aligned :data:`_KG_COLS`-column
block in both paths (one BLAS product over all columns gave other last bits, and other ones again
with another BLAS thread count).

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

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numba
import numpy as np

from analysis.kernels.buckets import BUCKET_BITS, bucket_gather, bucket_hist
from analysis.kernels.keys import _order_keys, order32
from analysis.kernels.pages import count_members, read_rows
from analysis.kernels.threads import thread_map

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


def _pairs(member: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(member bool (T, N), score float32 or float64 (T, N)), validated."""
    member = np.asarray(member, dtype=bool)
    score = np.asarray(score)
    if score.dtype != np.float32:  # float32 scores are keyed on their own bits: no float64 copy
        score = score.astype(np.float64)
    if member.ndim == 1:
        member, score = member[None], score[None]
    if member.shape != score.shape or member.ndim != 2:
        raise ValueError(f"member and score must both be (T, N), got {member.shape} and {score.shape}")
    return member, score


def bootstrap_metrics(member: np.ndarray, score: np.ndarray, *, fprs: Sequence[float] = (0.001,),
                      n_boot: int = 200, seed: int = 0, level: float = 0.95, samples: str = "shared",
                      mask: np.ndarray | None = None, max_bytes: int = 16 * 2**20,
                      exact_budget: int | None = None, threads: int = 1, block_bytes: int | None = None,
                      spill_dir: str | Path | None = None) -> BootstrapResult:
    """Pooled AUROC and TPR@FPR with bootstrap percentile intervals over targets and samples.

    Parameters
    ----------
    member : ndarray of bool, shape (T, N)
        Truth of each (target, sample) pair (e.g. :attr:`analysis.attacks.lira.LiraResult.member`).
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
    threads : int
        Threads the fast path runs on (:mod:`analysis.kernels.threads`; no result depends on it).
    block_bytes : int, optional
        Memory share of the fast path's pool: when its keys and influence values (~16 bytes per
        pair) exceed it, they are sorted a bucket group at a time into files under ``spill_dir``
        (default: the system's temporary folder), removed before returning (:class:`_DiskPool`).
        No result depends on it. ``member`` and ``score`` may then be read-only memmaps.

    Returns
    -------
    BootstrapResult
    """
    return bootstrap_columns(member, score, {"": mask}, fprs=fprs, n_boot=n_boot, seed=seed, level=level,
                             samples=samples, max_bytes=max_bytes, exact_budget=exact_budget, threads=threads,
                             block_bytes=block_bytes, spill_dir=spill_dir)[""]


def bootstrap_columns(member: np.ndarray, score: np.ndarray, masks: Mapping[str, np.ndarray | None], *,
                      fprs: Sequence[float] = (0.001,), n_boot: int = 200, seed: int = 0, level: float = 0.95,
                      samples: str = "shared", max_bytes: int = 16 * 2**20,
                      exact_budget: int | None = None, threads: int = 1, block_bytes: int | None = None,
                      spill_dir: str | Path | None = None) -> dict[str, BootstrapResult]:
    """:func:`bootstrap_metrics` of one attack's pairs for several columns (sample masks) at once.

    The pooled pairs are sorted once; each column on the fast path takes its pairs from that order
    in one linear pass instead of its own sort (scores are then compared, for ties, on the bits the
    whole pool keeps: all of a float32 score). ``masks`` maps a column name to a bool (N,) mask
    (None: every sample). Other parameters: :func:`bootstrap_metrics`.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if samples not in ("shared", "within"):
        raise ValueError(f"samples must be 'within' or 'shared', got {samples!r}")
    fprs = [float(f) for f in fprs]
    exact_budget = EXACT_BUDGET if exact_budget is None else int(exact_budget)
    if block_bytes is None or np.size(member) * 16 <= int(block_bytes):
        member, score = _pairs(member, score)
        return _columns(member, score, masks, fprs, n_boot, seed, level, samples, max_bytes, exact_budget, threads,
                        lambda: _SortedPool(member, score), lambda pool, mask: pool.subset(mask))
    if np.ndim(member) == 1:
        member, score = np.asarray(member)[None], np.asarray(score)[None]
    if np.ndim(member) != 2 or np.shape(member) != np.shape(score):
        raise ValueError(f"member and score must both be (T, N), got {np.shape(member)} and {np.shape(score)}")
    with tempfile.TemporaryDirectory(prefix="bootstrap-", dir=spill_dir) as tmp:
        return _columns(member, score, masks, fprs, n_boot, seed, level, samples, max_bytes, exact_budget, threads,
                        lambda: _DiskPool.build(member, score, int(block_bytes), Path(tmp)),
                        lambda pool, mask: pool.subset(mask, Path(tmp)), rows=max(1, int(block_bytes) // 32))


def _columns(member, score, masks, fprs, n_boot, seed, level, samples, max_bytes, exact_budget, threads,
             make_pool, make_subset, rows: int | None = None) -> dict[str, BootstrapResult]:
    """:func:`bootstrap_columns` once validated; ``make_pool()`` sorts the attack's pairs (at most
    once), ``make_subset(pool, mask)`` takes a column's from them; ``rows`` (bounded memory):
    count members ``rows`` pairs' worth of rows at a time instead of slicing whole columns."""
    t, n_all = member.shape
    pool = None
    out = {}
    for name, mask in masks.items():
        every = mask is None
        if not every:
            mask = np.asarray(mask, dtype=bool)
            if mask.shape != (n_all,):
                raise ValueError(f"mask {name!r} has shape {mask.shape}, expected ({n_all},)")
            every = bool(mask.all())
        n = n_all if every else int(mask.sum())
        n_pos = count_members(member, None if every else mask, rows)
        if samples == "shared" and t * n * n_boot > exact_budget and 0 < n_pos < t * n:
            if pool is None:
                pool = make_pool()
            sub = pool if every else make_subset(pool, mask)
            point, reps = _fast_shared(sub, member, None if every else mask, fprs, n_boot, seed, max_bytes, threads)
            method = "linearised AUROC, exact TPR (large input)"
            if sub is not pool and isinstance(sub, _DiskPool):
                sub.path.unlink()
            del sub
        else:
            # small by the exact budget (or one class only, or samples="within"): the column's pairs
            # are sliced whole, bounded or not
            m_sub, s_sub = _pairs(member if every else member[:, mask], score if every else score[:, mask])
            point, reps = _exact(m_sub, s_sub, fprs, n_boot, seed, samples, max_bytes)
            method = "exact weighted ROC"
            del m_sub, s_sub
        out[name] = _result(point, reps, fprs, level, n_boot, t, n, n_pos,
                            {"n_boot": n_boot, "seed": seed, "level": level, "samples": samples, "fprs": fprs,
                             "method": method})
    return out


def _exact(member: np.ndarray, score: np.ndarray, fprs: list[float], n_boot: int, seed: int, samples: str,
           max_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    """Point estimates (K,) and replicates (B, K): the weighted ROC of every replicate."""
    t, n = member.shape
    if t * n == 0:
        return np.full(1 + len(fprs), np.nan), np.full((0, 1 + len(fprs)), np.nan)
    pairs = _SortedPairs(member, score)
    point = weighted_roc_metrics(pairs, np.ones((1, t * n)), fprs)[0]
    rng = np.random.default_rng(seed)
    batch = _batch(t, n, n_boot, max_bytes)
    reps = np.concatenate([weighted_roc_metrics(pairs, _draw_weights(rng, min(batch, n_boot - s), t, n, samples),
                                                fprs) for s in range(0, n_boot, batch)])
    return point, reps


def _batch(t: int, n: int, n_boot: int, max_bytes: int) -> int:
    return max(1, min(n_boot, max_bytes // (t * n * 8 * 3)))


def _result(point: np.ndarray, reps: np.ndarray, fprs: list[float], level: float, n_boot: int, t: int, n: int,
            n_pos: int, settings: dict) -> BootstrapResult:
    names = metric_names(fprs)
    if t * n == 0:
        nan = {k: float("nan") for k in names}
        return BootstrapResult(dict(nan), dict(nan), dict(nan), reps, names, level, n_boot, n_boot, t, n, 0, 0,
                               settings)
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


@numba.njit(cache=True, nogil=True)
def _pack_f32(bits, member, key, off):  # pragma: no cover - compiled
    """``key[i]``: the order-preserving bits of float32 score ``i`` (``bits``: its uint32 view) in the
    high 32 bits, the pair index ``off + i`` shifted left by one from bit 1, the membership in bit 0.
    Returns False on a NaN."""
    for i in range(bits.size):
        u = bits[i]
        if (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000):
            return False
        key[i] = (np.uint64(order32(u)) << np.uint64(32)) | (np.uint64(off + i) << np.uint64(1)) | np.uint64(member[i])
    return True


@numba.njit(cache=True, nogil=True)
def _pack_keys(key, member, sh, off):  # pragma: no cover - compiled
    """Float64 order keys ``key`` (in place): the bits above ``sh`` kept, ``(off + i) << 1 | member[i]`` below."""
    high = ~((np.uint64(1) << np.uint64(sh)) - np.uint64(1))
    for i in range(key.size):
        key[i] = (key[i] & high) | (np.uint64(off + i) << np.uint64(1)) | np.uint64(member[i])


@numba.njit(cache=True, nogil=True)
def _subset_keys(key, sh, n, pos, n_sub, out):  # pragma: no cover - compiled
    """The sorted keys of the pairs whose sample ``i`` has ``pos[i] >= 0``, re-indexed to
    ``t * n_sub + pos[i]`` (order kept: still sorted); returns how many were written to ``out``."""
    low = (np.uint64(1) << np.uint64(sh - 1)) - np.uint64(1)
    high = ~((np.uint64(1) << np.uint64(sh)) - np.uint64(1))
    j = 0
    for k in range(key.size):
        idx = (key[k] >> np.uint64(1)) & low
        t = idx // np.uint64(n)
        q = pos[idx - t * np.uint64(n)]
        if q >= 0:
            out[j] = (key[k] & high) | ((t * np.uint64(n_sub) + np.uint64(q)) << np.uint64(1)) | (key[k] & np.uint64(1))
            j += 1
    return j


def _block_keys(member: np.ndarray, score: np.ndarray, off: int, sh: int) -> np.ndarray:
    """The (unsorted) pool keys of rows of pairs whose first pair has index ``off`` (see :class:`_SortedPool`)."""
    flat_m = np.ascontiguousarray(member, dtype=bool).reshape(-1).view(np.uint8)
    if score.dtype == np.float32 and sh <= 32:
        key = np.empty(flat_m.size, dtype=np.uint64)
        ok = _pack_f32(np.ascontiguousarray(score).reshape(-1).view(np.uint32), flat_m, key, off)
    else:
        ok = not np.isnan(score).any()
        key = _order_keys(score.reshape(-1))
        _pack_keys(key, flat_m, sh, off)
    if not ok:
        raise ValueError("scores contain NaN; score every pair (e.g. a neutral value) before the bootstrap")
    return key


class _SortedPool:
    """One attack's pairs sorted ascending as uint64 keys: the score's order-preserving bits above
    bit ``sh``, the pair index ``t * n + i`` from bit 1, the membership in bit 0.

    One SIMD sort of integer keys instead of a 64-bit argsort (~10x faster at 10^7 pairs); the
    membership travels in the key, so no gather by pair index is needed to walk the order. float32
    scores keep all their 32 bits; float64 scores are compared on their top ``64 - sh`` bits (37
    bits, ~1e-8 relative, at 4 * 10^7 pairs): closer scores count as tied in the intervals.
    """

    def __init__(self, member: np.ndarray, score: np.ndarray) -> None:
        self.t, self.n = member.shape
        p = member.size
        self.sh = max(1, int(p - 1).bit_length()) + 1
        self.key = _block_keys(member, score, 0, self.sh)
        self.key.sort()

    def subset(self, mask: np.ndarray) -> "_SortedPool":
        """The pool of the (T, mask.sum()) pairs of the samples in ``mask``, from this order in one pass."""
        pos = np.full(self.n, -1, dtype=np.int64)
        pos[mask] = np.arange(int(mask.sum()))
        n_sub = int(mask.sum())
        out = np.empty(self.t * n_sub, dtype=np.uint64)
        j = _subset_keys(self.key, self.sh, self.n, pos, n_sub, out)
        assert j == out.size
        sub = object.__new__(_SortedPool)
        sub.t, sub.n, sub.sh, sub.key = self.t, n_sub, self.sh, out
        return sub

    def auroc_terms(self, k: np.ndarray, threads: int) -> tuple[float, int, int, np.ndarray]:
        """AUROC, positives, negatives and ``k @ G`` (B, n) float32, ``G`` the pairs' influence values."""
        g = np.empty(self.t * self.n, dtype=np.float32)
        auc, n_pos, n_neg = _placements(self, g, threads)
        kg = np.empty((k.shape[0], self.n), dtype=np.float32)
        _kg_into(k, g.reshape(self.t, self.n), kg, 0)
        return auc, n_pos, n_neg, kg

    def top_length(self, need: int) -> int:
        """Pairs from the top of the order down to and including the ``need``-th negative."""
        return int(_top_length(self.key, need))

    def group_start(self, lo: int) -> int:
        """First index of the tie group holding ``key[lo]``."""
        key, s = self.key, np.uint64(self.sh)
        v0 = key[lo] >> s
        while lo > 0 and (key[lo - 1] >> s) == v0:
            lo -= 1
        return lo

    def keys(self, a: int, b: int) -> np.ndarray:
        return self.key[a:b]


@numba.njit(cache=True, nogil=True)
def _group_influence(neg_below, pos_below, gn, gp, n_pos, n_neg, auc):  # pragma: no cover - compiled
    """The AUROC influence of a positive and of a negative in a tie group of ``gp`` positives and
    ``gn`` negatives above ``neg_below`` negatives and ``pos_below`` positives."""
    g_pos = ((neg_below + 0.5 * gn) / n_neg - auc) / n_pos
    g_neg = (((n_pos - pos_below - gp) + 0.5 * gp) / n_pos - auc) / n_neg
    return g_pos, g_neg


@numba.njit(cache=True, nogil=True)
def _tie_group(key, i, hi, sh):  # pragma: no cover - compiled
    """End (exclusive, at most ``hi``) of the tie group starting at ``i`` and its positives."""
    s = np.uint64(sh)
    v = key[i] >> s
    j = i
    gp = 0
    while j < hi and (key[j] >> s) == v:
        gp += key[j] & np.uint64(1)
        j += 1
    return j, gp


@numba.njit(cache=True, nogil=True)
def _count_range(key, lo, hi, sh):  # pragma: no cover - compiled
    """Positives, negatives and the Mann-Whitney sum (negatives below each positive, ties one half)
    of ``key[lo:hi]``, counting only the negatives inside the range."""
    n_pos = 0
    neg_below = 0
    u = 0.0
    i = lo
    while i < hi:
        j, gp = _tie_group(key, i, hi, sh)
        gn = (j - i) - gp
        u += gp * (neg_below + 0.5 * gn)
        neg_below += gn
        n_pos += gp
        i = j
    return n_pos, neg_below, u


@numba.njit(cache=True, nogil=True)
def _influence_range(key, lo, hi, sh, neg_below, pos_below, n_pos, n_neg, auc, g):  # pragma: no cover
    """``g`` at the pairs of ``key[lo:hi]``: ``(U / n_neg - A) / n_pos`` for a positive (U: negatives
    below, ties half), ``(V / n_pos - A) / n_neg`` for a negative (V: positives above, ties half);
    ``neg_below``, ``pos_below``: the counts below ``lo``."""
    low = (np.uint64(1) << np.uint64(sh - 1)) - np.uint64(1)
    i = lo
    while i < hi:
        j, gp = _tie_group(key, i, hi, sh)
        gn = (j - i) - gp
        g_pos, g_neg = _group_influence(neg_below, pos_below, gn, gp, n_pos, n_neg, auc)
        for k in range(i, j):
            g[(key[k] >> np.uint64(1)) & low] = g_pos if key[k] & np.uint64(1) else g_neg
        neg_below += gn
        pos_below += gp
        i = j


#: Columns of one ``k @ G`` product: both paths multiply the same aligned column blocks, so the
#: bounded one (a few blocks in memory at a time) gives the whole one's bits (a BLAS product's last
#: bits depend on its shape).
_KG_COLS = 2048


def _kg_into(k: np.ndarray, g: np.ndarray, out: np.ndarray, j0: int) -> None:
    """``out[:, j0:j0 + w] = k @ g`` (g (T, w)), one :data:`_KG_COLS`-column product at a time;
    ``j0`` is a multiple of :data:`_KG_COLS` (the blocks are the same whatever ``w``)."""
    for c0 in range(0, g.shape[1], _KG_COLS):
        blk = np.ascontiguousarray(g[:, c0:c0 + _KG_COLS])
        out[:, j0 + c0:j0 + c0 + blk.shape[1]] = k @ blk


def _placements(pool: _SortedPool, g: np.ndarray, threads: int = 1) -> tuple[float, int, int]:
    """AUROC, positives and negatives of the pool; fills ``g`` (flat, pair order) with each pair's
    AUROC influence value. On ``threads`` threads, each on one range of the order (ranges split
    between tie groups); the counts are integers and halves, so their sum is exact in any grouping."""
    key, sh, p = pool.key, pool.sh, pool.key.size
    w = max(1, min(int(threads), p))
    cuts = [0]
    for k in range(1, w):
        c = max(cuts[-1], p * k // w)
        while 0 < c < p and (key[c] >> np.uint64(sh)) == (key[c - 1] >> np.uint64(sh)):
            c += 1
        cuts.append(c)
    ranges = list(zip(cuts, cuts[1:] + [p]))
    counts = thread_map(lambda r: _count_range(key, r[0], r[1], sh), ranges, w)
    n_pos, n_neg = sum(c[0] for c in counts), sum(c[1] for c in counts)
    if n_pos == 0 or n_neg == 0:
        return np.nan, n_pos, n_neg
    below = np.cumsum([(0, 0)] + [(c[1], c[0]) for c in counts[:-1]], axis=0)  # negatives, positives below
    u = sum(c[2] + c[0] * float(nb) for c, (nb, _) in zip(counts, below))
    auc = u / (float(n_pos) * float(n_neg))
    thread_map(lambda i: _influence_range(key, ranges[i][0], ranges[i][1], sh, int(below[i][0]), int(below[i][1]),
                                          n_pos, n_neg, auc, g), range(len(ranges)), w)
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
def _top_length(key, need):  # pragma: no cover - compiled
    """Pairs from the top of the (ascending) order down to and including the ``need``-th negative."""
    seen = 0
    for i in range(key.size - 1, -1, -1):
        if not key[i] & np.uint64(1):
            seen += 1
            if seen >= need:
                return key.size - i
    return key.size


@numba.njit(cache=True, nogil=True)
def _prefix_walk(kt, ct, ti, si, mi, end, thr, b0, b1, best, fp_end):  # pragma: no cover - compiled
    """Replicates ``b0:b1`` walking down a descending prefix: the weight of pair ``i`` in replicate
    ``b`` is ``kt[ti[i], b] * ct[si[i], b]``; at each tie-group end (``end[i]``) every FPR ``j`` with
    ``fp <= thr[j, b]`` records the TP weight in ``best[j, b]``. The inner loops run over
    replicates, contiguous in every array (the draw counts are small integers: ``kt``, ``ct`` are
    uint8 where they fit, so a pair's rows come from cache). ``fp_end[b]``: the prefix's negative weight."""
    nb = b1 - b0
    nf = thr.shape[0]
    tp = np.zeros(nb)
    fp = np.zeros(nb)
    for i in range(ti.size):
        kr = kt[ti[i], b0:b1]
        cr = ct[si[i], b0:b1]
        if mi[i]:
            for b in range(nb):
                tp[b] += np.float64(kr[b]) * np.float64(cr[b])
        else:
            for b in range(nb):
                fp[b] += np.float64(kr[b]) * np.float64(cr[b])
        if end[i]:
            for j in range(nf):
                bj = best[j, b0:b1]
                tj = thr[j, b0:b1]
                for b in range(nb):  # branch-free: fp only grows, so the last admissible end wins
                    bj[b] = tp[b] if fp[b] <= tj[b] else bj[b]
    fp_end[b0:b1] = fp


def _compact(a: np.ndarray) -> np.ndarray:
    """Draw counts, transposed to (items, B), as uint8 when they fit (they do unless a few items are drawn)."""
    a = np.asarray(a).T
    return np.ascontiguousarray(a, dtype=np.uint8 if a.size and a.max() < 256 else np.float64)


_DRAWS: dict = {}


def _shared_draws(t: int, n: int, n_boot: int, seed: int, max_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    """(k (B, T) target draw counts, c (B, N) sample draw counts), the exact path's draws (same
    batches of the same generator, so the two are paired); the last few are kept, read-only: every
    attack of a table draws the same ones."""
    key = (t, n, n_boot, seed, _batch(t, n, n_boot, max_bytes))
    if key not in _DRAWS:
        rng = np.random.default_rng(seed)
        ks, cs = [], []
        for s0 in range(0, n_boot, key[-1]):
            b = min(key[-1], n_boot - s0)
            ks.append(rng.multinomial(t, np.full(t, 1.0 / t), size=b))
            cs.append(rng.multinomial(n, np.full(n, 1.0 / n), size=b))
        k, c = np.concatenate(ks).astype(np.float32), np.concatenate(cs).astype(np.float64)
        k.flags.writeable = c.flags.writeable = False
        while len(_DRAWS) >= 4:
            _DRAWS.pop(next(iter(_DRAWS)))
        _DRAWS[key] = (k, c)
    return _DRAWS[key]


def _fast_shared(pool: "_SortedPool | _DiskPool", member: np.ndarray, mask: np.ndarray | None, fprs: list[float],
                 n_boot: int, seed: int, max_bytes: int, threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Point estimates (K,) and replicates (B, K) for the shared-sample design on large inputs.

    ``pool``: the sorted pairs of ``member[:, mask]`` (``mask`` None: every sample), in memory or
    on disk (:class:`_DiskPool`, the same keys: the same numbers).

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
    t, n = pool.t, pool.n
    p_tot = t * n
    k, c = _shared_draws(t, n, n_boot, seed, max_bytes)
    auc, n_pos, n_neg, kg = pool.auroc_terms(k, threads)
    n_pos, n_neg = float(n_pos), float(n_neg)
    auc_b = auc + np.einsum("bn,bn->b", kg.astype(np.float64), c)
    del kg
    km = np.zeros((n_boot, n), dtype=np.float32)
    rows = max(1, (32 << 20) // (4 * n))
    for r0 in range(0, t, rows):  # k @ member in row blocks: no float copy of the whole member
        mb = read_rows(member, r0, r0 + rows).astype(bool, copy=False)
        km += k[:, r0:r0 + rows] @ (mb if mask is None else mb[:, mask]).astype(np.float32)
    pos_b = np.einsum("bn,bn->b", km.astype(np.float64), c)  # exact: small integers
    neg_b = float(t) * float(n) - pos_b
    del km

    # TPR: walk the top of the (descending) order; start with 1.5x the negatives the largest FPR needs
    f_max = max(fprs) if fprs else 0.0
    sh = pool.sh
    length = pool.top_length(int(min(n_neg, 1.5 * f_max * n_neg + 1000)))
    low, s = np.uint64((1 << (sh - 1)) - 1), np.uint64(sh)
    kt, ct = _compact(k), _compact(c)  # (T, B), (N, B): a pair's replicate weights contiguous
    thr = np.asarray(fprs, dtype=np.float64)[:, None] * neg_b[None, :]  # (F, B)
    w = max(1, min(int(threads), n_boot))
    parts = [(n_boot * k // w, n_boot * (k + 1) // w) for k in range(w)]  # replicates per thread
    while True:
        lo = pool.group_start(p_tot - length)  # the whole lowest tie group
        top = pool.keys(lo, p_tot)[::-1]
        pair = ((top >> np.uint64(1)) & low).astype(np.int64)
        ti, si, mi, gi = pair // n, pair % n, (top & np.uint64(1)).astype(np.bool_), top >> s
        end = np.append(gi[1:] != gi[:-1], True)
        point_tpr, ok = _prefix_tpr(np.ones((1, ti.size)), mi, np.flatnonzero(end), np.array([n_pos]),
                                    np.array([n_neg]), fprs, complete=lo == 0)
        best = np.zeros((len(fprs), n_boot))
        fp_end = np.empty(n_boot)
        if ok:  # every replicate's weighted walk down the prefix, replicates split over the threads
            thread_map(lambda h: _prefix_walk(kt, ct, ti, si, mi, end, thr, h[0], h[1], best, fp_end), parts, w)
            ok = lo == 0 or bool(np.all(fp_end > f_max * neg_b))
        if ok:
            break
        length = min(p_tot, 2 * length)
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr_b = best.T / pos_b[:, None]
    point = np.array([auc] + list(point_tpr[0]))
    reps = np.column_stack([auc_b, tpr_b])
    reps[(pos_b == 0) | (neg_b == 0)] = np.nan  # a replicate without one class (tiny inputs only)
    return point, reps


# --- the fast path in bounded memory: the sorted pool on disk ------------------------------------

@numba.njit(cache=True, nogil=True)
def _count_carry(key, sh, st, cur, u):  # pragma: no cover - compiled
    """Continue the pool's counts over ``key`` (the next sorted keys): ``st`` = [open group, its
    negatives, its positives, negatives below it, positives below it], ``cur[0]`` its value, ``u[0]``
    the Mann-Whitney sum of the closed groups (negatives below each positive, ties one half). A tie
    group is closed when a different value comes, so a group cut between two reads counts once."""
    s = np.uint64(sh)
    for i in range(key.size):
        v = key[i] >> s
        if st[0] == 0 or v != cur[0]:
            _close_group(st, u)
            st[0] = 1
            cur[0] = v
        if key[i] & np.uint64(1):
            st[2] += 1
        else:
            st[1] += 1


@numba.njit(cache=True, nogil=True)
def _close_group(st, u):  # pragma: no cover - compiled
    if st[0] != 0:
        u[0] += st[2] * (st[3] + 0.5 * st[1])
        st[3] += st[1]
        st[4] += st[2]
        st[0] = st[1] = st[2] = 0


@numba.njit(cache=True, nogil=True)
def _last_group_start(key, sh):  # pragma: no cover - compiled
    """First index of the last tie group of ``key`` (sorted)."""
    s = np.uint64(sh)
    i = key.size - 1
    while i > 0 and (key[i - 1] >> s) == (key[key.size - 1] >> s):
        i -= 1
    return i


@numba.njit(cache=True, nogil=True)
def _influence_sorted(key, hi, sh, neg_below, pos_below, n_pos, n_neg, auc, g):  # pragma: no cover
    """:func:`_influence_range` over the whole tie groups of ``key[:hi]``, ``g`` written in key order
    (``g[i]`` for ``key[i]``); returns the negatives and positives below ``hi``."""
    i = 0
    while i < hi:
        j, gp = _tie_group(key, i, hi, sh)
        gn = (j - i) - gp
        g_pos, g_neg = _group_influence(neg_below, pos_below, gn, gp, n_pos, n_neg, auc)
        for k in range(i, j):
            g[k] = g_pos if key[k] & np.uint64(1) else g_neg
        neg_below += gn
        pos_below += gp
        i = j
    return neg_below, pos_below


@numba.njit(cache=True, nogil=True)
def _one_group(key, gp, gn, neg_below, pos_below, n_pos, n_neg, auc, g):  # pragma: no cover - compiled
    """:func:`_influence_sorted` for part of a tie group of ``gp`` positives and ``gn`` negatives."""
    g_pos, g_neg = _group_influence(neg_below, pos_below, gn, gp, n_pos, n_neg, auc)
    for k in range(key.size):
        g[k] = g_pos if key[k] & np.uint64(1) else g_neg


@numba.njit(cache=True, nogil=True)
def _by_column_block(key, gbits, sh, n, width, out):  # pragma: no cover - compiled
    """The pairs of ``key`` (their influence values' bits ``gbits``) grouped by block of ``width``
    samples, in ``out`` as ``local index << 32 | bits``, the local index ``t * w + (i - i0)`` in the
    block's own (T, w) array; returns the blocks' starts in ``out`` (n_blocks + 1)."""
    low = (np.uint64(1) << np.uint64(sh - 1)) - np.uint64(1)
    nblk = (n + width - 1) // width
    start = np.zeros(nblk + 1, dtype=np.int64)
    for i in range(key.size):
        pair = np.int64((key[i] >> np.uint64(1)) & low)
        start[(pair % n) // width + 1] += 1
    for b in range(nblk):
        start[b + 1] += start[b]
    fill = start[:-1].copy()
    for i in range(key.size):
        pair = np.int64((key[i] >> np.uint64(1)) & low)
        t = pair // n
        j = pair - t * n
        b = j // width
        w = min(width, n - b * width)
        out[fill[b]] = (np.uint64(t * w + (j - b * width)) << np.uint64(32)) | np.uint64(gbits[i])
        fill[b] += 1
    return start


class _DiskPool:
    """:class:`_SortedPool`'s keys in a file, sorted, read ``chunk`` keys at a time.

    Built a group of key buckets at a time (:mod:`analysis.kernels.buckets`: a counting pass, then a
    pass over the pairs per group gathering its keys, each group sorted and appended), so the keys
    are the in-memory pool's and so is every number drawn from them. The AUROC's influence values
    wait on disk by block of samples (:meth:`auroc_terms`) until each block is multiplied.
    """

    def __init__(self, path: Path, t: int, n: int, sh: int, block_bytes: int) -> None:
        self.path, self.t, self.n, self.sh, self.block_bytes = path, t, n, sh, block_bytes
        self.chunk = max(1, block_bytes // 32)  # keys read at once: with their products, a share
        self.size = t * n

    @classmethod
    def build(cls, member: np.ndarray, score: np.ndarray, block_bytes: int, directory: Path) -> "_DiskPool":
        """The pool of ``member``, ``score`` (T, N, memmaps welcome: read a block of rows at a time)."""
        t, n = member.shape
        sh = max(1, int(t * n - 1).bit_length()) + 1
        step = max(1, (block_bytes // 32) // max(1, n))  # rows whose keys and inputs fit a share
        cap = max(1, block_bytes // 16)  # keys sorted at once

        def blocks():
            for r0 in range(0, t, step):
                s = read_rows(score, r0, r0 + step)
                yield _block_keys(read_rows(member, r0, r0 + step), s if s.dtype == np.float32 else
                                  s.astype(np.float64), r0 * n, sh)

        pool = cls(directory / "pool.u64", t, n, sh, block_bytes)
        hist = np.zeros(1 << BUCKET_BITS, dtype=np.int64)
        for keys in blocks():
            bucket_hist(keys, np.uint64(0), 64, hist)
        with open(pool.path, "wb") as f:
            _write_sorted(blocks, 0, 64, hist, cap, f)
        return pool

    def read(self, a: int, b: int) -> np.ndarray:
        return np.fromfile(self.path, dtype=np.uint64, count=max(0, b - a), offset=8 * a)

    keys = read

    def subset(self, mask: np.ndarray, directory: Path) -> "_DiskPool":
        """The pool of the samples in ``mask``, from this order in one pass (as :meth:`_SortedPool.subset`)."""
        n_sub = int(mask.sum())
        pos = np.full(self.n, -1, dtype=np.int64)
        pos[mask] = np.arange(n_sub)
        sub = _DiskPool(directory / f"subset{id(mask)}.u64", self.t, n_sub, self.sh, self.block_bytes)
        done = 0
        with open(sub.path, "wb") as f:
            for a in range(0, self.size, self.chunk):
                key = self.read(a, a + self.chunk)
                out = np.empty(key.size, dtype=np.uint64)
                j = _subset_keys(key, self.sh, self.n, pos, n_sub, out)
                out[:j].tofile(f)
                done += j
        assert done == sub.size
        return sub

    def top_length(self, need: int) -> int:
        """Pairs from the top of the order down to and including the ``need``-th negative."""
        seen, b = 0, self.size
        while b > 0:
            a = max(0, b - self.chunk)
            neg = np.flatnonzero((self.read(a, b) & np.uint64(1)) == 0)
            if seen + neg.size >= need:
                return self.size - (a + int(neg[neg.size - (need - seen)]))
            seen, b = seen + neg.size, a
        return self.size

    def group_start(self, lo: int) -> int:
        """First index of the tie group holding key ``lo``."""
        s = np.uint64(self.sh)
        v0 = self.read(lo, lo + 1)[0] >> s
        while lo > 0:
            a = max(0, lo - self.chunk)
            other = np.flatnonzero((self.read(a, lo) >> s) != v0)
            if other.size:
                return a + int(other[-1]) + 1
            lo = a
        return lo

    def _counts(self) -> tuple[float, int, int]:
        """AUROC, positives, negatives: one pass over the order."""
        st, cur, u = np.zeros(5, dtype=np.int64), np.zeros(1, dtype=np.uint64), np.zeros(1)
        for a in range(0, self.size, self.chunk):
            _count_carry(self.read(a, a + self.chunk), self.sh, st, cur, u)
        _close_group(st, u)
        n_pos, n_neg = int(st[4]), int(st[3])
        if n_pos == 0 or n_neg == 0:
            return np.nan, n_pos, n_neg
        return float(u[0]) / (float(n_pos) * float(n_neg)), n_pos, n_neg

    def _influence(self, auc: float, n_pos: int, n_neg: int, emit) -> None:
        """``emit(keys, g)`` for every pair, in order, ``g`` its AUROC influence value (float32)."""
        s = np.uint64(self.sh)
        nb = pb = 0  # negatives, positives below
        a = 0
        while a < self.size:
            key = self.read(a, a + self.chunk)
            cut = key.size if a + key.size == self.size else int(_last_group_start(key, self.sh))
            if cut > 0:  # whole tie groups; the last one may go on in the next read
                g = np.empty(cut, dtype=np.float32)
                nb, pb = _influence_sorted(key, cut, self.sh, nb, pb, n_pos, n_neg, auc, g)
                emit(key[:cut], g)
                a += cut
                continue
            # one tie group longer than a read: count it, then give its pairs their value a read at a time
            v, e, gp = key[0] >> s, a, 0
            while e < self.size:
                part = self.read(e, e + self.chunk)
                same = part[(part >> s) == v]
                gp, e = gp + int(np.count_nonzero(same & np.uint64(1))), e + same.size
                if same.size < part.size:
                    break
            gn = (e - a) - gp
            for a0 in range(a, e, self.chunk):
                part = self.read(a0, min(e, a0 + self.chunk))
                g = np.empty(part.size, dtype=np.float32)
                _one_group(part, gp, gn, nb, pb, n_pos, n_neg, auc, g)
                emit(part, g)
            nb, pb, a = nb + gn, pb + gp, e

    def auroc_terms(self, k: np.ndarray, threads: int) -> tuple[float, int, int, np.ndarray]:
        """As :meth:`_SortedPool.auroc_terms`: the influence values are written by block of samples
        (``width`` columns, a multiple of :data:`_KG_COLS`) as the order is walked, then each block
        is read back whole and multiplied."""
        auc, n_pos, n_neg = self._counts()
        t, n = self.t, self.n
        kg = np.empty((k.shape[0], n), dtype=np.float32)
        if np.isnan(auc):
            kg[:] = np.nan
            return auc, n_pos, n_neg, kg
        width = max(1, self.block_bytes // (32 * t * _KG_COLS)) * _KG_COLS  # a block, its records, their temporaries
        nblk = -(-n // width)
        files = [self.path.with_suffix(f".g{b}") for b in range(nblk)]
        for f in files:
            f.write_bytes(b"")

        def emit(key: np.ndarray, g: np.ndarray) -> None:
            out = np.empty(key.size, dtype=np.uint64)
            start = _by_column_block(key, g.view(np.uint32), self.sh, n, width, out)
            for b in np.flatnonzero(np.diff(start)):
                with open(files[b], "ab") as f:
                    out[start[b]:start[b + 1]].tofile(f)

        self._influence(auc, n_pos, n_neg, emit)
        for b, f in enumerate(files):
            rec = np.fromfile(f, dtype=np.uint64)
            f.unlink()
            w = min(width, n - b * width)
            assert rec.size == t * w
            dense = np.empty(t * w, dtype=np.float32)
            dense[(rec >> np.uint64(32)).astype(np.int64)] = (rec & np.uint64(0xFFFFFFFF)).astype(np.uint32).view(np.float32)
            del rec
            _kg_into(k, dense.reshape(t, w), kg, b * width)
        return auc, n_pos, n_neg, kg


def _write_sorted(blocks, prefix: int, shift: int, hist: np.ndarray, cap: int, f) -> None:
    """Append to ``f``, ascending, the keys of ``blocks()`` under ``prefix`` (bits above ``shift``),
    ``hist`` their counts per next 16 bits: consecutive buckets up to ``cap`` keys gathered and sorted
    at once, a larger bucket counted again by its next bits (keys are distinct: a bucket of the last
    16 bits holds one)."""
    sub = shift - BUCKET_BITS
    nz = np.flatnonzero(hist)
    i = 0
    while i < nz.size:
        lo = int(nz[i])
        if int(hist[lo]) > cap:
            child = (prefix << BUCKET_BITS) | lo
            h = np.zeros(1 << BUCKET_BITS, dtype=np.int64)
            for keys in blocks():
                bucket_hist(keys, np.uint64(child), sub, h)
            _write_sorted(blocks, child, sub, h, cap, f)
            i += 1
            continue
        hi, tot = lo, 0
        while i < nz.size and int(hist[nz[i]]) <= cap - tot:
            tot += int(hist[nz[i]])
            hi = int(nz[i])
            i += 1
        buf = np.empty(tot, dtype=np.uint64)
        pos = 0
        for keys in blocks():
            pos = bucket_gather(keys, np.uint64(prefix), shift, lo, hi, buf, pos)
        assert pos == tot
        buf.sort()
        buf.tofile(f)

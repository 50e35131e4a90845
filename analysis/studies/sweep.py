"""Shadow-count sweep: LiRA success as a function of the number of reference shadows (paper §7.2,
Figures 3, 7, 8).

What ``m`` is: the number of reference shadows **per side** that each (target, sample) pair gets:
exactly m IN and m OUT references, so ``2 m`` reference shadow models in all (the paper's x-axis,
"number of shadow models", whose smallest point is "one shadow model for in case and out case
each", §7.2 Takeaway 1). The tidy output carries both ``m`` and ``n_shadows = 2 m``; plots use
``n_shadows``. The default grid is m = 1, 2, 4, ... up to the largest K available, K included,
where K = min over the challenge samples of (IN count - 1, OUT count - 1): with LiRA keep masks
every train sample is IN for M/2 shadows, so K = M/2 - 1 and the largest point is 2K = M - 2
reference shadows (all others less the target and one partner, as in the full analysis).

How the references are drawn (one *repeat*): a random order of all M shadows is drawn (seeded);
for each target t and sample i, the references are the first m IN shadows and the first m OUT
shadows of sample i in that order, the target itself skipped. This is "the adversary trains
shadows in a random order and uses the first m of each side", the per-sample truncation of the
LiRA reference code, and it keeps the IN/OUT reference counts independent of the target's
membership (see :mod:`analysis.kernels.stats` for why unequal counts leak). Repeats differ by the order.

Efficiency: per repeat, one compiled walk over the shadows in the random order accumulates each
sample's IN and OUT sums of ``phi - shift`` and its square, recording them when a side's count
reaches m and m+1 for every m of the grid (the prefix sums of the sorted lists at those points,
added in the same sequence), O(M N Q). For target t and every m at once, the reference sums are
prefix sum m, or prefix sum m+1 minus the target's own value where the target sits among the first
m of the sample's list: O(len(m) N Q) per target. The scores are :func:`analysis.attacks.lira.lira_scores`'
formulas (the same floors, pooled-variance fall-back and neutral values as the full analysis; tested
against it), evaluated by one compiled loop from the walk's sums without forming the per-target
sums, one grid point at a time, whose metrics are taken before the next is scored. Repeats run on
the analysis' threads (:mod:`analysis.kernels.threads`), no more at once than the memory share holds.
phi is held in memory for the challenge samples only (the union of the masks), (M, N_c, Q) float64,
or read from disk a block of samples at a time when that does not fit.

Variance: below :data:`analysis.attacks.lira.PER_SAMPLE_VARIANCE_MIN` references per side, ``lira-online``
and ``lira-offline`` use the pooled ("fixed") variance of each side instead of each sample's own
(from a handful of values it is heavy-tailed: the per-sample curve dips in a V at 2-3 references per
side); from it on, each sample's own. The tidy output's ``variance`` column ("fixed" /
"per-sample") says which each point used, and the figure marks it.

Metrics per (challenge set, attack, m, repeat) pool every (target, sample in the set) pair, as
``tables/attacks.csv`` does. Fixed-variance LiRA pools the variance over all scored samples (the
union of the challenge sets: all train samples when the "All" set is included, as in
:func:`analysis.attacks.lira.run_lira`).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numba
import numpy as np
import pandas as pd

from scipy.special import log_ndtr

from analysis.store_io.figures import save_figure
from analysis.attacks.lira import PER_SAMPLE_VARIANCE_MIN, lira_terms, sd_floor
from analysis.kernels.metrics import fpr_label, per_target_metrics
from analysis.kernels.stats import GaussianSums, gaussian_sums

__all__ = ["default_m_grid", "shadow_sweep", "sweep_scores", "summarize_sweep", "plot_sweep", "sweep_figure",
           "sweep_from_store", "scores_by_m", "SWEEP_ATTACKS"]

SWEEP_ATTACKS = ("lira-online", "lira-fixed-variance")


def default_m_grid(k_max: int) -> list[int]:
    """1, 2, 4, ... < k_max, then k_max (per-side reference counts)."""
    if k_max < 1:
        return []
    grid = [1]
    while grid[-1] * 2 < k_max:
        grid.append(grid[-1] * 2)
    if grid[-1] != k_max:
        grid.append(k_max)
    return grid


@numba.njit(cache=True, nogil=True)
def _reference_sums(d, keep, perm, rec_a, rec_b, n_targets, a1, b1, a2, b2, pos):  # pragma: no cover - compiled
    """One walk over the shadows in the repeat's order (``perm``): per sample, running sums of the
    shifted phi ``d`` and its square on each side (0 = IN, 1 = OUT), recorded when the side's
    count reaches a grid point m (``rec_a[count] = l``: into ``a1[side, l]``, ``a2``) or m + 1
    (``rec_b``: into ``b1``, ``b2``); ``pos[t, i]``: target ``t``'s position in its side's list.
    The sums add in the order's sequence, as a cumulative sum along the sorted lists would."""
    n_sh, n, q = d.shape
    cnt = np.zeros((2, n), dtype=np.int64)
    s1 = np.zeros((2, n, q))
    s2 = np.zeros((2, n, q))
    top = rec_a.size - 1
    for r in range(n_sh):
        sh = perm[r]
        row = keep[sh]
        dr = d[sh]
        for i in range(n):
            side = 0 if row[i] else 1
            c = cnt[side, i]
            if sh < n_targets:
                pos[sh, i] = c
            if c >= top:  # past the largest grid point + 1: nothing more to record
                cnt[side, i] = c + 1
                continue
            for k in range(q):
                v = dr[i, k]
                s1[side, i, k] += v
                s2[side, i, k] += v * v
            c += 1
            cnt[side, i] = c
            la = rec_a[c]
            if la >= 0:
                for k in range(q):
                    a1[side, la, i, k] = s1[side, i, k]
                    a2[side, la, i, k] = s2[side, i, k]
            lb = rec_b[c]
            if lb >= 0:
                for k in range(q):
                    b1[side, lb, i, k] = s1[side, i, k]
                    b2[side, lb, i, k] = s2[side, i, k]
    return cnt


def _concat_sums(parts: list[GaussianSums]) -> GaussianSums:
    """Per-sample sums of consecutive blocks of samples as one :class:`GaussianSums`."""
    cat = lambda name, axis: np.concatenate([getattr(p, name) for p in parts], axis=axis)  # noqa: E731
    return GaussianSums(shift=cat("shift", 0), n_in=cat("n_in", -1), s1_in=cat("s1_in", -2), s2_in=cat("s2_in", -2),
                        n_out=cat("n_out", -1), s1_out=cat("s1_out", -2), s2_out=cat("s2_out", -2))


def _columns(phi: Any, cols: np.ndarray) -> np.ndarray:
    """``phi[:, cols]``, read from disk without mapping it when ``phi`` can (``DiskRows.take_columns``)."""
    take = getattr(phi, "take_columns", None)
    return take(cols) if take is not None else phi[:, cols]


def shadow_sweep(phi: np.ndarray, keep: np.ndarray, masks: Mapping[str, np.ndarray], *,
                 n_targets: int | None = None, m_grid: Sequence[int] | None = None, repeats: int = 10,
                 seed: int = 0, fprs: Sequence[float] = (0.001, 0.01), attacks: Sequence[str] = SWEEP_ATTACKS,
                 progress: Callable[[int], None] | None = None,
                 orders: Sequence[np.ndarray] | None = None,
                 per_sample_min: int = PER_SAMPLE_VARIANCE_MIN, threads: int = 1,
                 overwrite_phi: bool = False, block_samples: int | None = None,
                 memory_bytes: int | None = None) -> pd.DataFrame:
    """Run the sweep on in-memory phi.

    Parameters
    ----------
    phi : ndarray, shape (M, N, Q)
        phi of every done shadow for the N samples covered by ``masks`` (e.g. the train split, or
        only the union of the challenge sets).
    keep : ndarray of bool, shape (M, N)
        Membership of the same shadows and samples.
    masks : mapping challenge-set name -> bool ndarray (N,)
        The challenge sets (e.g. "highly memorized", "All", "random"); samples in no
        set are not scored.
    n_targets : int, optional
        The first T shadows are targets (each against references from the other shadows); default
        all M.
    m_grid : sequence of int, optional
        Per-side reference counts; default :func:`default_m_grid` (K). Values above K are dropped.
    repeats : int
        R, random reference orders.
    seed : int
        Seed of the orders (repeat r uses ``default_rng([seed, r])``).
    fprs : sequence of float
        FPRs for the TPR columns.
    attacks : sequence of str
        Among ``lira-online``, ``lira-fixed-variance``, ``lira-offline``.
    progress : callable, optional
        Called with 1 after each repeat.
    orders : sequence of permutations of range(M), optional
        Explicit shadow orders, one per repeat (overrides ``seed``; for tests and for reproducing a
        given training order).
    per_sample_min : int
        Online and offline LiRA fit per-sample variances from this many references per side on
        (default :data:`analysis.attacks.lira.PER_SAMPLE_VARIANCE_MIN`), the pooled variance below it.
    threads : int
        Threads the repeats run on (no result depends on it).
    overwrite_phi : bool
        ``phi`` (float64, C-contiguous, every sample scored) may be shifted in place: the caller's
        own copy, so the sweep holds no second one.
    block_samples : int, optional
        Read ``phi`` (then any (M, N, Q) array-like whose ``phi[:, idx]`` gives a fresh array, e.g. an
        :class:`analysis.store_io.spill.DiskRows` on local disk) this many scored samples at a time,
        once for the shifts and floors and once per repeat, holding only the targets' rows and
        each side's reference sums whole (memory independent of M). Samples are independent
        except for the pooled variances, which are formed from the whole sums as before: no result
        depends on it (tests/test_sweep.py). Default: all scored samples at once.
    memory_bytes : int, optional
        The sweep's share of the memory budget: no more repeats run at once than their working
        memory (:func:`_repeat_bytes`) fits beside the shifted phi held for all of them. Default:
        ``threads`` at once.

    Returns
    -------
    DataFrame (tidy): set, attack, m, n_shadows (= 2 m), repeat, n_samples, variance ("fixed" or
    "per-sample"), auroc, ``tpr@0.1%``, ...
    """
    if block_samples is None:
        phi = np.asarray(phi)
        if phi.ndim == 2:
            phi = phi[..., None]
    keep = np.asarray(keep, dtype=bool)
    m_tot, n, q = phi.shape
    masks = {k: np.asarray(v, dtype=bool) for k, v in masks.items()}
    scored = np.zeros(n, dtype=bool)
    for v in masks.values():
        scored |= v
    if not scored.any():
        raise ValueError("the challenge sets are all empty")
    idx = np.flatnonzero(scored)
    blocks = None if block_samples is None or int(block_samples) >= idx.size else \
        [slice(lo, min(lo + int(block_samples), idx.size)) for lo in range(0, idx.size, max(1, int(block_samples)))]
    x = None
    if blocks is None:
        # one float64 copy, of the scored samples only (none more when the caller's array is that already)
        x = np.asarray(phi, dtype=np.float64) if idx.size == n else np.asarray(phi[:, idx], dtype=np.float64)
    kp = keep[:, idx]
    sub = {k: v[idx] for k, v in masks.items()}
    n_in = kp.sum(0)
    n_out = (~kp).sum(0)
    k_max = int(min(n_in.min(), n_out.min())) - 1
    if k_max < 1:
        raise ValueError(f"every challenge sample needs >= 2 IN and >= 2 OUT shadows; the least has "
                         f"{int(n_in.min())} IN and {int(n_out.min())} OUT")
    grid = default_m_grid(k_max) if m_grid is None else sorted({int(v) for v in m_grid if 1 <= int(v) <= k_max})
    if not grid:
        raise ValueError(f"no m in the grid is within 1..{k_max}")
    t_n = m_tot if n_targets is None or n_targets == 0 else min(int(n_targets), m_tot)
    ms = np.asarray(grid)
    names = ["auroc"] + [f"tpr@{fpr_label(f)}" for f in fprs]
    member = kp[:t_n]  # (T, Nc)
    kp = np.ascontiguousarray(kp)
    if blocks is None:
        shift = x.mean(axis=0)  # (Nc, Q): close to each sample's mean; all statistics are shift-invariant
        # std floor from the full reference sums (all shadows), as run_lira's from its sums
        floor = sd_floor(gaussian_sums(x, kp, shift))
        # x - shift once for every repeat, in place when x is this function's own copy: the sweep then
        # holds one (M, Nc, Q) float64 array (2000 x 15,000 x 18 is 4.3 GB), not two
        own = x.flags.c_contiguous and x.flags.writeable and (overwrite_phi or x is not phi) and (
            overwrite_phi or not isinstance(phi, np.ndarray) or not np.shares_memory(x, phi))
        shifted = np.subtract(x, shift, out=x) if own else np.ascontiguousarray(x - shift, dtype=np.float64)
        del x
        read_shifted = None
    else:  # the same statistics, a block of samples at a time (each is per sample)
        shift = np.empty((idx.size, q))
        shifted = np.empty((t_n, idx.size, q))  # the targets' rows only: all _sweep_rows reads
        parts = []
        for sl in blocks:
            xb = np.asarray(_columns(phi, idx[sl]), dtype=np.float64)
            shift[sl] = xb.mean(axis=0)
            parts.append(gaussian_sums(xb, kp[:, sl], shift[sl]))
            shifted[:, sl] = xb[:t_n] - shift[sl]
            del xb
        floor = sd_floor(_concat_sums(parts))
        del parts

        def read_shifted(sl: slice) -> np.ndarray:
            xb = np.asarray(_columns(phi, idx[sl]), dtype=np.float64)
            return np.subtract(xb, shift[sl], out=xb)

    members = {name: member[:, mask].reshape(1, -1) for name, mask in sub.items()}  # (1, T * set)

    def one_repeat(r: int) -> list[list[Any]]:
        if orders is not None:
            order = np.asarray(orders[r], dtype=np.int64)
        else:
            order = np.random.default_rng([seed, r]).permutation(m_tot)
        # each grid point's metrics as soon as its scores are formed: the pooled (target, sample in
        # the set) pairs, one row of per_target_metrics (its rows are independent of one another)
        vals: dict[tuple[str, str], list[np.ndarray]] = {(name, a): [] for name in sub for a in attacks}
        for _, scores in scores_by_m(shifted, kp, ms, order, t_n, shift=shift, floor=floor, attacks=attacks,
                                     shifted=shifted, per_sample_min=per_sample_min,
                                     blocks=None if blocks is None else (blocks, read_shifted, m_tot)):
            for name, mask in sub.items():
                for a in attacks:
                    sc = scores[a][:, mask].reshape(1, -1)
                    vals[name, a].append(per_target_metrics(members[name], sc, list(fprs))[0])
        out = []
        for name, mask in sub.items():
            for a in attacks:
                for li, mv in enumerate(ms):
                    how = "fixed" if a == "lira-fixed-variance" or mv < per_sample_min else "per-sample"
                    out.append([name, a, int(mv), 2 * int(mv), r, int(mask.sum()), how]
                               + [float(v) for v in vals[name, a][li]])
        return out

    # repeats on the analysis' threads: their array work (numpy, compiled walks) releases the GIL;
    # no more at once than the memory share holds (each has its walk's sums, a grid point's scores
    # and, in blocks, a block of every shadow's phi)
    workers = max(1, min(int(threads), repeats))
    if memory_bytes is not None:
        per = _repeat_bytes(m_tot, idx.size, q, ms.size, t_n, len(attacks), "lira-offline" in attacks,
                            0 if blocks is None else blocks[0].stop - blocks[0].start)
        workers = max(1, min(workers, (int(memory_bytes) - shifted.nbytes) // per))
    rows: list[list[Any]] = []
    with ThreadPoolExecutor(workers) as ex:
        for part in ex.map(one_repeat, range(repeats)):
            rows += part
            if progress is not None:
                progress(1)
    return pd.DataFrame(rows, columns=["set", "attack", "m", "n_shadows", "repeat", "n_samples", "variance"] + names)


def _repeat_bytes(m_tot: int, nc: int, q: int, n_l: int, t_n: int, n_attacks: int, offline: bool,
                  block: int) -> int:
    """Bytes one repeat of :func:`shadow_sweep` holds while it runs: its walk's sums (four
    (2, L, N, Q) float64), the targets' positions and a grid point's scores and their metrics' copies
    ((T, N) each, the offline z-scores (T, N, Q)), and a block of every shadow's phi read from disk
    (float32 and float64; 0 when phi is held whole)."""
    return 8 * (4 * 2 * n_l * nc * q + t_n * nc * (2 + 3 * n_attacks + (q if offline else 0))) \
        + 12 * m_tot * block * q


def sweep_scores(x: np.ndarray, keep: np.ndarray, ms: np.ndarray, order: np.ndarray, n_targets: int, *,
                 shift: np.ndarray, floor: np.ndarray, attacks: Sequence[str] = SWEEP_ATTACKS,
                 shifted: np.ndarray | None = None,
                 per_sample_min: int = PER_SAMPLE_VARIANCE_MIN, blocks: Any = None) -> dict[str, np.ndarray]:
    """Scores of the first ``n_targets`` shadows with m IN + m OUT references, for every m in ``ms``.

    Parameters
    ----------
    x : ndarray, shape (M, N, Q)
        phi (unshifted) of the scored samples.
    keep : ndarray of bool, shape (M, N)
    ms : ndarray of int, shape (L,)
        Per-side reference counts, each <= min over samples of (IN count - 1, OUT count - 1).
    order : ndarray, shape (M,)
        A permutation of the shadows: references are the first m of each side in this order,
        the target skipped.
    n_targets : int
    shift : ndarray, shape (N, Q)
        Subtracted before summing (any value near the samples' means).
    floor : ndarray, shape (Q,)
        Standard-deviation floor (:func:`analysis.attacks.lira.sd_floor`).
    shifted : ndarray, shape (M, N, Q), optional
        ``x - shift`` as a C-contiguous float64 array, when the caller scores several orders.
    per_sample_min : int
        For m below it, ``lira-online`` and ``lira-offline`` use the pooled variance of each side
        (``lira-online`` then equals ``lira-fixed-variance``); 0 or 1: per-sample variances at every m.
    blocks : (list of slice, callable, int), optional
        ``(slices, read, M)``: ``x``/``shifted`` hold the targets' rows only, and ``read(slice)``
        gives every shadow's shifted phi of those samples (:func:`shadow_sweep`'s ``block_samples``).

    Returns
    -------
    dict attack -> ndarray (T, L, N)
    """
    parts: dict[str, list[np.ndarray]] = {a: [] for a in attacks}
    for _, scores in scores_by_m(x, keep, ms, order, n_targets, shift=shift, floor=floor, attacks=attacks,
                                 shifted=shifted, per_sample_min=per_sample_min, blocks=blocks):
        for a in attacks:
            parts[a].append(scores[a])
    return {a: np.stack(v, axis=1) for a, v in parts.items()}  # (T, L, N)


def scores_by_m(x: np.ndarray, keep: np.ndarray, ms: np.ndarray, order: np.ndarray, n_targets: int, *,
                shift: np.ndarray, floor: np.ndarray, attacks: Sequence[str] = SWEEP_ATTACKS,
                shifted: np.ndarray | None = None, per_sample_min: int = PER_SAMPLE_VARIANCE_MIN,
                blocks: Any = None) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """:func:`sweep_scores` one grid point at a time: yields ``(l, {attack: (T, N) scores at ms[l]})``.

    The walk's sums are formed once for every grid point; each point's scores are formed when it is
    asked for, so a caller that reduces them at once (:func:`shadow_sweep`'s metrics) holds one
    point's (T, N) per attack, not all L (11 x 64 x 15,000 float64 is 84 MB per attack).
    Parameters as :func:`sweep_scores`'.
    """
    m_tot, nc, q = x.shape
    if blocks is not None:
        m_tot = blocks[2]
    ms = np.asarray(ms, dtype=np.int64)
    n_l = ms.size
    k1 = int(ms.max()) + 1
    # per side and grid point m, the sums of the first m and the first m + 1 references of every
    # sample's list (the target's own entry is taken out below): one compiled walk over the order
    rec_a = np.full(k1 + 1, -1, dtype=np.int64)
    rec_b = np.full(k1 + 1, -1, dtype=np.int64)
    rec_a[ms] = np.arange(n_l)
    rec_b[ms + 1] = np.arange(n_l)
    a1, b1, a2, b2 = (np.zeros((2, n_l, nc, q)) for _ in range(4))
    pos_t = np.empty((max(1, n_targets), nc), dtype=np.int64)
    d_all = np.ascontiguousarray(x - shift, dtype=np.float64) if shifted is None else shifted
    order = np.asarray(order, dtype=np.int64)
    if blocks is None:
        cnt = _reference_sums(d_all, keep if keep.flags.c_contiguous else np.ascontiguousarray(keep), order, rec_a,
                              rec_b, n_targets, a1, b1, a2, b2, pos_t)
    else:  # each sample's walk is its own: the blocks fill their columns of the same sums
        cnt = np.empty((2, nc), dtype=np.int64)
        for sl in blocks[0]:
            cnt[:, sl] = _reference_sums(blocks[1](sl), np.ascontiguousarray(keep[:, sl]), order, rec_a, rec_b,
                                         n_targets, a1[:, :, sl], b1[:, :, sl], a2[:, :, sl], b2[:, :, sl],
                                         pos_t[:, sl])
    if (cnt < k1).any():
        raise ValueError(f"every sample needs >= {k1} shadows on each side")
    for a in attacks:
        if a not in ("lira-online", "lira-fixed-variance", "lira-offline"):
            raise ValueError(f"unknown attack {a!r}; choose from lira-online, lira-fixed-variance, lira-offline")
    t_n = n_targets
    want_off = "lira-offline" in attacks
    # the offline z-scores (T, N, Q) of one grid point: all L at once would be L x T x N x Q float64
    z_off = np.empty((1, t_n, nc, q) if want_off else (0, 0, 0, 0))
    keep_t = np.ascontiguousarray(keep[:t_n], dtype=np.bool_)
    shift64 = np.ascontiguousarray(shift, dtype=np.float64)
    floor64 = np.asarray(floor, dtype=np.float64)
    pooled_m = np.ascontiguousarray(ms < per_sample_min)
    for li in range(n_l):
        one = slice(li, li + 1)
        online, fixed = np.empty((1, t_n, nc)), np.empty((1, t_n, nc))
        _sweep_rows(d_all, keep_t, pos_t[:t_n], ms[one], a1[:, one], b1[:, one], a2[:, one], b2[:, one], shift64,
                    floor64, pooled_m[one], "lira-online" in attacks, "lira-fixed-variance" in attacks, online,
                    fixed, z_off)
        out = {}
        for a in attacks:
            if a == "lira-online":
                v = online[0]
            elif a == "lira-fixed-variance":
                v = fixed[0]
            else:
                v = log_ndtr(z_off[0]).mean(axis=-1)
            # non-finite scores get lira_scores' neutral values
            v[~np.isfinite(v)] = float(np.log(0.5)) if a == "lira-offline" else 0.0
            out[a] = v
        yield li, out


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _sweep_rows(d, keep_t, pos_t, ms, a1, b1, a2, b2, shift, floor, pooled_m, want_online, want_fixed, online,
                fixed, z_off):  # pragma: no cover - compiled
    """:func:`analysis.attacks.lira.lira_scores` of every (m, target, sample) from the walk's sums, without
    forming them: for side s and sample i the reference sums are ``a[s, l, i]`` (the first m), or
    ``b[s, l, i]`` less the target's own shifted value ``d[t, i]`` where the target is among the
    first m of that list (``pos_t[t, i] < m``, on the target's side); counts are m on both sides.
    Per (m, target): the pooled variance of each side over the samples (Chan's combination, as
    :meth:`analysis.kernels.stats.GaussianSums.pooled_variance`), then each sample's moments (ddof 1),
    floored standard deviations and the online / fixed-variance log-likelihood ratios summed over
    queries, and the offline z-scores; where ``pooled_m[l]``, online is the fixed-variance ratio and
    the offline z-score uses the pooled OUT standard deviation."""
    n_l, t_n, n = online.shape
    q = d.shape[2]
    want_off = z_off.shape[0] > 0
    s1 = np.empty((2, n, q))
    s2 = np.empty((2, n, q))
    sd_g = np.empty((2, q))
    log_g = np.empty((2, q))
    for li in range(n_l):
        m = ms[li]
        mf = float(m)
        pooled = pooled_m[li]
        for t in range(t_n):
            for i in range(n):
                side_t = 0 if keep_t[t, i] else 1
                inside = pos_t[t, i] < m
                for s in range(2):
                    for k in range(q):
                        if s == side_t and inside:
                            dt = d[t, i, k]
                            s1[s, i, k] = b1[s, li, i, k] - dt
                            s2[s, i, k] = b2[s, li, i, k] - dt * dt
                        else:
                            s1[s, i, k] = a1[s, li, i, k]
                            s2[s, i, k] = a2[s, li, i, k]
            for s in range(2):  # pooled variance of all values of each side (n = m per sample)
                for k in range(q):
                    tn = mf * n
                    tot = 0.0
                    for i in range(n):
                        tot += mf * (s1[s, i, k] / mf + shift[i, k])
                    grand = tot / tn
                    ss = 0.0
                    dev = 0.0
                    for i in range(n):
                        mu = s1[s, i, k] / mf
                        within = s2[s, i, k] - s1[s, i, k] * mu
                        ss += within if within > 0.0 else 0.0
                        e = (mu + shift[i, k]) - grand
                        dev += mf * (e * e)
                    var = (ss + dev) / (tn - 1.0) if tn > 1.0 else np.nan
                    sd_g[s, k] = max(np.sqrt(var), floor[k]) if var == var else np.nan
                    log_g[s, k] = np.log(sd_g[s, k])
            for i in range(n):
                acc_on = 0.0
                acc_fx = 0.0
                for k in range(q):
                    on, fx, zo = lira_terms(d[t, i, k], mf, s1[0, i, k], s2[0, i, k], mf, s1[1, i, k], s2[1, i, k],
                                            sd_g[0, k], sd_g[1, k], log_g[0, k], log_g[1, k], floor[k])
                    acc_on += on
                    acc_fx += fx
                    if want_off:
                        # lira_terms' fixed-variance offline z: the same operations as its zo
                        z_off[li, t, i, k] = (d[t, i, k] - s1[1, i, k] / mf) / sd_g[1, k] if pooled else zo
                online[li, t, i] = (acc_fx if pooled else acc_on) if want_online else 0.0
                fixed[li, t, i] = acc_fx if want_fixed else 0.0


def summarize_sweep(sweep: pd.DataFrame) -> pd.DataFrame:
    """Mean, 2.5 and 97.5 percentiles over repeats of every metric, per (set, attack, m).

    Columns: set, attack, m, n_shadows, n_samples, variance, repeats, then ``<metric> mean``,
    ``<metric> lo``, ``<metric> hi`` for each metric column of ``sweep``.
    """
    ids = ("set", "attack", "m", "n_shadows", "repeat", "n_samples", "variance")
    metrics = [c for c in sweep.columns if c not in ids]
    g = sweep.groupby(["set", "attack", "m"], sort=False)
    out = g[[c for c in ("n_shadows", "n_samples", "variance") if c in sweep.columns]].first()
    out["repeats"] = g["repeat"].nunique()
    for c in metrics:
        out[f"{c} mean"] = g[c].mean()
        out[f"{c} lo"] = g[c].quantile(0.025)
        out[f"{c} hi"] = g[c].quantile(0.975)
    return out.reset_index()


#: Marker of a sweep point by the variance it used (the ``variance`` column).
_VARIANCE_MARKERS = {"per-sample": {"marker": "o", "ms": 4}, "fixed": {"marker": "s", "ms": 5, "mfc": "white"}}


def _figure(ncols: int):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.0 * ncols + 0.6, 4.2), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def plot_sweep(summary: pd.DataFrame, path: str | Path, *, metric: str = "auroc",
               attacks: Sequence[str] | None = None, title: str | None = None) -> list[Path]:
    """:func:`sweep_figure` written as ``path`` with suffixes ``.png`` and ``.pdf`` (any suffix of
    ``path`` is replaced); returns both paths."""
    return save_figure(sweep_figure(summary, metric=metric, attacks=attacks, title=title), Path(path))


def sweep_figure(summary: pd.DataFrame, *, metric: str = "auroc", attacks: Sequence[str] | None = None,
                 title: str | None = None) -> Any:
    """Metric vs number of reference shadows (log x), mean line and 2.5-97.5% band per challenge set.

    One panel per attack. Each point's marker says which variance it used (the summary's
    ``variance`` column): filled circle per-sample, open square fixed (pooled); the legend names
    both. Returns the matplotlib Figure.
    """
    from matplotlib.lines import Line2D

    attacks = list(summary["attack"].unique()) if attacks is None else list(attacks)
    fig = _figure(len(attacks))
    axes = fig.subplots(1, len(attacks), squeeze=False)[0]
    sets = list(summary["set"].unique())
    colors = {s: f"C{i % 10}" for i, s in enumerate(sets)}
    ylabel = {"auroc": "AUROC"}.get(metric, metric.replace("tpr@", "TPR at ") + (" FPR" if "tpr@" in metric else ""))
    for ax, a in zip(axes, attacks):
        for s in sets:
            d = summary[(summary["attack"] == a) & (summary["set"] == s)].sort_values("n_shadows")
            if d.empty:
                continue
            xs = d["n_shadows"].to_numpy()
            ys = d[f"{metric} mean"].to_numpy()
            ax.plot(xs, ys, color=colors[s], label=f"{s} (n={int(d['n_samples'].iloc[0])})")
            how = d["variance"].to_numpy() if "variance" in d else np.full(len(d), "per-sample")
            for kind, style in _VARIANCE_MARKERS.items():
                sel = how == kind
                if sel.any():
                    ax.plot(xs[sel], ys[sel], ls="none", color=colors[s], **style)
            ax.fill_between(xs, d[f"{metric} lo"], d[f"{metric} hi"], color=colors[s], alpha=0.2, lw=0)
        ax.set_xscale("log", base=2)
        ticks = sorted(summary["n_shadows"].unique())
        ax.set_xticks(ticks, [str(int(t)) for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("reference shadows per target (IN + OUT; m per side)")
        ax.set_ylabel(ylabel)
        if metric == "auroc":
            ax.axhline(0.5, color="grey", lw=0.6, ls=":")
        ax.set_title(a)
        ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    used = set(summary["variance"]) if "variance" in summary else {"per-sample"}
    for kind, style in _VARIANCE_MARKERS.items():
        if kind in used:
            handles.append(Line2D([], [], ls="none", color="0.3", **style))
            labels.append(f"{kind} variance")
    if handles:  # one legend below the panels: inside, it hides the curves it explains
        fig.legend(handles, labels, loc="outside lower center", ncols=min(4, len(handles)), fontsize="small")
    if title:
        fig.suptitle(title)
    return fig


def sweep_from_store(data: Any, masks: Mapping[str, np.ndarray], *, max_per_set: int | None = None,
                     subsample_seed: int = 0, phi: np.ndarray | None = None,
                     memory_bytes: int | None = None, **kwargs: Any) -> tuple[pd.DataFrame, float]:
    """Read phi of the challenge samples of an opened store once and run :func:`shadow_sweep`.

    Memory: phi of the union of the challenge sets, (M, N_c, Q) float64 (or, past
    ``memory_bytes``, blocks of it and the targets' rows), plus per repeat running its walk's sums
    (four (2, len(m grid), N_c, Q) float64) and one grid point's scores (T, N_c) per attack; cap N_c
    with ``max_per_set`` and T with ``n_targets`` on large stores (2000 shadows x 5000 samples x 9
    queries is 0.7 GB).

    Parameters
    ----------
    data : analysis.store_io.load.ShadowData
    masks : mapping name -> bool ndarray over *all* store samples
    max_per_set : int, optional
        Keep at most this many samples of each set, a seeded uniform subsample (``subsample_seed``);
        default: all.
    phi : ndarray (M, N, Q) or DiskRows, optional
        Every done shadow's phi if the pass kept it (:attr:`analysis.store_io.passes.PassResult.phi_all`,
        in memory or on local disk); default: read from the store.
    memory_bytes : int, optional
        When ``phi`` is given and the scored samples' float64 copy (x 3 for the temporaries) is
        larger, the sweep reads it a block of samples at a time (:func:`shadow_sweep`'s
        ``block_samples``, sized to half of it; same frame). It also bounds how many repeats run
        at once (:func:`shadow_sweep`'s ``memory_bytes``).
    **kwargs
        Passed to :func:`shadow_sweep`.

    Returns
    -------
    (tidy sweep DataFrame, seconds spent, reading included)
    """
    t0 = time.perf_counter()
    masks = {k: np.asarray(v, dtype=bool) for k, v in masks.items()}
    if max_per_set is not None:
        rng = np.random.default_rng(subsample_seed)
        capped = {}
        for k, v in masks.items():
            ids = np.flatnonzero(v)
            if ids.size > max_per_set:
                keep_ids = rng.choice(ids, size=max_per_set, replace=False)
                v = np.zeros_like(v)
                v[keep_ids] = True
            capped[k] = v
        masks = capped
    union = np.zeros(next(iter(masks.values())).shape, dtype=bool)
    for v in masks.values():
        union |= v
    idx = np.flatnonzero(union)
    keep = np.asarray(data.keep.values, dtype=bool)
    m_tot = keep.shape[0]
    q = int(phi.shape[2]) if phi is not None else int(data.logits.shape[2])
    if phi is not None and memory_bytes is not None and 3 * 8 * m_tot * idx.size * q > memory_bytes:
        # every shadow's phi of the scored samples does not fit: read it a block of samples at a time
        # (a block's float64 copy and the sums' temporaries: ~8 copies; measured 1.5 GB at 3 at the
        # paper's shape with a 3 GiB budget), in half the share: the repeats' walks share the rest
        block = max(1, int(memory_bytes) // (2 * 8 * 8 * m_tot * q))
        df = shadow_sweep(phi, keep, masks, block_samples=block, memory_bytes=memory_bytes, **kwargs)
        return df, time.perf_counter() - t0
    phi = np.asarray(data.phi().isel(sample=idx).values if phi is None else phi[:, idx], dtype=np.float64)
    df = shadow_sweep(phi, keep[:, idx], {k: v[idx] for k, v in masks.items()}, overwrite_phi=True,
                      memory_bytes=memory_bytes, **kwargs)
    return df, time.perf_counter() - t0

"""ROC curves of every attack, as data (``roc/roc.csv``) and as a figure (``plots/roc.png|pdf``).

A curve is the pooled ROC the tables report: every (target, sample) pair of a column is one trial,
the curve is sklearn's ``roc_curve`` (:func:`analysis.kernels.metrics.roc`, ``drop_intermediate=True``) of
those pairs, so its trapezoid area is the tables' AUROC (:func:`analysis.kernels.metrics.attack_metrics`,
the challenge-set rows of :func:`analysis.output.tables.attack_table`) and its largest TPR at FPR <= f is
their TPR@f. Columns: ``All`` (every train sample), ``Under`` (the under-represented group) and
each challenge set of the run (``random``, ``subpopulation``, ``singletons``: :mod:`analysis.studies.groups`).

A pooled curve has up to T*N points. What is written (:func:`downsample`):

* never the interior points of a straight vertical or horizontal run (:func:`corners`): tied
  member-only (or non-member-only) scores whose counts differ from step to step are each a point
  ``drop_intermediate`` keeps, on a line between the run's ends that adds no area. At 2000 x 50,000
  pairs the low-FPR end of a LiRA-like curve had ~1.3 million of them; its corners are ~2 per false
  positive;
* every other point with FPR <= ``dense_fpr`` (1e-2, or the largest table FPR if that is larger,
  but not past :data:`DENSE_NEGATIVES` false positives): the low-FPR end is kept to its corners;
* the last point at or below each table FPR (no chord skips it), so the TPR at each table FPR is
  read from the file exactly, also where the table FPR lies past the dense end (at 2000 x 50,000,
  10,000 false positives are FPR 2e-4, below the tables' 0.1%);
* above it, each written chord runs from the last written point to the furthest later point (at
  most 1/``per_decade`` of a decade of FPR away, so the curve stays smooth on log axes) for which
  the running sum of every chord's area change (chord area minus the exact trapezoid area of the
  points it replaces) stays within ``area_tol``. A staircase's chord errors have both signs, so
  they cancel: the written curve's trapezoid area is the full curve's, the tables' AUROC, to
  ``area_tol`` (1e-9) in total, with ~16x fewer points (T*N = 76,800 pairs: ~36,000 points -> ~2,000).
  Collinear points (no area change) always go;
* the last point (1, 1).

A column whose pairs do not fit ``block_bytes`` (float32 scores, the attacks' precision) is computed
in bounded memory (:func:`_bounded_curve`): :func:`analysis.kernels.pooled.pooled_roc_points` streams
the full curve's points chunk by chunk, :class:`_Thin` drops the runs' interiors as they come (a
point is decided once its successor has come) and :class:`_StreamDown` makes :func:`downsample`'s
choices on the rest (the same prefix sums in the same order; a chord end is chosen once the
``_MAX_SCAN`` points after its start, or the end of its FPR step, have arrived), sums the AUROC as
``np.trapezoid`` does (numpy's pairwise summation, replayed once the number of points is known; the
trapezoid terms wait on disk beyond a quarter of the budget) and takes TPR@f as
:func:`analysis.kernels.metrics.tpr_at_fpr`: every field of the :class:`RocCurve` is the one the
whole curve gives, bit for bit, whatever ``block_bytes`` (tests/test_roc_bounded.py).

``roc/roc.csv`` is tidy: ``attack, column, fpr, tpr, threshold`` (threshold: the score at or above
which a pair is called a member; ``inf`` for the (0, 0) point), full float64 precision, written a
curve at a time (:func:`write_roc_csv`).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numba
import numpy as np
import pandas as pd

from analysis.store_io.atomic import atomic_write
from analysis.store_io.figures import save_figure
from analysis.kernels.metrics import fpr_label, roc, tpr_at_fpr
from analysis.kernels.pages import count_members, read_columns
from analysis.kernels.pooled import DEFAULT_BLOCK_BYTES, pooled_roc_points

__all__ = ["RocCurve", "corners", "downsample", "pooled_curve", "fits_whole_curve", "roc_curves", "curves_frame", "write_roc_csv",
           "plot_roc", "write_roc", "COLUMN_TITLES", "ROC_CSV"]

#: Panel titles of the columns; a challenge set not listed is titled by its own name.
COLUMN_TITLES = {"All": "All (train split)", "Under": "Under-represented", "random": "random (challenge set)",
                 "subpopulation": "subpopulation (challenge set)", "singletons": "singletons (challenge set)"}
#: Where :func:`write_roc` writes the points, relative to the analysis folder.
ROC_CSV = Path("roc") / "roc.csv"
_MAX_SCAN = 2048  # the most later points a chord end is sought among
_LOW = 1e-5  # left end of the log axes (the LiRA paper's), unless 1/negatives is larger


@dataclass
class RocCurve:
    """One attack's pooled ROC on one column, downsampled (see the module docstring).

    Attributes
    ----------
    attack, column : str
    fpr, tpr, threshold : ndarray (K,)
        The written points, FPR ascending.
    auroc : float
        Area of the full (not downsampled) curve.
    tpr_at : dict float -> float
        TPR at each requested FPR, from the full curve.
    n_pos, n_neg : int
        Member and non-member pairs.
    n_full : int
        Points of the full curve (sklearn's, collinear points already dropped).
    """

    attack: str
    column: str
    fpr: np.ndarray
    tpr: np.ndarray
    threshold: np.ndarray
    auroc: float
    tpr_at: dict[float, float] = field(default_factory=dict)
    n_pos: int = 0
    n_neg: int = 0
    n_full: int = 0


@numba.njit(cache=True)
def _limit(fpr, a, lims):  # pragma: no cover - compiled
    """The smallest of ``lims`` (ascending) at or past the FPR of point ``a + 1``: a chord from ``a``
    that ends past it would skip the last point at or below it, whose TPR is the TPR there."""
    for x in lims:
        if x >= fpr[a + 1]:
            return x
    return np.inf


@numba.njit(cache=True)
def _greedy(fpr, tpr, start, area_tol, step_ratio, lims, keep):  # pragma: no cover - compiled
    """Mark in ``keep`` the chord ends chosen from index ``start`` on (see :func:`downsample`)."""
    n = fpr.size
    # prefix trapezoid areas: the exact area between points a and c is cum[c] - cum[a]
    cum = np.zeros(n)
    for i in range(1, n):
        cum[i] = cum[i - 1] + (fpr[i] - fpr[i - 1]) * (tpr[i] + tpr[i - 1]) * 0.5
    a = start
    keep[a] = True
    drift = 0.0  # area of the written chords so far minus the exact area
    while a < n - 1:
        j = a + 1  # the next point is always a valid chord end (no error)
        j_err = 0.0
        c = a + 2
        lim = _limit(fpr, a, lims)
        # a bounded look-ahead: linear time on curves of millions of points (a chord that ends
        # earlier only keeps more points; the area budget holds either way)
        while c < n and c - a <= _MAX_SCAN and fpr[c] <= fpr[a] * step_ratio and fpr[c] <= lim:
            err = (fpr[c] - fpr[a]) * (tpr[c] + tpr[a]) * 0.5 - (cum[c] - cum[a])
            if abs(drift + err) <= area_tol:
                j, j_err = c, err  # the furthest end that keeps the total error within the budget
            c += 1
        drift += j_err
        keep[j] = True
        a = j
    keep[n - 1] = True


def corners(fpr: np.ndarray, tpr: np.ndarray) -> np.ndarray:
    """Which points are not inside a straight vertical or horizontal run (bool (K,)).

    A point whose neighbours on both sides share its FPR (a run of tied scores held by members
    only, whose counts differ from step to step so ``drop_intermediate`` keeps every step) or its
    TPR (non-members only) lies on the segment between the run's ends: it adds no trapezoid area,
    and the largest TPR at FPR <= f is a run's top end, which stays. The first and last points
    always stay. A local rule, so a curve fed in chunks is thinned the same (:class:`_Thin`).
    """
    keep = np.ones(fpr.size, dtype=bool)
    if fpr.size > 2:
        f, t = fpr, tpr
        inner = ((f[:-2] == f[1:-1]) & (f[1:-1] == f[2:])) | ((t[:-2] == t[1:-1]) & (t[1:-1] == t[2:]))
        keep[1:-1] = ~inner
    return keep


def downsample(fpr: np.ndarray, tpr: np.ndarray, *, dense_fpr: float = 1e-2, area_tol: float = 1e-9,
               per_decade: int = 200, fprs: Sequence[float] = ()) -> np.ndarray:
    """Indices of the ROC points to keep (see the module docstring for the guarantee).

    The interior points of straight vertical and horizontal runs go first (:func:`corners`); the
    rest is chosen among the remaining points.

    Parameters
    ----------
    fpr, tpr : ndarray (K,)
        A ROC curve, FPR ascending (sklearn's order).
    dense_fpr : float
        Every point with FPR <= this is kept.
    area_tol : float
        The written curve's trapezoid area differs from the full curve's by at most this (the
        running sum of the chords' signed area changes is kept within it).
    per_decade : int
        A chord spans at most 1/per_decade of a decade of FPR.
    fprs : sequence of float
        No chord skips the last point at or below one of these FPRs: the written curve's TPR there
        is the full curve's, also past ``dense_fpr``.

    Returns
    -------
    ndarray of int, ascending
    """
    fpr = np.ascontiguousarray(fpr, dtype=np.float64)
    tpr = np.ascontiguousarray(tpr, dtype=np.float64)
    idx = np.flatnonzero(corners(fpr, tpr))
    fpr, tpr = fpr[idx], tpr[idx]
    keep = fpr <= dense_fpr
    keep[0] = True
    if fpr.size > 1:
        start = int(np.flatnonzero(keep)[-1])
        _greedy(fpr, tpr, start, float(area_tol), float(10 ** (1.0 / per_decade)), _lims(fprs), keep)
    return idx[keep]


def _lims(fprs: Sequence[float]) -> np.ndarray:
    return np.sort(np.asarray([float(x) for x in fprs], dtype=np.float64))


def pooled_curve(member: np.ndarray, score: np.ndarray, mask: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The full pooled ROC ``(fpr, tpr, thresholds)`` of the pairs ``member[:, mask]``, ``score[:, mask]``.

    Memory-mapped inputs are read a block of rows at a time and the pages read given back
    (:func:`analysis.kernels.pages.drop_mapped_pages`): ``score[:, mask]`` of a few columns touches
    every page of the file, which then stayed resident (0.4 GB per attack at 2000 x 50,000, held
    attack after attack while the ROC curves were drawn).
    """
    if mask is not None and np.asarray(mask, dtype=bool).all():
        mask = None
    mask = None if mask is None else np.asarray(mask, dtype=bool)
    member = read_columns(member, mask).astype(bool, copy=False)
    score = read_columns(score, mask)
    return roc(member.reshape(-1), score.reshape(-1))


# --- bounded memory: the same curve, fed chunk by chunk ---------------------------------------

_PW_BLOCK = 128  # numpy's PW_BLOCKSIZE: the leaves of its pairwise summation
_SUB = 1 << 16  # points handled at a time by the streaming downsampler
#: Peak bytes per pair of the whole-curve path (sklearn's roc_curve on float64 copies: the scores,
#: their argsort, the sorted labels and scores, the cumulative counts, the mask's copies).
WHOLE_BYTES_PER_PAIR = 48


def fits_whole_curve(n_pairs: int, block_bytes: int) -> bool:
    """Whether the whole-curve path (:func:`pooled_curve`, ~48 bytes per pair) fits ``block_bytes``."""
    return int(n_pairs) * WHOLE_BYTES_PER_PAIR <= int(block_bytes)


@numba.njit(cache=True)
def _cum_terms(fpr, tpr, f0, t0, c0, cum, terms):  # pragma: no cover - compiled
    """:func:`_greedy`'s prefix areas continued from the point ``(f0, t0)`` whose prefix is ``c0``.

    ``terms[i]`` is the trapezoid between point i and the one before, as ``np.trapezoid`` has it
    (``(dx * (y1 + y0)) / 2``, the same value as ``* 0.5``); ``cum[i] = cum[i - 1] + terms[i]``.
    """
    pf, pt, pc = f0, t0, c0
    for i in range(fpr.size):
        d = (fpr[i] - pf) * (tpr[i] + pt) * 0.5
        pc = pc + d
        cum[i] = pc
        terms[i] = d
        pf = fpr[i]
        pt = tpr[i]


@numba.njit(cache=True)
def _greedy_part(fpr, tpr, cum, a, drift, area_tol, step_ratio, lims, final, keep):  # pragma: no cover - compiled
    """:func:`_greedy`'s loop on a window of the curve, from its point ``a``, while its choices are settled.

    ``cum`` holds the prefix areas of the WHOLE curve (from its first point), so every difference
    is the one :func:`_greedy` takes. Unless ``final`` (the window ends the curve), a chord start
    whose look-ahead runs into the window's end waits (a later point may still be its end).
    Returns ``(a, drift)`` to continue from.
    """
    n = fpr.size
    while a < n - 1:
        j = a + 1
        j_err = 0.0
        c = a + 2
        lim = _limit(fpr, a, lims)
        while c < n and c - a <= _MAX_SCAN and fpr[c] <= fpr[a] * step_ratio and fpr[c] <= lim:
            err = (fpr[c] - fpr[a]) * (tpr[c] + tpr[a]) * 0.5 - (cum[c] - cum[a])
            if abs(drift + err) <= area_tol:
                j, j_err = c, err
            c += 1
        if not final and c == n and c - a <= _MAX_SCAN:
            break
        drift += j_err
        keep[j] = True
        a = j
    return a, drift


@numba.njit(cache=True)
def _pw_leaf(a, lo, n):  # pragma: no cover - compiled
    """numpy's pairwise_sum of ``a[lo:lo + n]`` for ``n <= 128`` (8 accumulators, then the rest)."""
    if n < 8:
        res = 0.0
        for i in range(n):
            res += a[lo + i]
        return res
    r0, r1, r2, r3 = a[lo], a[lo + 1], a[lo + 2], a[lo + 3]
    r4, r5, r6, r7 = a[lo + 4], a[lo + 5], a[lo + 6], a[lo + 7]
    i = 8
    while i < n - (n % 8):
        r0 += a[lo + i]
        r1 += a[lo + i + 1]
        r2 += a[lo + i + 2]
        r3 += a[lo + i + 3]
        r4 += a[lo + i + 4]
        r5 += a[lo + i + 5]
        r6 += a[lo + i + 6]
        r7 += a[lo + i + 7]
        i += 8
    res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while i < n:
        res += a[lo + i]
        i += 1
    return res


@numba.njit(cache=True)
def _pw_sizes(n, out, k):  # pragma: no cover - compiled
    """Write the leaf lengths of numpy's pairwise summation of ``n`` values to ``out[k:]``, in order."""
    if n <= _PW_BLOCK:
        out[k] = n
        return k + 1
    n2 = n // 2
    n2 -= n2 % 8
    k = _pw_sizes(n2, out, k)
    return _pw_sizes(n - n2, out, k)


@numba.njit(cache=True)
def _pw_tree(n, leaves, k):  # pragma: no cover - compiled
    """Combine the leaf sums as numpy's pairwise summation of ``n`` values does; returns (sum, next leaf)."""
    if n <= _PW_BLOCK:
        return leaves[k], k + 1
    n2 = n // 2
    n2 -= n2 % 8
    left, k = _pw_tree(n2, leaves, k)
    right, k = _pw_tree(n - n2, leaves, k)
    return left + right, k


@numba.njit(cache=True)
def _pw_leaf_sums(a, sizes, k, sums):  # pragma: no cover - compiled
    """Sum the leaves ``k, k+1, ...`` that lie whole in ``a`` (which starts at leaf k); returns (next leaf, used)."""
    lo = 0
    while k < sizes.size and lo + sizes[k] <= a.size:
        sums[k] = _pw_leaf(a, lo, sizes[k])
        lo += sizes[k]
        k += 1
    return k, lo


class _Terms:
    """The trapezoid terms in order, summed at the end exactly as ``np.add.reduce`` sums them all at once.

    numpy's pairwise summation splits by the total count, unknown until the last point: the terms
    wait (in memory up to ``limit`` bytes, then in an anonymous temporary file) and are read back
    once, in order.
    """

    def __init__(self, limit: int):
        self.limit = max(1, int(limit))
        self.parts: list[np.ndarray] = []
        self.held = 0
        self.n = 0
        self.file = None

    def add(self, terms: np.ndarray) -> None:
        self.n += terms.size
        if self.file is None and self.held + terms.nbytes > self.limit:
            self.file = tempfile.TemporaryFile(prefix="roc-terms-")
            for x in self.parts:
                self.file.write(memoryview(x))
            self.parts, self.held = [], 0
        if self.file is not None:
            self.file.write(memoryview(np.ascontiguousarray(terms)))
        else:
            self.parts.append(terms.copy())
            self.held += terms.nbytes

    def _chunks(self):
        if self.file is None:
            yield from self.parts
            return
        self.file.flush()
        self.file.seek(0)
        step = max(_PW_BLOCK, self.limit // 8)
        left = self.n
        while left:
            buf = np.empty(min(step, left))
            got = self.file.readinto(buf)
            if got != buf.nbytes:
                raise OSError("roc: the spilled trapezoid terms were cut short")
            left -= buf.size
            yield buf

    def total(self) -> float:
        """``np.add.reduce`` of every term (numpy's pairwise summation, leaves of 128)."""
        try:
            if self.n == 0:
                return 0.0
            sizes = np.empty(self.n // 64 + 2, dtype=np.int64)
            sizes = sizes[:_pw_sizes(self.n, sizes, 0)]
            sums = np.empty(sizes.size)
            k = 0
            carry = np.empty(0)
            for part in self._chunks():
                a = np.concatenate([carry, part]) if carry.size else part
                k, used = _pw_leaf_sums(a, sizes, k, sums)
                carry = a[used:].copy()
            assert k == sizes.size and carry.size == 0
            return float(_pw_tree(self.n, sums, 0)[0])
        finally:
            self.close()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
        self.parts = []


class _Thin:
    """:func:`corners` on a curve fed in chunks: a point is decided once the point after it has come.

    It holds the last two points fed: the one decided last (the next point's left neighbour) and
    the one waiting for its right neighbour.
    """

    def __init__(self):
        self.f = self.t = self.thr = np.empty(0)

    def feed(self, f: np.ndarray, t: np.ndarray, thr: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The points of ``f, t, thr`` (and of the waiting one) that stay, decided so far."""
        if f.size == 0:
            return f, t, thr
        lo = max(0, self.f.size - 1)  # the held left neighbour was decided (and given) before
        f = np.concatenate([self.f, f])
        t = np.concatenate([self.t, t])
        thr = np.concatenate([self.thr, thr])
        idx = lo + np.flatnonzero(corners(f, t)[lo:-1])  # the last point waits for its successor
        self.f, self.t, self.thr = f[-2:], t[-2:], thr[-2:]
        return f[idx], t[idx], thr[idx]

    def finish(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The last point (the curve's end always stays)."""
        return self.f[-1:], self.t[-1:], self.thr[-1:]


class _StreamDown:
    """:func:`downsample` (and the whole curve's AUROC, TPR@f and size) on a curve fed chunk by chunk.

    The AUROC, TPR@f and size are taken on every point fed; the rest on the points :class:`_Thin`
    lets through. It keeps those from the last chosen chord start on (at most ``_MAX_SCAN`` + 1 of
    them between feeds), with their prefix areas over the whole thinned curve: :func:`_greedy_part` makes
    :func:`_greedy`'s choices, in its order and with its arithmetic, as soon as they are settled.
    """

    def __init__(self, dense_fpr: float, area_tol: float, per_decade: int, fprs: Sequence[float], spill_limit: int):
        self.dense = float(dense_fpr)
        self.tol = float(area_tol)
        self.ratio = float(10 ** (1.0 / per_decade))
        self.fprs = [float(x) for x in fprs]
        self.lims = _lims(fprs)
        self.best = [None] * len(self.fprs)
        self.terms = _Terms(spill_limit)
        self.f = self.t = self.thr = self.cum = np.empty(0)
        self.a = -1  # the chord start in the window; -1 while the points are still within dense_fpr
        self.drift = 0.0
        self.thin = _Thin()
        self.prev_exact = None  # (fpr, tpr) of the last point fed
        self.prev = None  # (fpr, tpr, prefix) of the last point through the thinning
        self.n = 0  # points fed (the whole curve's)
        self.n_down = 0  # points through the thinning
        self.out: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def feed(self, f: np.ndarray, t: np.ndarray, thr: np.ndarray) -> None:
        for i in range(0, f.size, _SUB):
            self._feed(np.ascontiguousarray(f[i:i + _SUB], dtype=np.float64),
                       np.ascontiguousarray(t[i:i + _SUB], dtype=np.float64), np.asarray(thr[i:i + _SUB]))

    def _emit(self, idx) -> None:
        self.out.append((self.f[idx].copy(), self.t[idx].copy(), self.thr[idx].copy()))

    def _feed(self, f, t, thr) -> None:
        if f.size == 0:
            return
        self._exact(f, t)
        self._down(*self.thin.feed(f, t, thr))

    def _exact(self, f, t) -> None:
        """The whole curve's TPR@f, trapezoid terms and size, on every point fed."""
        for k, x in enumerate(self.fprs):  # tpr_at_fpr: the largest TPR at FPR <= x
            ok = f <= x
            if ok.any():
                m = float(np.max(t[ok]))
                self.best[k] = m if self.best[k] is None else max(self.best[k], m)
        cum = np.empty(f.size)
        terms = np.empty(f.size)
        if self.prev_exact is None:  # the curve's first point: no trapezoid before it
            _cum_terms(f[1:], t[1:], f[0], t[0], 0.0, cum[1:], terms[1:])
            self.terms.add(terms[1:])
        else:
            _cum_terms(f, t, *self.prev_exact, 0.0, cum, terms)
            self.terms.add(terms)
        self.prev_exact = (float(f[-1]), float(t[-1]))
        self.n += f.size

    def _down(self, f, t, thr) -> None:
        """:func:`downsample`'s choices among the points :class:`_Thin` let through."""
        if f.size == 0:
            return
        cum = np.empty(f.size)
        scratch = np.empty(f.size)
        if self.prev is None:  # the first point: prefix 0
            cum[0] = 0.0
            _cum_terms(f[1:], t[1:], f[0], t[0], 0.0, cum[1:], scratch[1:])
        else:
            _cum_terms(f, t, *self.prev, cum, scratch)
        self.prev = (float(f[-1]), float(t[-1]), float(cum[-1]))
        first = self.n_down == 0
        self.n_down += f.size
        self.f = np.concatenate([self.f, f])
        self.t = np.concatenate([self.t, t])
        self.thr = np.concatenate([self.thr, thr.astype(np.float64)])
        self.cum = np.concatenate([self.cum, cum])
        if self.a < 0:
            d = int(np.searchsorted(self.f, self.dense, side="right"))
            if first:
                d = max(d, 1)  # the first point is always kept
            if d == self.f.size:  # all within dense_fpr: all kept; the last may still be the greedy's start
                self._emit(slice(0, d - 1))
                self._cut(d - 1)
                return
            self._emit(slice(0, d - 1))
            self._cut(d - 1)
            self.a = 0
        self._greedy(final=False)

    def _cut(self, a: int) -> None:
        self.f, self.t, self.thr, self.cum = self.f[a:], self.t[a:], self.thr[a:], self.cum[a:]

    def _greedy(self, final: bool) -> None:
        keep = np.zeros(self.f.size, dtype=bool)
        keep[0] = True  # the window starts at the chord start, a kept point
        a, self.drift = _greedy_part(self.f, self.t, self.cum, self.a, self.drift, self.tol, self.ratio, self.lims,
                                      final, keep)
        if final:
            keep[-1] = True
            self._emit(np.flatnonzero(keep))
            self._cut(self.f.size)
            return
        self._emit(np.flatnonzero(keep[:a]))
        self._cut(a)
        self.a = 0

    def finish(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, dict[float, float], int]:
        """``(fpr, tpr, threshold)`` kept, the AUROC, TPR@f and the number of points of the whole curve."""
        if self.n:
            self._down(*self.thin.finish())
        if self.f.size:
            self.a = max(self.a, 0)
            self._greedy(final=True)
        f, t, thr = (np.concatenate([o[i] for o in self.out]) if self.out else np.empty(0) for i in range(3))
        auroc = self.terms.total()
        tpr_at = {x: (0.0 if b is None else b) for x, b in zip(self.fprs, self.best)}
        return f, t, thr, auroc, tpr_at, self.n


def _bounded_curve(member: np.ndarray, score: np.ndarray, mask: np.ndarray, fprs: Sequence[float], *, dense: float,
                   area_tol: float, per_decade: int, block_bytes: int):
    """The whole-curve path's ``(fpr, tpr, threshold, auroc, tpr_at, n_full)`` in about ``block_bytes`` of memory."""
    # pooled_roc_points' peak is a few times its own budget (a group of keys, its recorded points and
    # their float copies): at 2000 x 50,000 with a quarter, this call took ~1.2 x block_bytes + 0.1 GiB
    share = max(4096, int(block_bytes) // 5)
    down = _StreamDown(dense, area_tol, per_decade, fprs, spill_limit=share)
    try:
        _, _, _, n_full = pooled_roc_points(member, score, list(fprs), down.feed, mask, block_bytes=share)
        f, t, thr, auroc, tpr_at, n = down.finish()
    finally:
        down.terms.close()
    if n != n_full:  # pragma: no cover - a broken stream
        raise RuntimeError(f"roc: {n} points streamed, the scan kept {n_full}")
    return f, t, thr, auroc, tpr_at, n_full


#: Every ROC point is kept up to ``dense_fpr`` but not past this many false positives: at the
#: paper's shape (2000 targets x 50,000 samples, 5e7 non-member pairs) FPR 1% is 500,000 false
#: positives and kept millions of points per curve (roc.csv was 1.4 GB, 22 million rows, and held
#: 3.5 GB while written). Beyond it the greedy keeps ``per_decade`` points a decade and the area
#: tolerance. Stores below 10^6 non-member pairs are not affected.
DENSE_NEGATIVES = 10_000


def _dense_limit(dense_fpr: float, n_neg: int) -> float:
    """The FPR up to which every point is kept: ``dense_fpr``, or :data:`DENSE_NEGATIVES` false
    positives when that is smaller."""
    return min(float(dense_fpr), DENSE_NEGATIVES / max(1, int(n_neg)))


def roc_curves(pairs: Mapping[str, tuple[np.ndarray, np.ndarray]], masks: Mapping[str, np.ndarray],
               fprs: Sequence[float], *, dense_fpr: float = 1e-2, area_tol: float = 1e-9,
               per_decade: int = 200, block_bytes: int | None = None) -> list[RocCurve]:
    """Every attack's pooled, downsampled ROC on every column.

    Parameters
    ----------
    pairs : mapping attack -> (member, score)
        ``member`` (T, N) bool and ``score`` (T, N), e.g. ``LiraResult.member`` and
        ``LiraResult.scores[attack]``; read one attack at a time.
    masks : mapping column -> bool (N,)
        Which samples each column pools, e.g. ``{"All": ..., "Under": ..., "random": ...}``.
    fprs : sequence of float
        FPRs at which :attr:`RocCurve.tpr_at` is taken (from the full curve); ``dense_fpr`` is raised
        to the largest, then lowered to :data:`DENSE_NEGATIVES` false positives where that is smaller.
    dense_fpr, area_tol, per_decade
        :func:`downsample`'s settings.
    block_bytes : int, optional
        Memory budget of one column (default :data:`analysis.kernels.pooled.DEFAULT_BLOCK_BYTES`):
        a column of float32 scores whose pairs do not fit it (:func:`fits_whole_curve`) is computed in
        about this much memory (:func:`_bounded_curve`), with the same result, bit for bit.

    Returns
    -------
    list of RocCurve
        Attack-major, columns in ``masks`` order; a column without both classes has no curve.
    """
    dense_all = max([float(dense_fpr), *map(float, fprs)])
    budget = int(DEFAULT_BLOCK_BYTES if block_bytes is None else block_bytes)
    curves = []
    for attack in pairs:
        member, score = pairs[attack]
        for column, mask in masks.items():
            mask = np.asarray(mask, dtype=bool)
            n_pairs = int(np.shape(member)[0]) * int(mask.sum())
            if getattr(score, "dtype", None) == np.float32 and not fits_whole_curve(n_pairs, budget):
                n_pos = count_members(member, None if mask.all() else mask, budget)
                n_neg = n_pairs - n_pos
                if n_pos == 0 or n_neg == 0:
                    continue
                f, t, thr, auroc, tpr_at, n_full = _bounded_curve(
                    member, score, mask, fprs, dense=_dense_limit(dense_all, n_neg), area_tol=area_tol,
                    per_decade=per_decade, block_bytes=budget)
                curves.append(RocCurve(attack=str(attack), column=str(column), fpr=f, tpr=t, threshold=thr,
                                       auroc=auroc, tpr_at=tpr_at, n_pos=n_pos, n_neg=n_neg, n_full=n_full))
                continue
            n_pos = count_members(member, mask, 16 << 20)
            n_neg = n_pairs - n_pos
            if n_pos == 0 or n_neg == 0:
                continue
            f, t, thr = pooled_curve(member, score, mask)
            keep = downsample(f, t, dense_fpr=_dense_limit(dense_all, n_neg), area_tol=area_tol,
                              per_decade=per_decade, fprs=fprs)
            curves.append(RocCurve(attack=str(attack), column=str(column), fpr=f[keep], tpr=t[keep],
                                   threshold=thr[keep], auroc=float(np.trapezoid(t, f)),
                                   tpr_at={float(x): tpr_at_fpr(f, t, float(x)) for x in fprs},
                                   n_pos=n_pos, n_neg=n_neg, n_full=int(f.size)))
    return curves


_CSV_COLUMNS = ["attack", "column", "fpr", "tpr", "threshold"]


def _curve_frame(c: RocCurve) -> pd.DataFrame:
    return pd.DataFrame({"attack": c.attack, "column": c.column, "fpr": c.fpr, "tpr": c.tpr, "threshold": c.threshold})


def curves_frame(curves: Sequence[RocCurve]) -> pd.DataFrame:
    """The curves as one tidy DataFrame: ``attack, column, fpr, tpr, threshold``."""
    parts = [_curve_frame(c) for c in curves]
    if not parts:
        return pd.DataFrame(columns=_CSV_COLUMNS)
    return pd.concat(parts, ignore_index=True)


def write_roc_csv(curves: Sequence[RocCurve], path: str | Path) -> Path:
    """Write the curves as :func:`curves_frame`'s CSV, one curve at a time, atomically.

    The bytes are those of ``curves_frame(curves).to_csv(index=False, float_format="%.17g")`` (full
    precision: float64 values round-trip exactly) without the frame of all curves or its text.
    """
    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            pd.DataFrame(columns=_CSV_COLUMNS).to_csv(fh, index=False)
            for c in curves:
                _curve_frame(c).to_csv(fh, index=False, header=False, float_format="%.17g")

    return atomic_write(Path(path), write)


def _title(column: str) -> str:
    return COLUMN_TITLES.get(column, column)


def _style(attacks: Sequence[str]) -> dict[str, dict[str, object]]:
    """One colour and line style per attack, the same in every panel."""
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    dashes = ["-", "--", "-.", ":"]
    return {a: {"color": cmap(i % 10), "linestyle": dashes[(i // 10) % len(dashes)]} for i, a in enumerate(attacks)}


def plot_roc(curves: Sequence[RocCurve], path: str | Path, *, fprs: Sequence[float] = (0.001,)) -> list[Path]:
    """One row per column: the ROC on log-log axes (left) and on linear axes (right), every attack a curve.

    The log axes start at 1e-5 or 1/(non-member pairs), whichever is larger, as in the LiRA paper;
    the dotted diagonal is a random guess. Each row's legend (right of its panels, outside the axes)
    gives every attack's AUROC and its TPR at the lowest of ``fprs``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    columns = list(dict.fromkeys(c.column for c in curves))
    attacks = list(dict.fromkeys(c.attack for c in curves))
    style = _style(attacks)
    f0 = min(float(x) for x in fprs) if fprs else 0.001
    rows = max(1, len(columns))
    fig = Figure(figsize=(13.0, 3.9 * rows), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, 2, squeeze=False)
    if not columns:
        axes[0, 0].text(0.5, 0.5, "no column has both members and non-members", ha="center", va="center")
    for r, column in enumerate(columns):
        ax_log, ax_lin = axes[r]
        these = [c for c in curves if c.column == column]
        low = max(_LOW, 1.0 / max(c.n_neg for c in these))
        for c in these:
            label = f"{c.attack}: AUROC {c.auroc:.3f}, TPR@{fpr_label(f0)} {100 * c.tpr_at.get(f0, tpr_at_fpr(c.fpr, c.tpr, f0)):.2f}%"
            # log axes: FPR or TPR 0 is drawn just off the axes, so a curve that rises at FPR 0 (or
            # a perfect one) shows as a line entering from the left edge instead of vanishing
            ax_log.plot(np.maximum(c.fpr, low / 10), np.maximum(c.tpr, low / 10), lw=1.2, **style[c.attack])
            ax_lin.plot(c.fpr, c.tpr, lw=1.2, label=label, **style[c.attack])
        for ax, lo in ((ax_log, low), (ax_lin, 0.0)):
            ax.plot([lo, 1], [lo, 1], color="0.5", lw=0.8, linestyle=":", label=None)
            ax.set_xlim(lo, 1)
            ax.set_ylim(lo, 1.0 if lo == 0 else 1.05)
            ax.set_xlabel("false positive rate")
            ax.set_ylabel("true positive rate")
        ax_log.set_xscale("log")
        ax_log.set_yscale("log")
        for axis in (ax_log.xaxis, ax_log.yaxis):  # decades only: minor labels collide on short ranges
            axis.set_minor_formatter(NullFormatter())
        ax_log.axvline(f0, color="0.7", lw=0.6)
        # two lines: a long set name with the pair counts on one line is wider than the axes and was
        # cut at the figure's left edge
        ax_log.set_title(f"{_title(column)}: log-log\n({these[0].n_pos} member, {these[0].n_neg} non-member pairs)",
                         fontsize="medium")
        ax_lin.set_title(f"{_title(column)}: linear axes", fontsize="medium")
        ax_lin.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize="small", frameon=False)
    return save_figure(fig, path)


def write_roc(out: str | Path, pairs: Mapping[str, tuple[np.ndarray, np.ndarray]], masks: Mapping[str, np.ndarray],
              fprs: Sequence[float], *, block_bytes: int | None = None) -> list[RocCurve]:
    """Compute every curve, write ``OUT/roc/roc.csv`` and draw ``OUT/plots/roc.png|pdf``.

    Runs on an analysis' :class:`analysis.store_io.figures.FigureQueue` (it draws with matplotlib).
    ``block_bytes``: :func:`roc_curves`' memory budget per column.
    """
    out = Path(out)
    curves = roc_curves(pairs, masks, fprs, block_bytes=block_bytes)
    write_roc_csv(curves, out / ROC_CSV)
    plot_roc(curves, out / "plots" / "roc.png", fprs=fprs)
    return curves

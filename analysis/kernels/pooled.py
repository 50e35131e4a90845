"""The pooled ROC of all (target, sample) pairs in memory bounded by a byte budget, whatever T*N is.

Today's pooled metrics (:func:`analysis.kernels.metrics.per_target_metrics` on the pairs as ONE row)
build a uint64 key per pair and sort them all: ~8-13 bytes per pair, several GB at the paper's shape
(2000 x 50,000). The ROC only depends on, per distinct score, how many members and non-members have
it, walked from the highest score down. So, with the SAME keys (:func:`analysis.kernels.keys._order_keys`:
order-preserving score bits, the member flag in bit 0), made one at a time by compiled passes that
read the scores and flags a block of rows at a time (no key array, no masked copy):

1. one streaming pass counts the keys per bucket of their top 16 bits (65,536 buckets) and the
   members, and checks the scores are finite;
2. buckets are grouped from the top down into groups of at most ``7/8 * block_bytes // 8`` keys; one
   streaming pass per group gathers its keys, sorts them, and a STATEFUL version of
   :func:`analysis.kernels.roc_scan.roc_scan` (:func:`scan_sorted`, state carried from group to group:
   the cumulative counts, the run being read, the point waiting for its drop_intermediate decision,
   the area in integers, the TPR@f answers) continues. A bucket larger than a group is split by
   its next 16 bits (one more counting pass), down to single keys, whose counts are fed as runs;
   a tied run that spans two groups is merged (the run stays open until a different value comes).

Every arithmetic step is the stateless scan's, in the same order: the AUROC and TPR@f are
bit-identical to today's pooled row, whatever the budget (tests/test_pooled_bounded.py). Peak extra
memory: one group of keys (sorted in place) and the block of rows being read (an eighth of
``block_bytes``: of a read-only memmap, its pages are given back after each block by
:func:`analysis.kernels.pages.drop_mapped_pages`), i.e. about ``block_bytes``. Cost: 1 + (groups)
passes over the scores (each remakes the keys); a row longer than a block is still read whole.

With ``record=True`` the scan also gives every ROC point sklearn's ``roc_curve``
(``drop_intermediate=True``) keeps, in FPR order, chunk by chunk (:func:`pooled_roc_points`), for
:mod:`analysis.output.roc`'s streaming downsampling; its groups stay ``block_bytes // 16`` keys
(each key with 24 bytes of points).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numba
import numpy as np

from analysis.kernels.buckets import bucket_of
from analysis.kernels.keys import key32, key64
from analysis.kernels.pages import drop_mapped_pages

__all__ = ["DEFAULT_BLOCK_BYTES", "pooled_metrics", "pooled_roc_points", "fits_whole", "scan_sorted",
           "scan_finish", "key_to_score"]

#: Default byte budget of one pooled computation (its peak extra memory, about).
DEFAULT_BLOCK_BYTES = 256 << 20
_BITS = 16  # bits of the key per bucket level
_NB = 1 << _BITS

# integer state of the scan (int64 array)
_AREA2, _TP, _FP, _PEND, _PFIRST, _PTP, _PFP, _PDN, _PDP, _HAVE, _CV, _CDN, _CDP, _PV, _NKEPT = range(15)
_NSTATE = 15


def fits_whole(n_pairs: int, block_bytes: int) -> bool:
    """Whether today's one-row path (~16 bytes per pair at its peak) fits ``block_bytes``."""
    return int(n_pairs) * 16 <= int(block_bytes)


def new_state() -> np.ndarray:
    st = np.zeros(_NSTATE, dtype=np.int64)
    st[_PFIRST] = 1
    return st


@numba.njit(cache=True, nogil=True)
def _keep(st, best, fprs, pf, qf, pts, npts, record):  # pragma: no cover - compiled
    """The pending point is kept: TPR@f answers, and its (fp, tp, value) recorded."""
    x = st[_PFP] / qf
    for k in range(fprs.size):
        if x <= fprs[k]:
            best[k] = st[_PTP] / pf
    st[_NKEPT] += 1
    if record:
        pts[npts, 0] = st[_PFP]
        pts[npts, 1] = st[_PTP]
        pts[npts, 2] = st[_PV]
        npts += 1
    return npts


@numba.njit(cache=True, nogil=True)
def _close(st, best, fprs, pf, qf, pts, npts, record):  # pragma: no cover - compiled
    """The run being read is complete: the stateless scan's body for one tied run."""
    dn = st[_CDN]
    dp = st[_CDP]
    tp = st[_TP]
    st[_AREA2] += dn * (2 * tp + dp)
    st[_TP] = tp + dp
    st[_FP] += dn
    if st[_PEND] != 0 and (st[_PFIRST] != 0 or st[_PDN] != dn or st[_PDP] != dp):
        npts = _keep(st, best, fprs, pf, qf, pts, npts, record)
    if st[_PEND] != 0:
        st[_PFIRST] = 0
    st[_PEND] = 1
    st[_PTP] = st[_TP]
    st[_PFP] = st[_FP]
    st[_PDN] = dn
    st[_PDP] = dp
    st[_PV] = st[_CV]
    return npts


@numba.njit(cache=True, nogil=True)
def _push(st, best, fprs, pf, qf, pts, npts, record, v, dn, dp):  # pragma: no cover - compiled
    """``dn`` non-members and ``dp`` members of value ``v`` (int64, key >> 1), values descending."""
    if st[_HAVE] != 0 and st[_CV] == v:
        st[_CDN] += dn
        st[_CDP] += dp
        return npts
    if st[_HAVE] != 0:
        npts = _close(st, best, fprs, pf, qf, pts, npts, record)
    st[_HAVE] = 1
    st[_CV] = v
    st[_CDN] = dn
    st[_CDP] = dp
    return npts


@numba.njit(cache=True, nogil=True)
def scan_sorted(key, st, best, fprs, pf, qf, pts, record):  # pragma: no cover - compiled
    """Continue the scan over ``key`` (uint64, sorted ascending, every key <= the previous chunk's).

    Returns the number of points written to ``pts`` (int64 (M, 3): fp, tp, value; M >= key.size + 2)
    when ``record``.
    """
    one = np.uint64(1)
    npts = 0
    i = key.size - 1
    while i >= 0:
        w = key[i] >> one
        dn = 0
        dp = 0
        while i >= 0 and (key[i] >> one) == w:
            if key[i] & one:
                dp += 1
            else:
                dn += 1
            i -= 1
        npts = _push(st, best, fprs, pf, qf, pts, npts, record, np.int64(w), dn, dp)
    return npts


@numba.njit(cache=True, nogil=True)
def _scan_hist(hist, base, st, best, fprs, pf, qf, pts, record):  # pragma: no cover - compiled
    """Feed single keys ``base | b`` with counts ``hist[b]``, b descending (the finest level)."""
    one = np.uint64(1)
    npts = 0
    for b in range(hist.size - 1, -1, -1):
        c = hist[b]
        if c == 0:
            continue
        k = base | np.uint64(b)
        if k & one:
            npts = _push(st, best, fprs, pf, qf, pts, npts, record, np.int64(k >> one), 0, c)
        else:
            npts = _push(st, best, fprs, pf, qf, pts, npts, record, np.int64(k >> one), c, 0)
    return npts


@numba.njit(cache=True, nogil=True)
def scan_finish(st, best, fprs, pf, qf, pts, record, out):  # pragma: no cover - compiled
    """Close the last run, keep the last point, write ``out = [AUROC, TPR@fprs...]``."""
    npts = 0
    if st[_HAVE] != 0:
        npts = _close(st, best, fprs, pf, qf, pts, npts, record)
        st[_HAVE] = 0
    npts = _keep(st, best, fprs, pf, qf, pts, npts, record)  # the last point is always kept
    out[0] = st[_AREA2] / (2.0 * pf * qf)
    for k in range(fprs.size):
        out[1 + k] = best[k]
    return npts


@numba.njit(cache=True, nogil=True)
def _pair_key(bits, member, r, c, is32):  # pragma: no cover - compiled
    """:func:`analysis.kernels.keys._order_keys`'s key of pair (r, c) (the member flag in bit 0)."""
    f = np.uint8(1) if member[r, c] else np.uint8(0)
    if is32:
        return key32(np.uint32(bits[r, c]), f)
    return key64(np.uint64(bits[r, c]), f, True)


@numba.njit(cache=True, nogil=True)
def _hist(bits, member, cols, is32, prefix, shift, hist):  # pragma: no cover - compiled
    """Count the pairs' keys with ``key >> shift == prefix`` (all if shift == 64) per their next 16 bits.

    The pairs are rows ``bits`` (the scores' bits, uint32 or uint64) x columns ``cols`` and their
    keys are made on the fly (no key array). Returns (members, non-finite scores) among all of them.
    """
    e32 = np.uint32(0x7F800000)
    e64 = np.uint64(0x7FF0000000000000)
    n_member = 0
    n_bad = 0
    for r in range(bits.shape[0]):
        for j in range(cols.size):
            c = cols[j]
            if member[r, c]:
                n_member += 1
            if is32:
                n_bad += (np.uint32(bits[r, c]) & e32) == e32
            else:
                n_bad += (np.uint64(bits[r, c]) & e64) == e64
            b = bucket_of(_pair_key(bits, member, r, c, is32), prefix, shift)
            if b >= 0:
                hist[b] += 1
    return n_member, n_bad


@numba.njit(cache=True, nogil=True)
def _gather(bits, member, cols, is32, prefix, shift, lo, hi, out, pos):  # pragma: no cover - compiled
    """Append to ``out`` the keys of :func:`_hist`'s buckets ``lo..hi``; returns the new length."""
    for r in range(bits.shape[0]):
        for j in range(cols.size):
            k = _pair_key(bits, member, r, cols[j], is32)
            b = bucket_of(k, prefix, shift)
            if lo <= b and b <= hi:
                out[pos] = k
                pos += 1
    return pos


class _Pairs:
    """The pairs ``member[:, mask]``, ``score[:, mask]``, re-read a block of rows at a time on every pass.

    A block is a view of the rows (no masked copy, no key array: the compiled passes make each key
    as they read it), and the pages of a read-only memmap it touched are given back after it
    (:func:`analysis.store_io.spill.drop_mapped_pages`), so a pass over a file holds one block of it.
    """

    def __init__(self, member, score, mask, block_bytes, record=False):
        self.member = member
        self.score = score
        self.is32 = score.dtype == np.float32
        t_rows, n_all = score.shape
        self.cols = np.arange(n_all, dtype=np.int64) if mask is None else np.flatnonzero(mask).astype(np.int64)
        self.n_cols = self.cols.size
        self.n = t_rows * self.n_cols
        # an eighth of the budget for the rows being read (scores and flags), the rest for a group
        # of keys (8 bytes a key); recording the ROC points (24 bytes a key more) keeps the groups
        # analysis.output.roc sized its share for
        self.step = max(1, (int(block_bytes) // 8) // max(1, n_all * (score.dtype.itemsize + 1)))
        self.cap = max(1, int(block_bytes) // 16 if record else (int(block_bytes) - int(block_bytes) // 8) // 8)

    def blocks(self):
        """``(bits, member)`` of each block of rows: the scores' bits (uint32/uint64) and the flags."""
        bits_dtype = np.uint32 if self.is32 else np.uint64
        for r0 in range(0, self.score.shape[0], self.step):
            s = self.score[r0:r0 + self.step]
            mb = self.member[r0:r0 + self.step]
            yield np.ascontiguousarray(s).view(bits_dtype), np.ascontiguousarray(mb)
            drop_mapped_pages(s)
            drop_mapped_pages(mb)


def _run(pairs: _Pairs, fprs: np.ndarray, record: bool,
         on_points: Callable[[np.ndarray, int, int], None] | None) -> tuple[np.ndarray, int, int, int]:
    """The bounded scan; returns (out, p, q, kept points)."""
    out = np.full(1 + fprs.size, np.nan)
    hist0 = np.zeros(_NB, dtype=np.int64)
    p = 0
    bad = 0
    for bits, mb in pairs.blocks():
        n_member, n_bad = _hist(bits, mb, pairs.cols, pairs.is32, np.uint64(0), 64, hist0)
        p, bad = p + n_member, bad + n_bad
    if bad:
        raise ValueError("per_target_metrics: scores contain NaN or infinity")  # as sklearn's roc_curve
    q = pairs.n - p
    if pairs.n == 0 or p == 0 or q == 0:
        return out, p, q, 0
    pf, qf = float(p), float(q)
    st = new_state()
    best = np.zeros(fprs.size)
    pts_small = np.zeros((0 if not record else _NB + 2, 3), dtype=np.int64)

    def emit(pts, npts):
        if record and npts:
            on_points(pts[:npts], p, q)

    def walk(prefix: int, shift: int, hist: np.ndarray) -> None:
        sub = shift - _BITS
        if sub == 0:  # every bucket is a single key: its count is its run
            emit(pts_small, _scan_hist(hist, np.uint64(prefix << _BITS), st, best, fprs, pf, qf, pts_small, record))
            return
        nz = np.flatnonzero(hist)[::-1]  # the non-empty buckets, top down
        i = 0
        while i < nz.size:
            b = int(nz[i])
            c = int(hist[b])
            child = (prefix << _BITS) | b
            if c > pairs.cap:  # split the bucket by its next bits (one more counting pass)
                h = np.zeros(_NB, dtype=np.int64)
                for bits, mb in pairs.blocks():
                    _hist(bits, mb, pairs.cols, pairs.is32, np.uint64(child), sub, h)
                walk(child, sub, h)
                i += 1
                continue
            hi, tot = b, 0
            while i < nz.size and tot + int(hist[nz[i]]) <= pairs.cap:
                tot += int(hist[nz[i]])
                b = int(nz[i]) - 1
                i += 1
            buf = np.empty(tot, dtype=np.uint64)
            pos = 0
            for bits, mb in pairs.blocks():
                pos = _gather(bits, mb, pairs.cols, pairs.is32, np.uint64(prefix), shift, b + 1, hi, buf, pos)
            buf.sort()
            pts = np.empty((tot + 2 if record else 0, 3), dtype=np.int64)
            emit(pts, scan_sorted(buf, st, best, fprs, pf, qf, pts, record))
            del buf, pts

    walk(0, 64, hist0)
    emit(pts_small, scan_finish(st, best, fprs, pf, qf, pts_small, record, out))
    return out, p, q, int(st[_NKEPT])


def _prepare(member, score, mask):
    member = np.asarray(member, dtype=bool) if not isinstance(member, np.ndarray) else member
    if not isinstance(score, np.ndarray):
        score = np.asarray(score)
    if score.dtype.kind != "f":
        score = score.astype(np.float64)
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
    return member, score, mask


def _no_all(mask: np.ndarray | None) -> np.ndarray | None:
    return None if mask is None or mask.all() else mask


def pooled_metrics(member: np.ndarray, score: np.ndarray, fprs: Sequence[float], mask: np.ndarray | None = None,
                   *, block_bytes: int = DEFAULT_BLOCK_BYTES) -> np.ndarray:
    """``[AUROC, TPR@f...]`` of the pairs ``member[:, mask]``, ``score[:, mask]`` pooled as one row.

    Bit-identical to ``per_target_metrics(member[:, mask].reshape(1, -1), score[:, mask].reshape(1, -1),
    fprs)[0]``, with about ``block_bytes`` of extra memory (see the module docstring). ``member`` and
    ``score`` (T, N) may be read-only memmaps: they are read one block of rows at a time.
    """
    member, score, mask = _prepare(member, score, mask)
    out, _, _, _ = _run(_Pairs(member, score, _no_all(mask), block_bytes), np.asarray(fprs, dtype=np.float64),
                        False, None)
    return out


def key_to_score(v: np.ndarray, is32: bool) -> np.ndarray:
    """The float64 score of each run value ``v`` (int64, key >> 1); -0.0 comes back as +0.0.

    float64 keys lost the score's lowest bit to the member flag: the value has it cleared.
    """
    v = np.asarray(v, dtype=np.int64).astype(np.uint64)
    if is32:
        o = (v >> np.uint64(31)).astype(np.uint32)
        top = np.uint32(1 << 31)
        bits = np.where(o & top, o ^ top, ~o).astype(np.uint32)
        return bits.view(np.float32).astype(np.float64)
    u = v << np.uint64(1)
    top = np.uint64(1) << np.uint64(63)
    bits = np.where(u & top, u ^ top, ~u).astype(np.uint64)
    return bits.view(np.float64)


def pooled_roc_points(member: np.ndarray, score: np.ndarray, fprs: Sequence[float],
                      on_points: Callable[[np.ndarray, np.ndarray, np.ndarray], None],
                      mask: np.ndarray | None = None, *, block_bytes: int = DEFAULT_BLOCK_BYTES
                      ) -> tuple[np.ndarray, int, int, int]:
    """Stream the pooled ROC's points (sklearn's ``roc_curve``, ``drop_intermediate=True``) in bounded memory.

    ``on_points(fpr, tpr, threshold)`` gets the points chunk by chunk, FPR ascending, starting with
    sklearn's prepended ``(0, 0, inf)``; ``fpr = fp / negatives`` and ``tpr = tp / positives`` as
    sklearn divides them. Returns ``(out, n_pos, n_neg, n_points)``: ``out = [AUROC, TPR@f...]``
    exactly as :func:`pooled_metrics` (the integer trapezoid area), and the number of points
    (``n_full``). Nothing is called if the pairs lack either class (``out`` is NaN).
    """
    member, score, mask = _prepare(member, score, mask)
    pairs = _Pairs(member, score, _no_all(mask), block_bytes, record=True)
    started = []

    def on_raw(pts: np.ndarray, p: int, q: int) -> None:
        if not started:
            started.append(True)
            on_points(np.zeros(1), np.zeros(1), np.array([np.inf]))
        on_points(pts[:, 0] / float(q), pts[:, 1] / float(p), key_to_score(pts[:, 2], pairs.is32))

    out, p, q, kept = _run(pairs, np.asarray(fprs, dtype=np.float64), True, on_raw)
    return out, p, q, (kept + 1 if started else 0)

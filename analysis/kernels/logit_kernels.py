"""Compiled per-(model, sample) statistics of logits: phi, the attacks' signals, OOD scores and
Shokri's features, from one loop over each row of C logits.

One pass of the analysis evaluates these for every shadow and sample (2000 x 20,000 rows of C
logits at full size). numpy needs a dozen (rows, C) float64 temporaries per statistic and
recomputes the softmax for each; :func:`_row_stats` computes the row's maximum, exponentials and
log-sum-exp once and derives every requested statistic from them (about 5x faster than numpy for
the whole set). Every caller goes through it (:func:`analysis.store_io.load.phi_from_logits`,
:func:`signals_from_logits`, :mod:`analysis.studies.ood`,
:func:`analysis.attacks.shokri.shokri_features` and the one pass), so the same logits give the
same values, to the bit, wherever they are computed.
"""

from __future__ import annotations

import math

import numba
import numpy as np

__all__ = ["row_stats", "phi_rows", "signal_rows", "ood_rows", "shokri_rows", "signals_from_logits",
           "mentr_from_logits", "song_bin"]


@numba.njit(cache=True, nogil=True)
def _row_stats(z, y, phi, sig, ood, feat):  # pragma: no cover - compiled
    """Fill the outputs that have rows (an output with 0 rows is not computed).

    phi (R,): ``z_y - logsumexp_{j != y} z_j``; sig (R, 3): loss, p_y, Mentr; ood (R, 2): MSP
    (1 - max softmax) and Energy (-logsumexp z); feat (R, C + 3): softmax sorted decreasingly,
    p_y, max(log p_y, -50), argmax == y. float64 arithmetic throughout.
    """
    r, c = z.shape
    want_phi, want_sig, want_ood, want_feat = phi.shape[0] > 0, sig.shape[0] > 0, ood.shape[0] > 0, feat.shape[0] > 0
    e = np.empty(c)
    srt = np.empty(c)
    for i in range(r):
        yi = y[i]
        m = -np.inf
        top = 0
        for j in range(c):
            if z[i, j] > m:  # first maximum, as argmax
                m = z[i, j]
                top = j
        s = 0.0
        for j in range(c):
            e[j] = math.exp(z[i, j] - m)
            s += e[j]
        lse = m + math.log(s)
        logf_y = z[i, yi] - lse
        # logsumexp over the classes other than the top one, scaled by their own maximum: the
        # exact log(1 - F_top) when F_top is near 1 (s - 1 would cancel), and phi when y is on top
        lse_not_top = 0.0
        if (want_phi and yi == top) or (want_sig and e[top] / s > 0.5):
            m2 = -np.inf
            for j in range(c):
                if j != top and z[i, j] > m2:
                    m2 = z[i, j]
            s2 = 0.0
            for j in range(c):
                if j != top:
                    s2 += math.exp(z[i, j] - m2)
            lse_not_top = m2 + math.log(s2)
        if want_phi:
            if yi == top:
                phi[i] = z[i, yi] - lse_not_top
            else:  # the top class is among the others: their sum is >= 1, no cancellation
                phi[i] = z[i, yi] - (m + math.log(s - e[yi]))
        if want_sig:
            others = 0.0
            log1mf_y = 0.0
            for j in range(c):
                f = e[j] / s
                # log1p(-F) is exact for F <= 1/2; only the top class can exceed 1/2
                l1 = (lse_not_top - lse) if (j == top and f > 0.5) else math.log1p(-min(f, 0.5))
                if j == yi:
                    log1mf_y = l1
                else:
                    others += f * l1
            sig[i, 0] = -logf_y
            sig[i, 1] = math.exp(logf_y)
            sig[i, 2] = -math.exp(log1mf_y) * logf_y - others
        if want_ood:
            ood[i, 0] = -math.expm1(-math.log(s))  # 1 - exp(max z - logsumexp z)
            ood[i, 1] = -lse
        if want_feat:
            # the softmax values in decreasing order: a bubble network of min/max exchanges, branch-free
            # (an insertion sort's mispredicted branches were 20x slower; counting ranks, 100 compares
            # and a scatter per row at C = 10, 3x); equal values are interchangeable, only values are kept
            for j in range(c):
                srt[j] = e[j]
            for a in range(c - 1):
                for b in range(c - 1 - a):
                    x0 = srt[b]
                    x1 = srt[b + 1]
                    srt[b] = max(x0, x1)
                    srt[b + 1] = min(x0, x1)
            for j in range(c):
                feat[i, j] = srt[j] / s
            feat[i, c] = math.exp(logf_y)
            feat[i, c + 1] = max(logf_y, -50.0)
            feat[i, c + 2] = 1.0 if top == yi else 0.0


def row_stats(z: np.ndarray, y: np.ndarray | None = None, *, phi: bool = False, signals: bool = False,
              ood: bool = False, features: bool = False) -> dict[str, np.ndarray]:
    """The requested statistics of every row of logits ``z`` (..., C) with labels ``y`` (broadcast to
    ``z.shape[:-1]``): ``phi`` (...), ``signals`` (..., 3), ``ood`` (..., 2), float64; ``features``
    (..., C + 3) float32."""
    z = np.asarray(z)
    if z.dtype not in (np.float32, np.float64):
        z = z.astype(np.float64)
    lead, c = z.shape[:-1], z.shape[-1]
    z2 = np.ascontiguousarray(z.reshape(-1, c))
    y2 = np.zeros(z2.shape[0], dtype=np.int64) if y is None else \
        np.ascontiguousarray(np.broadcast_to(np.asarray(y, dtype=np.int64), lead).reshape(-1))
    if y2.size and (y2.min() < 0 or y2.max() >= c):
        raise IndexError(f"labels must lie in 0..{c - 1}")
    r = z2.shape[0]
    out = {"phi": np.empty(r if phi else 0), "signals": np.empty((r if signals else 0, 3)),
           "ood": np.empty((r if ood else 0, 2)), "features": np.empty((r if features else 0, c + 3), dtype=np.float32)}
    _row_stats(z2, y2, out["phi"], out["signals"], out["ood"], out["features"])
    shapes = {"phi": lead, "signals": lead + (3,), "ood": lead + (2,), "features": lead + (c + 3,)}
    asked = {"phi": phi, "signals": signals, "ood": ood, "features": features}
    return {k: v.reshape(shapes[k]) for k, v in out.items() if asked[k]}


def phi_rows(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``z_y - logsumexp_{j != y} z_j`` (float64) over the last axis of ``z``."""
    return row_stats(z, y, phi=True)["phi"]


def signal_rows(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``(loss, p_y, Mentr)`` (float64, shape ``z.shape[:-1] + (3,)``) over the last axis of ``z``."""
    return row_stats(z, y, signals=True)["signals"]


def ood_rows(z: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """``(MSP, Energy)`` OOD scores (float64, shape ``z.shape[:-1] + (2,)``): ``1 - max softmax``
    and ``-T logsumexp(z / T)``, both higher = more OOD."""
    if temperature == 1.0:
        return row_stats(z, ood=True)["ood"]
    msp = row_stats(z, ood=True)["ood"][..., 0]
    energy = temperature * row_stats(np.asarray(z, dtype=np.float64) / temperature, ood=True)["ood"][..., 1]
    return np.stack([msp, energy], axis=-1)


def shokri_rows(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Shokri's attack features (float32, shape ``z.shape[:-1] + (C + 3,)``): the softmax sorted
    decreasingly, ``p_y``, ``max(log p_y, -50)`` and whether the argmax is ``y``."""
    return row_stats(z, y, features=True)["features"]


# --- the attacks' signals and Song's Mentr bins (the one pass and the attacks share them) ---

def mentr_from_logits(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Song & Mittal's modified entropy ``-(1-F_y) log F_y - sum_{i != y} F_i log(1 - F_i)`` (float64).

    Stable for saturated logits: ``log(1 - F_i)`` is ``log1p(-F_i)`` where ``F_i <= 1/2`` and, for
    the (single) class above 1/2, ``logsumexp_{j != i} z_j - logsumexp z`` computed exactly
    (:func:`analysis.kernels.logit_kernels.signal_rows`).
    """
    return signal_rows(z, y)[..., 2]


def signals_from_logits(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Stack of :data:`analysis.attacks.SIGNALS` (..., 3) from logits (..., C) and labels (...), float64 holding
    float32-rounded values (one precision everywhere, as :func:`analysis.store_io.load.phi_from_logits`);
    one compiled loop per row (:func:`analysis.kernels.logit_kernels.signal_rows`)."""
    return signal_rows(z, y).astype(np.float32).astype(np.float64)


@numba.njit(cache=True, nogil=True)
def upper_bound(a, start, n, v):  # pragma: no cover - compiled
    """How many of the sorted ``a[start:start + n]`` are <= ``v`` (``searchsorted(side="right")``
    for a non-NaN ``v``), branch-free: the halving steps are selects, not jumps, so random queries
    cost no mispredictions (~3x faster than a branching binary search on 512 bins)."""
    if n == 0:
        return 0
    base = start
    while n > 1:
        half = n >> 1
        base = base + half if a[base + half] <= v else base
        n -= half
    return base - start + (1 if a[base] <= v else 0)


@numba.njit(cache=True, nogil=True)
def song_bin(edges, v):  # pragma: no cover - compiled
    """Bin of ``v`` on ``edges``: how many inner edges (``edges[1:-1]``) are <= v; NaN: the last."""
    inner = edges.size - 2
    if v != v:
        return inner
    return upper_bound(edges, 1, inner, v)

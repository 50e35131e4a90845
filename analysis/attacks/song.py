"""Song & Mittal (USENIX Security 2021): modified prediction entropy with class-dependent thresholds.

Signal: ``Mentr(F, y) = -(1 - F_y) log F_y - sum_{i != y} F_i log(1 - F_i)`` of the identity query
(low for a confident correct prediction, high for a confident wrong one); members have lower Mentr.
Per class c a threshold ``t_c`` is learned from the reference shadows' outputs on the train-split
samples of class c, labelled IN/OUT by ``keep``: the threshold maximising the balanced accuracy
``(TPR + TNR) / 2`` of "member iff Mentr < t_c". The continuous score is ``t_{y} - Mentr`` (higher =
member), so that thresholding it at 0 is Song & Mittal's decision and sweeping gives a ROC.

Leave-one-out without refitting per target: thresholds are searched on a fixed grid of bin edges
(quantiles of the first done shadow's train-split Mentr, at most 512 bins; no membership used).
Per class the IN and OUT histograms over *all* shadows are summed once; each target subtracts its
own histogram (O(N)) and the best edge is a cumulative sum (O(C B)). This equals the exact search
over the other shadows' values restricted to the grid. No partner is removed: a class-level
threshold pools thousands of values, and the target's removal takes about as many IN as OUT values
away, so the counts reveal nothing about a single sample.
"""

from __future__ import annotations

import numpy as np

from ._common import SIGNALS, AttackContext, AttackResult, song_histogram

__all__ = ["run_song", "song_thresholds", "best_threshold"]

_E = SIGNALS.index("mentr")


def best_threshold(h_in: np.ndarray, h_out: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Edges maximising balanced accuracy of "member iff value < edge".

    ``h_in``, ``h_out``: (..., B) histograms on ``edges`` (B + 1 values). Candidate k predicts bins
    ``< k`` as members (k = 0: none, k = B: all); ties go to the lowest k. Returns (...,) thresholds,
    NaN where a side is empty.
    """
    n_in = h_in.sum(-1, keepdims=True)
    n_out = h_out.sum(-1, keepdims=True)
    z = np.zeros(h_in.shape[:-1] + (1,))
    cin = np.concatenate([z, np.cumsum(h_in, -1)], -1)  # members predicted correctly at each k
    cout = np.concatenate([z, np.cumsum(h_out, -1)], -1)  # non-members predicted as members
    with np.errstate(invalid="ignore", divide="ignore"):
        bacc = 0.5 * (cin / n_in + (n_out - cout) / n_out)
    k = np.argmax(np.nan_to_num(bacc, nan=-1.0), axis=-1)
    thr = edges[k]
    return np.where((n_in[..., 0] > 0) & (n_out[..., 0] > 0), thr, np.nan)


def song_thresholds(ctx: AttackContext, sl: slice, mentr: np.ndarray | None = None) -> np.ndarray:
    """Per-class thresholds (B, C) for the targets ``sl``, learned from all other shadows.

    ``mentr``: the targets' Mentr on all samples (B, N) if already computed.
    """
    _, _, hist, edges = ctx.signal_sums()
    if mentr is None:
        mentr = ctx.target_signals(sl)[..., _E]
    c, b = ctx.n_classes, len(edges) - 1
    keep = ctx.keep[sl]
    own = song_histogram(mentr, keep, ctx.label, ctx.train, edges, c, per_row=True)  # each target's own
    h = (hist[None] - own).reshape(len(mentr), c, 2, b)
    return best_threshold(h[:, :, 1], h[:, :, 0], edges)


def run_song(ctx: AttackContext) -> AttackResult:
    """Scores (T, N_train) = ``t_{y_i} - Mentr_i`` for every target; a class without both IN and
    OUT references gets threshold 0 (the score is then ``-Mentr``), counted as neutral."""
    scores = ctx.empty_scores()
    y = ctx.label[ctx.train]

    def batch(sl: slice) -> int:
        mentr = ctx.target_signals(sl)[..., _E]
        thr = song_thresholds(ctx, sl, mentr)[:, y]  # (B, N_train)
        bad = np.isnan(thr)
        scores[sl] = np.where(bad, 0.0, thr) - mentr[:, ctx.train]
        return int(bad.sum())

    neutral = sum(ctx.map_batches(batch))
    return ctx.result("song", scores, neutral, signal="Mentr, identity query",
                      threshold="per class, max balanced accuracy on a quantile grid")

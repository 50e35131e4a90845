"""Sablayrolles et al. (ICML 2019): loss calibrated by a per-sample threshold from shadow models.

score = -(loss_target - tau_i) = tau_i - loss_target, identity query, with
``tau_i = (mean IN loss + mean OUT loss) / 2`` over the reference shadows (the midpoint of the two
class-conditional means: the Bayes threshold when IN and OUT losses have equal spread; the
``"out"`` variant, Watson et al.'s difficulty calibration, uses the OUT mean only).

Leave-one-out: the means come from running sums over all done shadows minus the target and one
partner on the other side (:meth:`analysis.kernels.stats.GaussianSums.without_pair`), so every sample has
``n_in - 1`` IN and ``n_out - 1`` OUT references whatever the target's membership. Where one side
has no reference the other side's mean is used; where neither has, the score is 0 (neutral) and
is counted.
"""

from __future__ import annotations

import numpy as np

from ._common import SIGNALS, AttackContext, AttackResult

__all__ = ["run_sablayrolles", "sablayrolles_thresholds"]

_L = SIGNALS.index("loss")


def sablayrolles_thresholds(ctx: AttackContext, sl: slice, tau: str = "midpoint",
                            x: np.ndarray | None = None) -> np.ndarray:
    """Per-(target, train sample) thresholds tau (B, N_train) for the targets ``sl``.

    ``x``: the targets' train-split signals (B, N_train, 3) if already read.
    """
    sums, partner, _, _ = ctx.signal_sums()
    x = ctx.target_signals(sl)[:, ctx.train] if x is None else x
    ch = [_L]  # the loss channel only
    loo = sums.take(ctx.train).channels(ch).without_pair(x[..., ch], ctx.keep[sl][:, ctx.train],
                                                         partner.take(ctx.train).channels(ch))
    mu_in, _, mu_out, _ = loo.unshifted_moments(ddof=1)
    mu_in, mu_out = mu_in[..., 0], mu_out[..., 0]
    if tau == "out":
        return mu_out
    if tau != "midpoint":
        raise ValueError(f"tau must be 'midpoint' or 'out', got {tau!r}")
    mid = 0.5 * (mu_in + mu_out)
    return np.where(np.isnan(mid), np.where(np.isnan(mu_in), mu_out, mu_in), mid)


def run_sablayrolles(ctx: AttackContext, tau: str = "midpoint") -> AttackResult:
    """Scores (T, N_train) = ``tau_i - loss`` for every target (higher = member)."""
    scores = ctx.empty_scores()

    def batch(sl: slice) -> int:
        x = ctx.target_signals(sl)[:, ctx.train]
        s = sablayrolles_thresholds(ctx, sl, tau, x) - x[..., _L]
        bad = ~np.isfinite(s)
        scores[sl] = np.where(bad, 0.0, s)
        return int(bad.sum())

    neutral = sum(ctx.map_batches(batch))
    return ctx.result("sablayrolles", scores, neutral, tau=tau, signal="loss, identity query")

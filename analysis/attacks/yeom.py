"""Yeom et al. (CSF 2018): the loss-threshold attack; no shadow models needed.

score = -loss of the target on the sample (identity query): members are fitted, so their loss is
lower. Thresholding this score at every value gives the ROC; one global threshold for all
samples, which is why per-sample calibrated attacks (Sablayrolles, LiRA) beat it.
"""

from __future__ import annotations

from ._common import SIGNALS, AttackContext, AttackResult

__all__ = ["run_yeom"]


def run_yeom(ctx: AttackContext) -> AttackResult:
    """Scores (T, N_train) = ``-loss`` of each target on each train sample."""
    scores = ctx.empty_scores()
    for sl in ctx.target_batches():
        scores[sl] = -ctx.target_signals(sl)[:, ctx.train, SIGNALS.index("loss")]
    return ctx.result("yeom", scores, signal="loss, identity query")

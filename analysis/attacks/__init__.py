"""Membership-inference attacks, one module and one entry point each, all with the same contract.

Every entry point takes an :class:`AttackContext` (the done shadows' logits, ``keep``, labels,
splits and T) and returns an :class:`AttackResult` (a :class:`analysis.attacks.lira.LiraResult`): scores of
shape (T, N_train) for the first T done shadows as targets, higher = more likely a member, each
target attacked with the other shadows only; ``member = keep[:T, train]``.

``ATTACKS`` maps a name to its entry point; :func:`run_attacks` runs several by name and merges
their scores into one result (what ``analysis.output.report.analyze`` tabulates).

========================  =====================================================================
``yeom``                  loss threshold (:mod:`.yeom`)
``shokri``                attack MLP on sorted softmax features, k-fold over shadows (:mod:`.shokri`)
``song``                  modified entropy, class thresholds (:mod:`.song`)
``sablayrolles``          per-sample calibrated loss (:mod:`.sablayrolles`)
``lira-online`` etc.      :mod:`analysis.attacks.lira`, balanced leave-pair-out
``rmia``                  offline RMIA against test-split population samples (:mod:`.rmia`)
========================  =====================================================================
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, MutableMapping

import numpy as np

from analysis.attacks.lira import ATTACKS as LIRA_ATTACKS
from analysis.attacks.lira import LiraResult, run_lira
from analysis.kernels.stats import gaussian_sums, partners
from analysis.store_io.load import phi_from_logits
from ._common import AttackContext, AttackResult
from .rmia import run_rmia
from .sablayrolles import run_sablayrolles
from .shokri import run_shokri
from .song import run_song
from .yeom import run_yeom

__all__ = ["ATTACKS", "AttackContext", "AttackResult", "run_attacks", "run_lira_variant"]


def _lira_all(ctx: AttackContext) -> LiraResult:
    """All three LiRA variants, computed once per context (cached on it)."""
    if ctx.lira is None:
        if ctx.phi_of is None or ctx.phi_sums is None or ctx.phi_partner is None:
            logits = ctx.logits
            phi = lambda sl: phi_from_logits(np.asarray(logits[sl].compute()), ctx.label[None, :, None])  # noqa: E731
            if ctx.phi_sums is None:
                x = phi(slice(None))  # small inputs only: the report passes its one-pass sums instead
                ctx.phi_sums, ctx.phi_partner = gaussian_sums(x, ctx.keep), partners(x, ctx.keep)
            ctx.phi_of = ctx.phi_of or phi
        ctx.lira = run_lira(ctx.phi_of, ctx.keep, ctx.phi_sums, ctx.phi_partner, ctx.train, ctx.n_targets,
                            shadow_ids=ctx.shadow_ids, sample_ids=ctx.sample_ids, threads=ctx.threads)
    return ctx.lira


def run_lira_variant(ctx: AttackContext, variant: str) -> AttackResult:
    """One LiRA variant (``lira-online``, ``lira-offline``, ``lira-fixed-variance``) as an AttackResult."""
    r = _lira_all(ctx)
    if variant not in r.scores:  # handed out before: compute the three again
        ctx.lira = None
        r = _lira_all(ctx)
    # handed over, not copied: the context does not keep a second reference to the (T, N) array
    return AttackResult(targets=r.targets, samples=r.samples, member=r.member,
                        scores={variant: r.scores.pop(variant)}, n_neutral={variant: r.n_neutral[variant]})


ATTACKS: dict[str, Callable[..., AttackResult]] = {
    "yeom": run_yeom,
    "shokri": run_shokri,
    "song": run_song,
    "sablayrolles": run_sablayrolles,
    **{v: (lambda ctx, _v=v, **kw: run_lira_variant(ctx, _v, **kw)) for v in LIRA_ATTACKS},
    "rmia": run_rmia,
}


def run_attacks(ctx: AttackContext, names: Iterable[str] | None = None,
                params: dict[str, dict[str, Any]] | None = None,
                progress: Callable[[str], None] | None = None,
                scores: MutableMapping[str, np.ndarray] | None = None) -> AttackResult:
    """Run attacks by name (default: all of :data:`ATTACKS`, in its order) and merge their scores.

    ``params`` maps an attack name to keyword arguments of its entry point; ``progress`` is called
    with each name when it finishes. The result's ``info`` maps each name to its attack's ``info``.
    ``scores`` is the mapping the merged scores go to (default a new dict; e.g. an
    :class:`analysis.store_io.spill.SpilledScores`, so that one attack's scores are in memory at a time).
    """
    names = list(ATTACKS) if names is None else list(names)
    unknown = [n for n in names if n not in ATTACKS]
    if unknown:
        raise ValueError(f"unknown attack(s) {unknown}; choose from {list(ATTACKS)}")
    params = params or {}
    out: AttackResult | None = None
    # LiRA's three variants first: they are computed together and cached on the context until
    # each is handed over, so running them first frees that cache before the other attacks run
    for n in sorted(names, key=lambda a: a not in LIRA_ATTACKS):
        r = ATTACKS[n](ctx, **params.get(n, {}))
        if out is None:
            out = AttackResult(targets=r.targets, samples=r.samples, member=r.member,
                               scores={} if scores is None else scores)
        for a in list(r.scores):
            out.scores[a] = r.scores.pop(a)
        out.n_neutral.update(r.n_neutral)
        out.info[n] = getattr(r, "info", {})
        if progress is not None:
            progress(n)
    assert out is not None, "no attacks requested"
    for n in names:  # back to the requested order (a table's row order)
        if hasattr(out.scores, "move_to_end"):
            out.scores.move_to_end(n)
        else:
            out.scores[n] = out.scores.pop(n)
        out.n_neutral[n] = out.n_neutral.pop(n)
        out.info[n] = out.info.pop(n)
    return out

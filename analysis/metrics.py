"""Attack metrics: ROC, AUROC and TPR at a fixed low FPR (Carlini et al.'s headline metric).

Scores of all targets are pooled: every (target shadow, challenge sample) pair is one trial. With
T targets of N train samples (about half members), the pooled ROC has T*N/2 negatives, so an FPR
of 0.1% is resolved by T*N/2000 false positives rather than the N/2000 of a single target. The
same metrics are also computed per target and summarised as mean and std (ddof=1) across targets.

Columns: "All" = every train-split sample, "Under" = the under-represented group (group == "under").
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
from sklearn.metrics import auc, roc_auc_score, roc_curve

__all__ = ["roc", "auroc", "tpr_at_fpr", "fpr_label", "metric_columns", "attack_metrics"]


def roc(member: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve ``(fpr, tpr, thresholds)`` of ``score`` for the truth ``member`` (sklearn)."""
    return roc_curve(np.asarray(member, dtype=bool).ravel(), np.asarray(score, dtype=np.float64).ravel())


def auroc(member: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve; NaN if ``member`` is all True or all False."""
    m = np.asarray(member, dtype=bool).ravel()
    if m.all() or not m.any():
        return float("nan")
    return float(roc_auc_score(m, np.asarray(score, dtype=np.float64).ravel()))


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, target: float) -> float:
    """Largest TPR among ROC points with FPR <= ``target`` (the best threshold at that FPR budget)."""
    ok = np.asarray(fpr) <= target
    return float(np.max(np.asarray(tpr)[ok])) if ok.any() else 0.0


def fpr_label(f: float) -> str:
    """``0.001`` -> ``"0.1%"`` for column names."""
    return f"{100 * f:g}%"


def metric_columns(fprs: list[float], groups: tuple[str, ...] = ("All", "Under")) -> list[str]:
    """Column names in table order: AUROC per group, then TPR at each FPR per group."""
    cols = [f"AUROC {g}" for g in groups]
    for f in fprs:
        cols += [f"TPR@{fpr_label(f)} {g}" for g in groups]
    return cols


def _one(member: np.ndarray, score: np.ndarray, fprs: list[float]) -> list[float]:
    """[AUROC, TPR@f for f in fprs] of one set of trials; NaN if it lacks either class."""
    m = np.asarray(member, dtype=bool).ravel()
    if m.size == 0 or m.all() or not m.any():
        return [float("nan")] * (1 + len(fprs))
    s = np.asarray(score, dtype=np.float64).ravel()
    f, t, _ = roc_curve(m, s)
    # auc(roc_curve) is exactly what roc_auc_score computes for binary labels; reusing the curve
    # halves the cost, which matters for thousands of per-target evaluations.
    return [float(auc(f, t))] + [tpr_at_fpr(f, t, x) for x in fprs]


def attack_metrics(member: np.ndarray, score: np.ndarray, masks: Mapping[str, np.ndarray],
                   fprs: list[float]) -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
    """Pooled and per-target metrics of one attack.

    Parameters
    ----------
    member, score : ndarray, shape (T, N)
        Truth and score of each (target, challenge sample) pair.
    masks : mapping column group -> bool ndarray (N,)
        Which samples each column group covers, e.g. {"All": ..., "Under": group == "under"}.
    fprs : list of float
        FPRs for TPR columns.

    Returns
    -------
    pooled, per_target_mean, per_target_std : dict column -> float
        Keyed by :func:`metric_columns` names.
    """
    member = np.asarray(member, dtype=bool)
    score = np.asarray(score, dtype=np.float64)
    names = ["AUROC"] + [f"TPR@{fpr_label(f)}" for f in fprs]
    pooled: dict[str, float] = {}
    mean: dict[str, float] = {}
    std: dict[str, float] = {}
    for g, mask in masks.items():
        mask = np.asarray(mask, dtype=bool)
        vals = _one(member[:, mask], score[:, mask], fprs)
        per = np.array([_one(member[t, mask], score[t, mask], fprs) for t in range(member.shape[0])])
        per = per.reshape(member.shape[0], len(names))
        with np.errstate(invalid="ignore"):
            n_ok = np.sum(~np.isnan(per), axis=0)
            mu = np.where(n_ok > 0, np.nansum(per, axis=0) / np.maximum(n_ok, 1), np.nan)
            dev = np.nansum((per - mu) ** 2, axis=0)
            sd = np.where(n_ok > 1, np.sqrt(dev / np.maximum(n_ok - 1, 1)), np.nan)
        for i, name in enumerate(names):
            col = f"{name} {g}"
            pooled[col], mean[col], std[col] = vals[i], float(mu[i]), float(sd[i])
    return pooled, mean, std

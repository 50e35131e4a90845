"""Attack metrics: ROC, AUROC and TPR at a fixed low FPR (Carlini et al.'s headline metric).

Scores of all targets are pooled: every (target shadow, challenge sample) pair is one trial. With
T targets of N train samples (about half members), the pooled ROC has T*N/2 negatives, so an FPR
of 0.1% is resolved by T*N/2000 false positives rather than the N/2000 of a single target. The
same metrics are also computed per target and summarised as mean and std (ddof=1) across targets.

Columns: "All" = every train-split sample, "Under" = the under-represented group (group == "under").
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Mapping

import numpy as np
from sklearn.metrics import auc, roc_auc_score, roc_curve

from analysis.kernels.keys import _keys32, _keys64, _order_keys, order32  # noqa: F401 (their old home)
from analysis.kernels.pages import drop_mapped_pages
from analysis.kernels.pooled import DEFAULT_BLOCK_BYTES, fits_whole, pooled_metrics
from analysis.kernels.roc_scan import roc_scan


__all__ = ["roc", "auroc", "tpr_at_fpr", "fpr_label", "metric_columns", "attack_metrics",
           "per_target_metrics"]


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


def per_target_metrics(member: np.ndarray, score: np.ndarray, fprs: list[float],
                       mask: np.ndarray | None = None, *, block_elems: int = 1 << 22) -> np.ndarray:
    """[AUROC, TPR@f for f in fprs] of every row (target) at once: an array (T, 1 + len(fprs)).

    Row ``t`` equals ``_one(member[t, mask], score[t, mask], fprs)`` (sklearn's ``roc_curve`` with
    ``drop_intermediate=True``, then ``auc`` and :func:`tpr_at_fpr`) without a Python loop: each
    block of rows is sorted once as integer keys (the score's order-preserving bits, the member
    flag in the lowest bit) and scanned once by :func:`analysis.kernels.roc_scan.roc_scan`, which walks
    the thresholds as sklearn builds them: exact trapezoid area in integers, sklearn's
    collinear-point dropping, TPR of the last kept point whose FPR is <= f. Rows without both
    classes are NaN. Two float64 scores 1 ulp apart may count as a tie (float32 scores keep all
    their bits).
    """
    member = np.asarray(member, dtype=bool)
    score = np.asarray(score)
    if score.dtype.kind != "f":
        score = score.astype(np.float64)
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.all():
            mask = None
    t_rows = member.shape[0]
    n = member.shape[1] if mask is None else int(mask.sum())
    out = np.full((t_rows, 1 + len(fprs)), np.nan)
    if n == 0 or t_rows == 0:
        return out
    step = max(1, int(block_elems) // n)
    for r0 in range(0, t_rows, step):
        s, mb = score[r0:r0 + step], member[r0:r0 + step]
        if mask is not None:  # one block of rows at a time: no (T, N) copy
            s, mb = s[:, mask], mb[:, mask]
        if not np.isfinite(s).all():
            raise ValueError("per_target_metrics: scores contain NaN or infinity")  # as sklearn's roc_curve
        out[r0:r0 + s.shape[0]] = _sorted_rows(s, mb, fprs)
    return out


def _sorted_rows(s: np.ndarray, mb: np.ndarray, fprs: list[float]) -> np.ndarray:
    """:func:`per_target_metrics` of one block of rows: one integer sort, then one compiled scan."""
    key = _order_keys(s, mb)  # the member flag in bit 0
    key.sort(axis=1)  # one SIMD sort of integer keys (~10x an argsort + gathers)
    res = np.empty((s.shape[0], 1 + len(fprs)))
    roc_scan(key, np.asarray(fprs, dtype=np.float64), res)
    return res


def attack_metrics(member: np.ndarray, score: np.ndarray, masks: Mapping[str, np.ndarray],
                   fprs: list[float], *, threads: int = 1, block_bytes: int | None = None
                   ) -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
    """Pooled and per-target metrics of one attack.

    Parameters
    ----------
    member, score : ndarray, shape (T, N)
        Truth and score of each (target, challenge sample) pair.
    masks : mapping column group -> bool ndarray (N,)
        Which samples each column group covers, e.g. {"All": ..., "Under": group == "under"}.
    fprs : list of float
        FPRs for TPR columns.
    threads : int
        Threads the pooled and per-target computations run on (no result depends on it).
    block_bytes : int, optional
        Byte budget of the computations together (default
        :data:`analysis.kernels.pooled.DEFAULT_BLOCK_BYTES`); each of the ``threads`` jobs that may
        run at once gets ``block_bytes // threads``. A column group whose pooled row fits that share
        sorts it whole as before; a larger one runs :func:`analysis.kernels.pooled.pooled_metrics`
        in about its share of memory (the same numbers, bit for bit). ``member`` and ``score`` may be
        memmaps: a read-only one (``mmap_mode="r"``) is read a block of rows at a time and the pages
        of each block are given back once it is done (:func:`analysis.kernels.pages.drop_mapped_pages`).

    Returns
    -------
    pooled, per_target_mean, per_target_std : dict column -> float
        Keyed by :func:`metric_columns` names.
    """
    member = np.asarray(member, dtype=bool)
    score = np.asarray(score)  # float32 scores are used as they are (no (T, N) float64 copy)
    if score.dtype.kind != "f":
        score = score.astype(np.float64)
    names = ["AUROC"] + [f"TPR@{fpr_label(f)}" for f in fprs]
    pooled: dict[str, float] = {}
    mean: dict[str, float] = {}
    std: dict[str, float] = {}
    masks = {g: np.asarray(m, dtype=bool) for g, m in masks.items()}

    # every job on the pool (a pooled row, a block of per-target rows) may run at once with the
    # others: each gets an equal share of the budget, so together they stay within it
    w = max(1, int(threads))
    share = max(1, int(DEFAULT_BLOCK_BYTES if block_bytes is None else block_bytes) // w)

    def pooled_of(mask: np.ndarray) -> np.ndarray:
        # all (target, sample) pairs as one row of the same exact, sort-based computation
        if not fits_whole(member.shape[0] * int(mask.sum()), share):  # bounded memory, same numbers
            return pooled_metrics(member, score, fprs, mask, block_bytes=share)
        if mask.all():  # a view, not a copy
            return per_target_metrics(member.reshape(1, -1), score.reshape(1, -1), fprs)[0]
        return per_target_metrics(member[:, mask].reshape(1, -1), score[:, mask].reshape(1, -1), fprs)[0]

    def per_target_of(a: int, b: int, mask: np.ndarray) -> np.ndarray:
        try:
            return per_target_metrics(member[a:b], score[a:b], fprs, mask)
        finally:  # a memmap's rows read so far would otherwise all stay resident
            drop_mapped_pages(score[a:b])
            drop_mapped_pages(member[a:b])

    # The pooled and the per-target computations of every column group are independent, and the
    # per-target rows split into blocks: all of them on the analysis' threads (sorts, the compiled
    # scan and most numpy steps release the GIL). Rows are independent: the split changes nothing.
    t_rows = member.shape[0]
    step = max(1, -(-t_rows // w))  # ceil: w blocks of rows at most
    # and rows enough to fit the share: a row's keys, sort and masked copies are ~48 bytes a pair
    # (1000 rows x 50,000 samples were 1.6 GB per thread at the paper's shape)
    step = min(step, max(1, share // (48 * max(1, member.shape[1]))))
    blocks = [(r0, min(r0 + step, t_rows)) for r0 in range(0, t_rows, step)]
    with ThreadPoolExecutor(max_workers=w) as ex:
        jobs = {g: (ex.submit(pooled_of, m),
                    [ex.submit(per_target_of, a, b, m) for a, b in blocks])
                for g, m in masks.items()}
        for g, (job_pooled, job_per) in jobs.items():
            vals = job_pooled.result()
            per = np.concatenate([j.result() for j in job_per]) if job_per else np.empty((0, len(names)))
            with np.errstate(invalid="ignore"):
                n_ok = np.sum(~np.isnan(per), axis=0)
                mu = np.where(n_ok > 0, np.nansum(per, axis=0) / np.maximum(n_ok, 1), np.nan)
                dev = np.nansum((per - mu) ** 2, axis=0)
                sd = np.where(n_ok > 1, np.sqrt(dev / np.maximum(n_ok - 1, 1)), np.nan)
            for i, name in enumerate(names):
                col = f"{name} {g}"
                pooled[col], mean[col], std[col] = vals[i], float(mu[i]), float(sd[i])
    return pooled, mean, std

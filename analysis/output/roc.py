"""ROC curves of every attack, as data (``roc/roc.csv``) and as a figure (``plots/roc.png|pdf``).

A curve is the pooled ROC the tables report: every (target, sample) pair of a column is one trial,
the curve is sklearn's ``roc_curve`` (:func:`analysis.kernels.metrics.roc`, ``drop_intermediate=True``) of
those pairs, so its trapezoid area is the tables' AUROC (:func:`analysis.kernels.metrics.attack_metrics`,
the challenge-set rows of :func:`analysis.output.tables.attack_table`) and its largest TPR at FPR <= f is
their TPR@f. Columns: ``All`` (every train sample), ``Under`` (the under-represented group) and
each challenge set of the run (``random``, ``subpopulation``, ``singletons``: :mod:`analysis.studies.groups`).

A pooled curve has up to T*N points. What is written (:func:`downsample`):

* every point with FPR <= ``dense_fpr`` (1e-2, or the largest table FPR if that is larger): the
  low-FPR end is kept whole, so the TPR at each table FPR is read from the file exactly;
* above it, each written chord runs from the last written point to the furthest later point (at
  most 1/``per_decade`` of a decade of FPR away, so the curve stays smooth on log axes) for which
  the running sum of every chord's area change (chord area minus the exact trapezoid area of the
  points it replaces) stays within ``area_tol``. A staircase's chord errors have both signs, so
  they cancel: the written curve's trapezoid area is the full curve's, the tables' AUROC, to
  ``area_tol`` (1e-9) in total, with ~16x fewer points (T*N = 76,800 pairs: ~36,000 points -> ~2,000).
  Collinear points (no area change) always go;
* the last point (1, 1).

``roc/roc.csv`` is tidy: ``attack, column, fpr, tpr, threshold`` (threshold: the score at or above
which a pair is called a member; ``inf`` for the (0, 0) point), full float64 precision.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numba
import numpy as np
import pandas as pd

from analysis.store_io.atomic import write_text
from analysis.store_io.figures import save_figure
from analysis.kernels.metrics import fpr_label, roc, tpr_at_fpr

__all__ = ["RocCurve", "downsample", "pooled_curve", "roc_curves", "curves_frame", "write_roc_csv",
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
def _greedy(fpr, tpr, start, area_tol, step_ratio, keep):  # pragma: no cover - compiled
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
        # a bounded look-ahead: linear time on curves of millions of points (a chord that ends
        # earlier only keeps more points; the area budget holds either way)
        while c < n and c - a <= _MAX_SCAN and fpr[c] <= fpr[a] * step_ratio:
            err = (fpr[c] - fpr[a]) * (tpr[c] + tpr[a]) * 0.5 - (cum[c] - cum[a])
            if abs(drift + err) <= area_tol:
                j, j_err = c, err  # the furthest end that keeps the total error within the budget
            c += 1
        drift += j_err
        keep[j] = True
        a = j
    keep[n - 1] = True


def downsample(fpr: np.ndarray, tpr: np.ndarray, *, dense_fpr: float = 1e-2, area_tol: float = 1e-9,
               per_decade: int = 200) -> np.ndarray:
    """Indices of the ROC points to keep (see the module docstring for the guarantee).

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

    Returns
    -------
    ndarray of int, ascending
    """
    fpr = np.ascontiguousarray(fpr, dtype=np.float64)
    tpr = np.ascontiguousarray(tpr, dtype=np.float64)
    keep = fpr <= dense_fpr
    keep[0] = True
    if fpr.size > 1:
        start = int(np.flatnonzero(keep)[-1])
        _greedy(fpr, tpr, start, float(area_tol), float(10 ** (1.0 / per_decade)), keep)
    return np.flatnonzero(keep)


def pooled_curve(member: np.ndarray, score: np.ndarray, mask: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The full pooled ROC ``(fpr, tpr, thresholds)`` of the pairs ``member[:, mask]``, ``score[:, mask]``."""
    member = np.asarray(member, dtype=bool)
    score = np.asarray(score)
    if mask is not None and not np.asarray(mask, dtype=bool).all():
        mask = np.asarray(mask, dtype=bool)
        member, score = member[:, mask], score[:, mask]
    return roc(member.reshape(-1), score.reshape(-1))


def roc_curves(pairs: Mapping[str, tuple[np.ndarray, np.ndarray]], masks: Mapping[str, np.ndarray],
               fprs: Sequence[float], *, dense_fpr: float = 1e-2, area_tol: float = 1e-9,
               per_decade: int = 200) -> list[RocCurve]:
    """Every attack's pooled, downsampled ROC on every column.

    Parameters
    ----------
    pairs : mapping attack -> (member, score)
        ``member`` (T, N) bool and ``score`` (T, N), e.g. ``LiraResult.member`` and
        ``LiraResult.scores[attack]``; read one attack at a time.
    masks : mapping column -> bool (N,)
        Which samples each column pools, e.g. ``{"All": ..., "Under": ..., "random": ...}``.
    fprs : sequence of float
        FPRs at which :attr:`RocCurve.tpr_at` is taken; ``dense_fpr`` is raised to the largest.
    dense_fpr, area_tol, per_decade
        :func:`downsample`'s settings.

    Returns
    -------
    list of RocCurve
        Attack-major, columns in ``masks`` order; a column without both classes has no curve.
    """
    dense = max([float(dense_fpr), *map(float, fprs)])
    curves = []
    for attack in pairs:
        member, score = pairs[attack]
        for column, mask in masks.items():
            m = np.asarray(member, dtype=bool)[:, np.asarray(mask, dtype=bool)]
            n_pos = int(m.sum())
            n_neg = int(m.size - n_pos)
            if n_pos == 0 or n_neg == 0:
                continue
            f, t, thr = pooled_curve(member, score, mask)
            keep = downsample(f, t, dense_fpr=dense, area_tol=area_tol, per_decade=per_decade)
            curves.append(RocCurve(attack=str(attack), column=str(column), fpr=f[keep], tpr=t[keep],
                                   threshold=thr[keep], auroc=float(np.trapezoid(t, f)),
                                   tpr_at={float(x): tpr_at_fpr(f, t, float(x)) for x in fprs},
                                   n_pos=n_pos, n_neg=n_neg, n_full=int(f.size)))
    return curves


def curves_frame(curves: Sequence[RocCurve]) -> pd.DataFrame:
    """The curves as one tidy DataFrame: ``attack, column, fpr, tpr, threshold``."""
    parts = [pd.DataFrame({"attack": c.attack, "column": c.column, "fpr": c.fpr, "tpr": c.tpr,
                           "threshold": c.threshold}) for c in curves]
    if not parts:
        return pd.DataFrame(columns=["attack", "column", "fpr", "tpr", "threshold"])
    return pd.concat(parts, ignore_index=True)


def write_roc_csv(curves: Sequence[RocCurve], path: str | Path) -> Path:
    """Write :func:`curves_frame` as CSV (full precision: float64 values round-trip exactly)."""
    return write_text(Path(path), curves_frame(curves).to_csv(index=False, float_format="%.17g"))


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
              fprs: Sequence[float]) -> list[RocCurve]:
    """Compute every curve, write ``OUT/roc/roc.csv`` and draw ``OUT/plots/roc.png|pdf``.

    Runs on an analysis' :class:`analysis.store_io.figures.FigureQueue` (it draws with matplotlib).
    """
    out = Path(out)
    curves = roc_curves(pairs, masks, fprs)
    write_roc_csv(curves, out / ROC_CSV)
    plot_roc(curves, out / "plots" / "roc.png", fprs=fprs)
    return curves

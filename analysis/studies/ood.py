"""OOD scores from the target models' logits and their rank correlation with vulnerability (§4).

Two detectors, both returned so that **higher = more out-of-distribution**:

``msp``
    Hendrycks & Gimpel's maximum softmax probability. The detector calls a sample OOD when its
    MSP is low; the score returned here is ``1 - max_c softmax(z)_c``, in ``[0, 1 - 1/C]``
    (a monotone decreasing map of MSP, so every rank statistic equals that of ``-MSP``).
``energy``
    Liu et al.'s energy ``E(x) = -T logsumexp(z / T)`` with T = 1. In-distribution samples get
    low energy (the detector thresholds ``-E``), so ``E`` itself is the OOD score.

Which model: a sample's score is the **mean over the target shadows** of the score of each
target's identity-query logits (query 0), IN and OUT targets alike, i.e. the expected score under
a model drawn like the targets. ``per_shadow_ood`` gives the unaveraged scores for other
reductions (e.g. OUT targets only, or one target). The mean is a lazy dask reduction on a store,
so nothing larger than a logits chunk is held in memory.

Correlations are Spearman's rank correlation with its two-sided p-value (``scipy.stats.spearmanr``)
over the samples where both values are finite; the paper reads |rho| < 0.4 weak, 0.4-0.59 moderate,
>= 0.6 strong, at p < 0.001.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd

from analysis.kernels.logit_kernels import ood_rows

__all__ = ["OOD_SCORES", "msp_score", "energy_score", "per_shadow_ood", "ood_scores", "ood_scores_from_store",
           "spearman", "ood_correlations", "plot_ood_vs_privacy", "plot_mem_vs_ood"]

OOD_SCORES = ("msp", "energy")
OOD_LABELS = {"msp": "OOD score, MSP (1 − max softmax)", "energy": "OOD score, Energy (−logsumexp z)"}
GROUP_COLORS = {"over": "tab:blue", "under": "tab:red"}


def msp_score(logits: np.ndarray) -> np.ndarray:
    """``1 - max softmax`` over the last axis (float64): higher = more OOD (Hendrycks & Gimpel)."""
    return ood_rows(logits)[..., 0]  # max softmax = exp(max z - logsumexp z): stable for finite logits


def energy_score(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Energy ``-T logsumexp(z / T)`` over the last axis (float64): higher = more OOD (Liu et al.)."""
    return ood_rows(logits, temperature)[..., 1]


_FUNCS: dict[str, Callable[[np.ndarray], np.ndarray]] = {"msp": msp_score, "energy": energy_score}


def per_shadow_ood(logits: np.ndarray, scores: tuple[str, ...] = OOD_SCORES) -> dict[str, np.ndarray]:
    """Each detector's score of each model on each sample: ``logits`` (..., C) -> dict of (...)."""
    return {s: _FUNCS[s](logits) for s in scores}


def ood_scores(logits: np.ndarray, scores: tuple[str, ...] = OOD_SCORES) -> dict[str, np.ndarray]:
    """Mean over target models of each OOD score.

    Parameters
    ----------
    logits : ndarray (T, N, C)
        Identity-query logits of the T target shadows (or (N, C) for one model).

    Returns
    -------
    dict name -> ndarray (N,)
    """
    z = np.asarray(logits, dtype=np.float64)
    per = per_shadow_ood(z, scores)
    return {k: v if v.ndim == 1 else v.mean(axis=0) for k, v in per.items()}


def ood_scores_from_store(data: Any, n_targets: int | None = None, *, query: int = 0, models: str = "all",
                          scores: tuple[str, ...] = OOD_SCORES) -> dict[str, np.ndarray]:
    """Mean OOD scores over the first ``n_targets`` done shadows (the LiRA targets), lazily.

    Parameters
    ----------
    data : analysis.store_io.load.ShadowData
    n_targets : int, optional
        Targets to average over; default all done shadows.
    query : int
        Query whose logits are scored; 0 is the identity.
    models : {"all", "out", "in"}
        Average over all targets (default), or only over those that did not train on the sample
        ("out": the detector's view of an unseen sample, free of the sample's own memorization) or
        that did ("in"). A sample without such a target gets NaN (e.g. test samples for "in").

    Returns
    -------
    dict name -> ndarray (N,) over every sample of the store (test split included)
    """
    if models not in ("all", "out", "in"):
        raise ValueError(f"models must be 'all', 'out' or 'in', got {models!r}")
    import dask
    import xarray as xr

    z = data.logits.isel(query=query)
    if n_targets is not None:
        z = z.isel(shadow=slice(0, n_targets))
    keep = data.keep if n_targets is None else data.keep.isel(shadow=slice(0, n_targets))

    def reduce(v: xr.DataArray) -> xr.DataArray:
        if models != "all":
            v = v.where(keep if models == "in" else ~keep)
        return v.mean("shadow", skipna=True)

    lazy = {s: reduce(xr.apply_ufunc(_FUNCS[s], z, input_core_dims=[["class"]], dask="parallelized",
                                     output_dtypes=[np.float64])) for s in scores}
    (out,) = dask.compute(lazy)
    return {k: np.asarray(v.values, dtype=np.float64) for k, v in out.items()}


def spearman(x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Spearman rho, two-sided p and n over the pairs where both are finite (NaN if n < 3 or constant)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    n = int(ok.sum())
    if n < 3 or np.ptp(x[ok]) == 0 or np.ptp(y[ok]) == 0:
        return {"rho": float("nan"), "p": float("nan"), "n": n}
    from scipy.stats import spearmanr

    r = spearmanr(x[ok], y[ok])
    return {"rho": float(r.statistic), "p": float(r.pvalue), "n": n}


def ood_correlations(ood: Mapping[str, np.ndarray], privacy: np.ndarray, mem: np.ndarray,
                     masks: Mapping[str, np.ndarray] | None = None) -> pd.DataFrame:
    """Spearman correlations of each OOD score with the privacy score and with memorization.

    Parameters
    ----------
    ood : mapping name -> (N,)
    privacy, mem : ndarray (N,)
    masks : mapping subset name -> bool (N,), optional
        Sample subsets to correlate over, e.g. ``{"train": train, "under": train & under}``;
        default all samples (non-finite values are dropped either way).

    Returns
    -------
    DataFrame indexed by (ood score, subset), columns ``rho privacy, p privacy, rho mem, p mem, n``
    (n: samples with a finite OOD score and privacy score).
    """
    privacy = np.asarray(privacy, dtype=np.float64)
    mem = np.asarray(mem, dtype=np.float64)
    masks = {"all": np.ones(privacy.size, dtype=bool)} if masks is None else masks
    rows, index = [], []
    for name, s in ood.items():
        for sub, m in masks.items():
            m = np.asarray(m, dtype=bool)
            rp = spearman(s[m], privacy[m])
            rm = spearman(s[m], mem[m])
            rows.append([rp["rho"], rp["p"], rm["rho"], rm["p"], rp["n"], rm["n"]])
            index.append((name, sub))
    df = pd.DataFrame(rows, index=pd.MultiIndex.from_tuples(index, names=["ood score", "samples"]),
                      columns=["rho privacy", "p privacy", "rho mem", "p mem", "n privacy", "n mem"])
    return df


# --- plots ------------------------------------------------------------------------------------

def _figure():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.6), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, stem: Path) -> list[Path]:
    """``stem.png`` and ``stem.pdf``, each written to a temporary name and renamed into place."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in ("png", "pdf"):
        path = stem.with_name(f"{stem.name}.{ext}")
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            fig.savefig(tmp, format=ext)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        paths.append(path)
    return paths


def _rho_text(r: Mapping[str, Any]) -> str:
    if not np.isfinite(r.get("rho", np.nan)):
        return f"Spearman ρ = N/A (n = {r.get('n', 0)})"
    return f"Spearman ρ = {r['rho']:.3f} (p = {r['p']:.1e}, n = {r['n']})"


def _scatter(ax, x, y, group, highlight, highlight_label):
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    group = np.asarray(group).astype(str)
    ok = np.isfinite(x) & np.isfinite(y)
    for g in ("over", "under"):
        sel = ok & (group == g)
        if sel.any():
            ax.scatter(x[sel], y[sel], s=6, alpha=0.5, color=GROUP_COLORS[g], label=f"{g}-represented (n={int(sel.sum())})",
                       rasterized=True)  # thousands of points: an image inside the PDF, fast to write and view
    if highlight is not None:
        sel = ok & np.asarray(highlight, dtype=bool)
        if sel.any():
            ax.scatter(x[sel], y[sel], s=22, facecolors="none", edgecolors="black", linewidths=0.7,
                       label=f"{highlight_label} (n={int(sel.sum())})")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize="small")


def plot_ood_vs_privacy(stem: str | Path, ood: np.ndarray, privacy: np.ndarray, group: np.ndarray, *,
                        name: str = "msp", highlight: np.ndarray | None = None,
                        highlight_label: str = "singletons") -> list[Path]:
    """Figure 1b (MSP) / Figure 5 (Energy): OOD score (x) vs privacy score (y), coloured by group.

    All arrays are over the same samples (pass train samples only). Writes ``stem.png`` and
    ``stem.pdf``; the title carries Spearman's rho and p. Returns the written paths.
    """
    fig = _figure()
    ax = fig.subplots()
    _scatter(ax, ood, privacy, group, highlight, highlight_label)
    ax.set_xlabel(OOD_LABELS.get(name, f"OOD score ({name})") + " → more OOD")
    ax.set_ylabel(r"privacy score $|\mu_{in}-\mu_{out}|/(\sigma_{in}+\sigma_{out})$")
    ax.set_title(f"OOD score ({name}) vs privacy score\n{_rho_text(spearman(ood, privacy))}")
    return _save(fig, Path(stem))


def plot_mem_vs_ood(stem: str | Path, ood: np.ndarray, mem: np.ndarray, group: np.ndarray, *, name: str = "msp",
                    highlight: np.ndarray | None = None, highlight_label: str = "singletons") -> list[Path]:
    """Figures 9 (MSP) / 10 (Energy): OOD score (x) vs memorization (y), coloured by group.

    ``highlight`` (e.g. the singleton or subpopulation mask) circles those samples. Writes
    ``stem.png`` and ``stem.pdf``; the title carries Spearman's rho and p. Returns the paths.
    """
    fig = _figure()
    ax = fig.subplots()
    _scatter(ax, ood, mem, group, highlight, highlight_label)
    ax.set_xlabel(OOD_LABELS.get(name, f"OOD score ({name})") + " → more OOD")
    ax.set_ylabel("memorization score (Feldman-Zhang)")
    ax.set_title(f"Memorization vs OOD score ({name})\n{_rho_text(spearman(ood, mem))}")
    return _save(fig, Path(stem))

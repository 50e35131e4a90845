"""Sample complexity: the shadows a challenge set needs, measured by the sweep, against Corollary 1.

Lemma 2 and Corollary 1 (paper §2.2, §5.3) predict that the number of observations (shadow models)
an optimal test needs grows as ``1 / H^2`` and, through Eq. 8, at most as ``1 / mem``, up to
constants. Measured: for each challenge set and attack, the smallest point of the sweep grid at
which the sweep's **mean** metric over repeats reaches the target (AUROC 0.9 by default; also a TPR
target). Reported both as ``m`` (references per side) and ``n_shadows = 2 m`` (the sweep plot's
x-axis). A set that never reaches the target gets NaN and ``reached = False`` (the need is then
larger than the largest grid point, ``> n_shadows_max``).

Predicted: ``1 / agg(mem)`` and ``1 / agg(H^2)`` over the set's samples, ``agg`` = **mean** by
default (``"median"`` available): the mean of mem is the expected advantage of the correctness
test on a random sample of the set, and it stays finite for sets whose median mem is 0 (e.g.
random samples, most of which are not memorized). mem is clipped to [0, 1] before aggregating
(negative estimates are noise; TV is |mem|). The predictions carry unknown constants, so the plot
compares *trends* across sets (log-log, with the line y = x for reference), not absolute values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

import pandas as pd

from analysis.store_io.figures import FigureQueue, figure_paths, save_figure
from analysis.attacks.lira import PER_SAMPLE_VARIANCE_MIN
from analysis.kernels.metrics import fpr_label
from analysis.studies.groups import highly_memorized, random_under
from analysis.studies.sweep import plot_sweep, summarize_sweep, sweep_from_store
from analysis.studies.theory import theory_per_sample, theory_summary

__all__ = ["shadows_needed", "sample_complexity", "plot_complexity", "theory_suite", "theory_tables", "theory_json"]


def shadows_needed(summary: pd.DataFrame, *, metric: str = "auroc", target: float = 0.9,
                   relative: float | None = None, baseline: float = 0.5) -> pd.DataFrame:
    """Smallest m per (set, attack) whose mean ``metric`` reaches ``target``.

    With ``relative`` (e.g. 0.95) the target is per (set, attack) instead:
    ``baseline + relative * (value at the largest m - baseline)``, i.e. the shadows needed to get
    that fraction of the advantage that all shadows give (for AUROC with baseline 0.5, the paper's
    "the same level of AUROC as 2000 shadow models", §7.2 Takeaway 2).

    Parameters
    ----------
    summary : DataFrame
        :func:`analysis.studies.sweep.summarize_sweep`'s output (columns set, attack, m, n_shadows,
        ``<metric> mean``).

    Returns
    -------
    DataFrame indexed by (set, attack): m_needed, n_shadows_needed (NaN if never reached), reached,
    n_shadows_max (largest grid point), best (the best mean reached).
    """
    col = f"{metric} mean"
    if col not in summary.columns:
        raise KeyError(f"summary has no column {col!r}; metrics: "
                       f"{[c[:-5] for c in summary.columns if c.endswith(' mean')]}")
    rows = {}
    for (s, a), d in summary.groupby(["set", "attack"], sort=False):
        d = d.sort_values("m")
        vals = d[col].to_numpy(dtype=np.float64)
        tgt = target if relative is None else baseline + relative * (vals[-1] - baseline)
        ok = vals >= tgt - 1e-12
        hit = d[ok]
        rows[(s, a)] = {
            "m_needed": float(hit["m"].iloc[0]) if len(hit) else np.nan,
            "n_shadows_needed": float(hit["n_shadows"].iloc[0]) if len(hit) else np.nan,
            "reached": bool(len(hit)),
            "n_shadows_max": int(d["n_shadows"].max()),
            "best": float(np.nanmax(d[col].to_numpy(dtype=np.float64))) if d[col].notna().any() else np.nan,
            "target": float(tgt),
        }
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.index = pd.MultiIndex.from_tuples(out.index, names=["set", "attack"])
    return out


def _agg(v: np.ndarray, how: str) -> float:
    v = np.asarray(v, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return np.nan
    if how == "mean":
        return float(v.mean())
    if how == "median":
        return float(np.median(v))
    raise ValueError(f"aggregate must be 'mean' or 'median', got {how!r}")


def sample_complexity(summary: pd.DataFrame, mem: np.ndarray, h2: Mapping[str, np.ndarray] | np.ndarray,
                      masks: Mapping[str, np.ndarray], *, auroc_target: float = 0.9,
                      tpr_metric: str | None = "tpr@1%", tpr_target: float = 0.5, aggregate: str = "mean",
                      relative: float | None = 0.95, attacks: Sequence[str] | None = None) -> pd.DataFrame:
    """Measured shadows needed vs predicted 1/mem and 1/H^2, per challenge set and attack.

    Parameters
    ----------
    summary : DataFrame
        :func:`analysis.studies.sweep.summarize_sweep`'s output.
    mem : ndarray (N,)
        Per-sample memorization, aligned with the masks.
    h2 : ndarray (N,) or mapping name -> ndarray (N,)
        Per-sample H^2 (e.g. ``{"gauss_uni": ..., "bernoulli": ...}``); each gives a
        ``pred 1/H2_<name>`` column (a bare array is named ``H2``).
    masks : mapping set name -> bool ndarray (N,)
        The challenge sets, named as in ``summary``.
    auroc_target : float
        Target mean AUROC.
    tpr_metric, tpr_target : str or None, float
        A second target on a TPR column of the summary (e.g. ``"tpr@1%"`` >= 0.5); None to skip.
    aggregate : "mean" or "median"
        How mem and H^2 are aggregated over a set.
    relative : float or None
        Also report the shadows needed for this fraction of the full-shadow AUROC advantage
        (columns ``... auroc>={relative:g}full``; see :func:`shadows_needed`); None to skip.

    Returns
    -------
    DataFrame indexed by (set, attack): n_samples, agg mem, agg H2_*, pred 1/mem, pred 1/H2_*,
    m_needed / n_shadows_needed / reached for the AUROC target, the same for the TPR target, and
    n_shadows_max.
    """
    h2 = {"H2": h2} if not isinstance(h2, Mapping) else {f"H2_{k}" if not k.startswith("H2") else k: v
                                                          for k, v in h2.items()}
    need = shadows_needed(summary, metric="auroc", target=auroc_target)
    need_r = None if relative is None else shadows_needed(summary, metric="auroc", relative=relative)
    need_t = None
    if tpr_metric is not None and f"{tpr_metric} mean" in summary.columns:
        need_t = shadows_needed(summary, metric=tpr_metric, target=tpr_target)
    rows = {}
    for (s, a) in need.index:
        if attacks is not None and a not in attacks:
            continue
        if s not in masks:
            continue
        mask = np.asarray(masks[s], dtype=bool)
        mv = _agg(np.clip(np.asarray(mem)[mask], 0.0, 1.0), aggregate)
        row = {"n_samples": int(mask.sum()), f"{aggregate} mem": mv}
        for k, v in h2.items():
            row[f"{aggregate} {k}"] = _agg(np.asarray(v)[mask], aggregate)
        with np.errstate(divide="ignore"):
            row["pred 1/mem"] = 1.0 / mv if mv > 0 else np.inf
            for k in h2:
                hv = row[f"{aggregate} {k}"]
                row[f"pred 1/{k}"] = 1.0 / hv if hv > 0 else np.inf
        r = need.loc[(s, a)]
        row.update({f"m_needed auroc>={auroc_target:g}": r["m_needed"],
                    f"n_shadows_needed auroc>={auroc_target:g}": r["n_shadows_needed"],
                    f"reached auroc>={auroc_target:g}": r["reached"]})
        if need_r is not None:
            rr = need_r.loc[(s, a)]
            lab = f"auroc>={relative:g}full"
            row.update({f"m_needed {lab}": rr["m_needed"], f"n_shadows_needed {lab}": rr["n_shadows_needed"],
                        f"reached {lab}": rr["reached"], f"target {lab}": rr["target"]})
        if need_t is not None:
            rt = need_t.loc[(s, a)]
            row.update({f"m_needed {tpr_metric}>={tpr_target:g}": rt["m_needed"],
                        f"n_shadows_needed {tpr_metric}>={tpr_target:g}": rt["n_shadows_needed"],
                        f"reached {tpr_metric}>={tpr_target:g}": rt["reached"]})
        row["n_shadows_max"] = r["n_shadows_max"]
        rows[(s, a)] = row
    out = pd.DataFrame.from_dict(rows, orient="index")
    if len(out):
        out.index = pd.MultiIndex.from_tuples(out.index, names=["set", "attack"])
    return out


def plot_complexity(table: pd.DataFrame, path: str | Path, *, attack: str = "lira-online",
                    measured: str | None = None) -> list[Path]:
    """Log-log plot: measured shadows needed (y) vs each prediction (x), one marker per set.

    Sets that never reached the target are drawn at ``n_shadows_max`` with an upward arrow marker
    (a lower bound). Writes ``path`` as ``.png`` and ``.pdf``; returns both paths.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    measured = measured or next(c for c in table.columns if c.startswith("n_shadows_needed"))
    reached_col = measured.replace("n_shadows_needed", "reached")
    preds = [c for c in table.columns if c.startswith("pred ")]
    d = table.xs(attack, level="attack") if attack in table.index.get_level_values("attack") else table.iloc[:0]
    fig = Figure(figsize=(8.6, 4.6), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    markers = ["o", "s", "D", "^", "v", "P"]
    lo, hi = np.inf, 0.0
    for j, pc in enumerate(preds):
        for i, (s, row) in enumerate(d.iterrows()):
            xv = row[pc]
            if not np.isfinite(xv) or xv <= 0:
                continue
            reached = bool(row.get(reached_col, True))
            yv = row[measured] if reached else row["n_shadows_max"]
            ax.scatter([xv], [yv], color=f"C{i % 10}", marker=markers[j % len(markers)] if reached else "^",
                       facecolors="none" if not reached else None, s=45,
                       label=f"{s}: {pc[5:]}" + ("" if reached else " (not reached)"))
            lo, hi = min(lo, xv, yv), max(hi, xv, yv)
    if hi > 0:
        ref = np.array([lo / 2, hi * 2])
        ax.plot(ref, ref, color="grey", ls="--", lw=0.8, label="y = x")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("predicted: 1 / mem or 1 / H² (set " + ("mean" if any("mean" in c for c in d.columns) else "median")
                  + ")")
    ax.set_ylabel(f"measured: {measured.replace('n_shadows_needed', 'reference shadows for')}")
    ax.set_title(f"Sample complexity ({attack}): shadows to reach {measured.replace('n_shadows_needed ', '')}")
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # one entry per (set, prediction): outside, not over the points
        ax.legend(fontsize="x-small", loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    return save_figure(fig, path)


def theory_suite(data, counts, *, train: np.ndarray, mem: np.ndarray, group: np.ndarray, threshold: float,
                 plots: str | Path, fprs: Sequence[float] = (0.001, 0.01), n_targets: int | None = None,
                 repeats: int = 10, seed: int = 0, max_per_set: int | None = 5000,
                 extra_masks: Mapping[str, np.ndarray] | None = None,
                 auroc_target: float = 0.9, tpr_target: float = 0.5, ridge: float = 1e-3, z: float = 2.0,
                 progress: bool = False, fits: Any = None, phi: np.ndarray | None = None,
                 figures: Any = None, threads: int = 1, memory_bytes: int | None = None) -> dict:
    """Everything of §5 in one call, for :func:`analysis.output.report.analyze`.

    Parameters
    ----------
    data : analysis.store_io.load.ShadowData
    counts : analysis.studies.memorization.MemCounts
        Correctness counts over all done shadows, all store samples.
    train : bool ndarray (N,)
        Train-split samples (the challenge points).
    mem : ndarray (N,)
        Memorization per store sample.
    group : str ndarray (N,)
        "over" / "under".
    threshold : float
        "highly memorized" = train & mem > threshold (the spec's singleton threshold); the sets'
        names are those of :data:`analysis.studies.groups.SAMPLE_SETS` ("All": the train split, "random":
        its under-represented samples).
    plots : path
        Folder for the figures (PNG + PDF): sweep_auroc, sweep_tpr_<fpr>, complexity.
    extra_masks : mapping name -> bool ndarray (N,), optional
        More challenge sets (e.g. a subpopulation), restricted to the train split here.
    n_targets, repeats, seed
        Sweep targets (default: the first min(M, 64) done shadows; pooled metrics over 64 targets
        x the set's samples are resolved well enough), repeats and seed.
    max_per_set : int or None
        Cap on each challenge set's samples in the sweep (seeded subsample; default 5000), which
        bounds its memory on large stores; None: all. The theory columns use every train sample.
    fits, phi : optional
        The one pass's Gaussian fits and every shadow's phi (:class:`analysis.store_io.passes.PassResult`),
        so that nothing is read from the store again.
    figures : analysis.store_io.figures.FigureQueue, optional
        Draw the figures on this queue (they are written when it is waited on); default now.
    threads : int
        Threads the sweep's repeats run on (no result depends on it).
    memory_bytes : int, optional
        The sweep's share of the memory budget (:func:`analysis.studies.sweep.sweep_from_store`).

    Returns
    -------
    dict: ``theory`` (per-sample DataFrame, train samples), ``theory_summary``, ``sweep`` (tidy),
    ``sweep_summary``, ``complexity``, ``figures`` (list of paths), ``masks`` (over all samples),
    ``sweep_s`` (seconds for the sweep, reading phi included).
    """
    plots = Path(plots)
    train = np.asarray(train, dtype=bool)
    # names from the one registry (analysis.studies.groups.SAMPLE_SETS), as in every other table and figure
    masks = {"highly memorized": highly_memorized(mem, threshold, train=train), "All": train.copy(),
             "random": random_under(group, train=train)}
    for k, v in (extra_masks or {}).items():
        masks[k] = train & np.asarray(v, dtype=bool)
    masks = {k: v for k, v in masks.items() if v.any()}
    th = theory_per_sample(data.phi(), data.keep.values, counts, sample_ids=data.ds["sample"].values,
                           samples=train, ridge=ridge, z=z, fits=fits)
    masks_tr = {k: v[train] for k, v in masks.items()}
    th_sum = theory_summary(th, masks_tr, z=z)
    keep = np.asarray(data.keep.values, dtype=bool)
    n_in = keep.sum(axis=0)[train]  # counts, not a (M, N_train) copy of the keep mask (0.1 GB at 2000 x 50,000)
    k_max = int(min(n_in.min(), (keep.shape[0] - n_in).min())) - 1 if train.any() else 0
    if k_max < 1:  # fewer than 2 IN or 2 OUT shadows for some sample: no sweep possible
        return {"theory": th, "theory_summary": th_sum, "sweep": pd.DataFrame(), "sweep_summary": pd.DataFrame(),
                "complexity": pd.DataFrame(), "figures": [], "masks": masks, "sweep_s": 0.0,
                "skipped": f"sweep needs >= 2 IN and >= 2 OUT shadows per train sample (K = {k_max})"}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=repeats, desc="shadow-count sweep", unit="repeat")
    try:
        t_n = min(data.n_shadows, 64) if n_targets is None or n_targets == 0 else n_targets
        sw, secs = sweep_from_store(data, masks, phi=phi, n_targets=t_n, repeats=repeats, seed=seed, fprs=tuple(fprs),
                                    max_per_set=max_per_set, subsample_seed=seed, threads=threads,
                                    memory_bytes=memory_bytes,
                                    progress=bar.update if bar is not None else None)
    finally:
        if bar is not None:
            bar.close()
    summ = summarize_sweep(sw)
    tpr_metric = f"tpr@{fpr_label(max(fprs))}" if len(fprs) else None
    comp = sample_complexity(summ, mem[train], {"gauss_uni": th["H2_gauss_uni"].to_numpy(),
                                                 "bernoulli": th["H2_bernoulli"].to_numpy()},
                             masks_tr, auroc_target=auroc_target, tpr_metric=tpr_metric, tpr_target=tpr_target)
    queue = figures if figures is not None else FigureQueue(background=False)
    plans = [(plot_sweep, (summ, plots / "sweep_auroc"), {"title": "LiRA AUROC vs number of reference shadows"})]
    for f in fprs:
        lab = fpr_label(f)
        plans.append((plot_sweep, (summ, plots / f"sweep_tpr_{lab.replace('%', 'pct').replace('.', 'p')}"),
                      {"metric": f"tpr@{lab}", "title": f"LiRA TPR at {lab} FPR vs number of reference shadows"}))
    plans += [(plot_complexity, (comp, plots / "complexity"), {}),
              (plot_complexity, (comp, plots / "complexity_relative"),
               {"measured": "n_shadows_needed auroc>=0.95full"})]
    figs = []
    for fn, args, kw in plans:
        queue.submit(fn, *args, **kw)
        figs += figure_paths(args[1])
    return {"theory": th, "theory_summary": th_sum, "sweep": sw, "sweep_summary": summ, "complexity": comp,
            "figures": figs, "masks": masks, "sweep_s": secs, "skipped": None,
            "settings": {"ridge": ridge, "z": z, "repeats": repeats, "seed": seed, "n_targets": t_n,
                         "max_per_set": max_per_set, "auroc_target": auroc_target, "tpr_metric": tpr_metric,
                         "tpr_target": tpr_target, "relative": 0.95, "aggregate": "mean"}}


def _flat(df: pd.DataFrame) -> pd.DataFrame:
    """A (set, attack[, m]) MultiIndex or plain columns as one string index ``set / attack / m``."""
    if df.empty:
        return df
    d = df.copy()
    if isinstance(d.index, pd.MultiIndex):
        d.index = [" / ".join(str(x) for x in i) for i in d.index]
    d.index.name = "set / attack" + (" / m" if "m" in (df.index.names or []) else "")
    return d


def theory_tables(result: dict) -> dict[str, tuple[pd.DataFrame, str]]:
    """Tables of :func:`theory_suite`'s result for ``tables/<name>.csv|md``: name -> (DataFrame, caption).

    ``theory`` (per challenge set: mem, H^2 means/medians, Eq. 8 violations), ``sweep`` (mean and
    2.5/97.5% band per set, attack and m) and ``complexity`` (shadows needed vs 1/mem, 1/H^2);
    the last two are absent when the sweep was skipped.
    """
    st = result.get("settings", {})
    z = st.get("z", 2.0)
    out = {"theory": (result["theory_summary"],
                      "Per challenge set (train samples): Feldman-Zhang mem and squared Hellinger distances between the "
                      "IN and OUT distributions of each sample (Gaussian fits of phi: query 0, and over all queries "
                      f"with a relative ridge {st.get('ridge', 1e-3):g}; Bernoulli correctness). Eq. 8 check: a "
                      f"violation is H2_bernoulli - mem > {z:g} standard errors (add-1/2 smoothed); 'expected by "
                      "chance' is the count a per-sample one-sided test would flag if every mem were exactly 0. "
                      "H2_gauss_uni > mem is a diagnostic: Eq. 8 bounds the Bernoulli H2 only.")}
    if not result["sweep_summary"].empty:
        summ = result["sweep_summary"].set_index(["set", "attack", "m"])
        out["sweep"] = (_flat(summ),
                        f"Shadow-count sweep: LiRA with m IN + m OUT reference shadows per (target, sample) "
                        f"(n_shadows = 2m), {st.get('n_targets')} targets pooled, {st.get('repeats')} random reference "
                        "orders; mean and 2.5-97.5 percentile band over orders (the band reflects the choice of "
                        "references only, not sampling of targets or samples). 'variance': whether LiRA used each "
                        "sample's own variance or the pooled ('fixed') one, which online and offline LiRA use below "
                        f"{PER_SAMPLE_VARIANCE_MIN} references per side; the sweep scores LiRA as lira_variant 'ours' "
                        "whatever the analysis' variant.")
        out["complexity"] = (_flat(result["complexity"]),
                             f"Sample complexity: smallest grid point whose mean AUROC reaches "
                             f"{st.get('auroc_target', 0.9):g}, or 95% of the full-shadow advantage over 0.5 "
                             f"('0.95full'), or {st.get('tpr_metric')} >= {st.get('tpr_target')}, against the "
                             "predictions 1/mem and 1/H2 (set means; Corollary 1, up to constants). NaN: not "
                             "reached within the grid.")
    return out


def theory_json(result: dict) -> dict:
    """A JSON-ready digest of :func:`theory_suite`'s result for ``analysis.json`` (NaN left to the caller)."""
    ts = result["theory_summary"]
    d = {"settings": result.get("settings", {}), "skipped": result.get("skipped"),
         "sweep_s": round(float(result.get("sweep_s", 0.0)), 3),
         "per_set": ts.to_dict(orient="index"),
         "figures": [str(p) for p in result.get("figures", [])]}
    comp = result.get("complexity")
    if comp is not None and not comp.empty:
        d["complexity"] = {" / ".join(k): v for k, v in comp.to_dict(orient="index").items()}
    return d

"""Shadow budget planning from a small pilot store (``mia-hpc plan SPEC --pilot STORE``).

Question: how many shadow models does each challenge group need before an attack's metric (AUROC,
or TPR at a fixed FPR) reaches a target? The paper's Corollary 1 (§5.3) says the sample complexity
of the optimal test grows like ``1 / H^2`` of the sample's IN/OUT distributions and, through
Eq. 8 (``H^2 <= mem``), at most like ``1 / mem``, up to constants. A pilot with a few shadows
estimates mem and H^2 well enough to rank groups, and its own shadow-count sweep calibrates the
constant. Three predictions are made per group:

``cor1-mem`` / ``cor1-h2``
    ``m = kappa / agg(mem)`` (resp. ``agg(H^2)``), references per side. ``kappa`` is calibrated on
    the pilot's own sweep: over the *calibration sets* (the groups and bins of train samples by
    pilot memorization: [-1, 0.1), [0.1, 0.3), ..., [0.9, 1]) that reach the target within the
    pilot's grid, the median of ``m_reached * agg`` (sets that reach it only at the grid's first
    point give just an upper bound and are used only when no set reaches it later). ``agg`` = mean over the set, mem clipped to
    [0, 1] (as :mod:`analysis.studies.complexity`).
``fit``
    The group's own pilot curve extrapolated with the 1/m law the adaptive rule rests on:
    least squares of ``v(m) = A - B / m`` over the pilot sweep's points with m >= 2 (at m = 1 LiRA
    falls back to the pooled variance, another estimator), then ``m = B / (A - target)``. ``A`` is
    the group's estimated ceiling (capped at 1): an AUROC target above it is reported as
    unreachable by any number of shadows, whatever Corollary 1's scaling says (it speaks about the
    optimal test; a group of mostly unmemorized samples never reaches AUROC 0.9). For TPR targets
    the fit only predicts when its ceiling is above the target (TPR at a low FPR starts near 0 and
    rises faster than 1/m over a small pilot's first points) and is left unknown otherwise.

A group the pilot already brings to the target gets the pilot's own count (``pilot``); one it does
not gets at least K + 1 references per side (K = the pilot's largest). Intervals: percentile
bootstrap over the pilot's shadows (mem recomputed from the drawn shadows) and samples (drawn
within every set), kappa recomputed per replicate with the measured reach points held fixed; H^2
over samples only (a shadow drawn twice shrinks the fitted variances and inflates H^2); for
``fit``, over the sweep's random reference orders. The shadows to *train* for m
references per side are ``2 (m + 1)`` (each target keeps m IN and m OUT references after the
balanced leave-pair-out).

:func:`compare_with_sweep` checks predictions against a full run's shadow-count sweep on the same
sample sets (``scripts/plan_validation.py``). Torch-free.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis.kernels.metrics import fpr_label
from analysis.store_io.load import open_shadows
from analysis.kernels.threads import n_threads
from analysis.studies.complexity import shadows_needed
from analysis.studies.groups import random_under, singletons, store_features, subpopulation
from analysis.studies.sweep import SWEEP_ATTACKS, default_m_grid, shadow_sweep, summarize_sweep, sweep_from_store
from analysis.studies.theory import hellinger2_gauss_uni

__all__ = ["PlanResult", "plan_from_pilot", "compare_with_sweep", "full_sweep_summary", "MEM_BINS", "metric_column",
           "per_sample_h2"]

MEM_BINS = (-1.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0001)
GROUP_SETS = ("singletons", "random", "subpopulation", "over")


class PlanError(ValueError):
    """The pilot cannot answer the question as asked; ``str(err)`` names the input and the fix."""


def metric_column(metric: str) -> tuple[str, float | None]:
    """(sweep column, fpr) for ``"auroc"`` or ``"tpr@<x>%"``."""
    m = metric.strip().lower()
    if m == "auroc":
        return "auroc", None
    if m.startswith("tpr@") and m.endswith("%"):
        try:
            f = float(m[4:-1]) / 100
        except ValueError:
            f = float("nan")
        if 0 < f < 1:
            return f"tpr@{fpr_label(f)}", f
    raise PlanError(f"--metric: must be 'auroc' or 'tpr@<x>%' (e.g. 'tpr@1%'), got {metric!r}")


def _weighted_moments(x: np.ndarray, k: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per replicate and sample: IN/OUT counts, means and variances (ddof=1, frequency weights).

    x: (M, N) signal, k: (M, N) bool membership, w: (B, M) shadow weights -> each (B, N).
    """
    kf = k.astype(np.float64)
    x = x - x.mean(axis=0)  # centred per sample: sums of squares without cancellation
    out = []
    for side in (kf, 1.0 - kf):
        n = w @ side
        s1 = w @ (side * x)
        s2 = w @ (side * x * x)
        with np.errstate(invalid="ignore", divide="ignore"):
            mu = s1 / n
            var = np.maximum(s2 - s1 * mu, 0.0) / (n - 1)
        out += [n, mu, np.where(n > 1, var, np.nan)]
    return tuple(out)


def per_sample_h2(phi0: np.ndarray, keep: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
    """Squared Hellinger distance between Gaussians fitted to the IN and the OUT values of phi.

    ``phi0`` (M, N) (the identity query), ``keep`` (M, N); ``w`` (B, M) shadow weights (default
    one replicate of ones). Variances are floored at ``(max(1e-4, 1e-3 * typical std))^2`` as in
    :mod:`analysis.studies.theory`. Returns (B, N) (NaN where a side has fewer than 2 shadows).
    """
    w = np.ones((1, phi0.shape[0])) if w is None else w
    _, mu_in, v_in, _, mu_out, v_out = _weighted_moments(phi0, keep, w)
    typical = np.sqrt(np.nanmedian(np.concatenate([v_in.ravel(), v_out.ravel()]))) if np.isfinite(v_in).any() else 1.0
    floor = max(1e-4, 1e-3 * float(typical)) ** 2
    return hellinger2_gauss_uni(mu_in, np.maximum(v_in, floor), mu_out, np.maximum(v_out, floor))


def _mem(correct: np.ndarray, keep: np.ndarray, w: np.ndarray) -> np.ndarray:
    kf = keep.astype(np.float64)
    c = correct.astype(np.float64)
    n_in, n_out = w @ kf, w @ (1 - kf)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((n_in > 0) & (n_out > 0), (w @ (c * kf)) / n_in - (w @ (c * (1 - kf))) / n_out, np.nan)


def _fit_inverse(ms: np.ndarray, vals: np.ndarray) -> tuple[float, float]:
    """Least squares of ``v = A - B / m`` over points with m >= 2; (A, B), NaN with < 2 points."""
    ok = (ms >= 2) & np.isfinite(vals)
    if ok.sum() < 2:
        return float("nan"), float("nan")
    x = 1.0 / ms[ok]
    slope, intercept = np.polyfit(x, vals[ok], 1)
    # AUROC and TPR never exceed 1: a steeper fit would promise targets above what any count reaches
    return min(float(intercept), 1.0), float(-slope)


def _m_from_fit(a: float, b: float, target: float) -> float:
    if not (np.isfinite(a) and np.isfinite(b)):
        return float("nan")
    if a <= target:
        return float("inf")  # the ceiling is below the target: unreachable
    if b <= 0:
        return 1.0  # no improvement with m left to gain: already there at the smallest m
    return b / (a - target)


@dataclass
class PlanResult:
    """Predictions per group (``table``) and what they were made from."""

    table: pd.DataFrame  # index: set; see plan_from_pilot
    curve: pd.DataFrame  # the pilot's summarized sweep (set, m, metric mean/lo/hi)
    masks: dict[str, np.ndarray]  # over all store samples
    settings: dict[str, Any] = field(default_factory=dict)

    def groups(self) -> pd.DataFrame:
        """The rows of the challenge groups (not the calibration bins)."""
        return self.table[self.table["kind"] == "group"]


def _shadows_to_train(m: float) -> float:
    """Shadows a store needs so that every target keeps m IN and m OUT references: 2 (ceil(m) + 1)."""
    if math.isinf(m):
        return float("inf")
    return float("nan") if math.isnan(m) else 2.0 * (math.ceil(m) + 1)


def plan_from_pilot(store: str | Path, *, metric: str = "auroc", target: float = 0.9, attack: str = "lira-online",
                    shadow_limit: int | None = None, n_boot: int = 200, repeats: int = 10, seed: int = 0,
                    threshold: float | None = None, level: float = 0.95, min_set: int = 5,
                    threads: int | None = None) -> PlanResult:
    """Predict the references per side each group needs for ``metric >= target`` (module docstring).

    Parameters
    ----------
    store : path
        The pilot store (its done shadows; at least 6 so that the sweep has 2 references per side).
    metric, target : str, float
        ``"auroc"`` or ``"tpr@<x>%"``, and the value to reach.
    attack : str
        ``lira-online``, ``lira-offline`` or ``lira-fixed-variance`` (the sweep's attacks).
    shadow_limit : int, optional
        Use only the pilot's first shadows (e.g. a prefix of a bigger run).
    n_boot, repeats, seed, level
        Bootstrap replicates, sweep reference orders, seed and interval coverage.
    threshold : float, optional
        Singleton threshold (default: the store spec's).
    min_set : int
        Sets with fewer samples are left out.
    threads : int, optional
        Threads of the sweep; default :func:`analysis.kernels.threads.n_threads` (read once here).

    Returns
    -------
    PlanResult whose ``table`` has, per set (groups then bins): kind, n_samples, mean mem (+ lo/hi),
    mean H2 (+ lo/hi), pilot best and m reached, ceiling A, and for each predictor ``m <pred>``,
    ``m <pred> lo/hi`` (references per side) and ``shadows <pred>`` (to train), plus ``m pilot``.
    """
    col, fpr = metric_column(metric)
    if attack not in ("lira-online", "lira-offline", "lira-fixed-variance"):
        raise PlanError(f"--attack: the sweep runs LiRA only (lira-online, lira-offline, lira-fixed-variance), "
                        f"got {attack!r}")
    if not 0 < target < 1:
        raise PlanError(f"--target: must lie strictly between 0 and 1, got {target}")
    if col == "auroc" and target <= 0.5:
        raise PlanError(f"--target: an AUROC target must exceed 0.5 (chance), got {target}")
    data = open_shadows(store, shadow_limit=shadow_limit)
    w_n = data.n_shadows
    train = data.split == "train"
    keep = np.asarray(data.keep.values, dtype=bool)
    k_tr = keep[:, train]
    k_max = int(min(k_tr.sum(0).min(), (~k_tr).sum(0).min())) - 1 if train.any() else 0
    if k_max < 2:
        raise PlanError(f"{store}: the pilot's {w_n} shadows leave {k_max} reference(s) per side; it needs >= 2 "
                        "(at least 6 shadows with balanced keep masks)")
    spec_an = data.spec.get("analysis", {})
    thr = float(spec_an.get("singleton_threshold", 0.8)) if threshold is None else float(threshold)
    group = data.group
    idx = np.flatnonzero(train)
    phi = np.asarray(data.phi().isel(sample=idx).values, dtype=np.float64)  # (W, Ntr, Q)
    correct = np.asarray(data.correct().isel(sample=idx).values, dtype=bool)
    kp = keep[:, idx]
    ones = np.ones((1, w_n))
    mem = _mem(correct, kp, ones)[0]
    h2 = per_sample_h2(phi[:, :, 0], kp)[0]

    full_mem = np.full(train.size, np.nan)
    full_mem[idx] = mem
    masks: dict[str, np.ndarray] = {
        "singletons": singletons(full_mem, group, thr, train=train),
        "random": random_under(group, train=train),
        "over": train & (np.asarray(group) == "over"),
    }
    feats = store_features(data.ds)
    if feats is not None:
        masks["subpopulation"] = subpopulation(feats, group, train=train, seed=0)
    kinds = {k: "group" for k in masks}
    for a, b in zip(MEM_BINS[:-1], MEM_BINS[1:]):
        name = f"mem[{a:g},{min(b, 1):g}{']' if b > 1 else ')'}"
        masks[name] = train & (full_mem >= a) & (full_mem < b)
        kinds[name] = "bin"
    masks = {k: v for k, v in masks.items() if v.sum() >= min_set}
    if not masks:
        raise PlanError(f"{store}: no group has {min_set} or more train samples")
    sub = {k: v[idx] for k, v in masks.items()}

    grid = default_m_grid(k_max)
    sw = shadow_sweep(phi, kp, sub, n_targets=w_n, m_grid=grid, repeats=repeats, seed=seed,
                      fprs=(fpr,) if fpr else (0.001,), attacks=(attack,) if attack in SWEEP_ATTACKS else (attack,),
                      threads=n_threads() if threads is None else threads)
    summ = summarize_sweep(sw)
    summ = summ[summ["attack"] == attack]

    # per set: pilot reach, aggregates, 1/m fit (point and per reference order)
    rows: dict[str, dict[str, Any]] = {}
    reached: dict[str, float] = {}
    for s in masks:
        d = summ[summ["set"] == s].sort_values("m")
        ms = d["m"].to_numpy(dtype=np.float64)
        vals = d[f"{col} mean"].to_numpy(dtype=np.float64)
        hit = ms[vals >= target - 1e-12]
        if hit.size:
            reached[s] = float(hit[0])
        a, b = _fit_inverse(ms, vals)
        reps = sw[(sw["set"] == s) & (sw["attack"] == attack)]
        per_order = []
        for _, r in reps.groupby("repeat"):
            r = r.sort_values("m")
            ra, rb = _fit_inverse(r["m"].to_numpy(dtype=np.float64), r[col].to_numpy(dtype=np.float64))
            per_order.append(_m_from_fit(ra, rb, target))
        sel = sub[s]
        rows[s] = {"kind": kinds[s], "n_samples": int(sel.sum()),
                   "mean mem": float(np.nanmean(np.clip(mem[sel], 0, 1))), "mean H2": float(np.nanmean(h2[sel])),
                   "pilot best": float(np.nanmax(vals)) if np.isfinite(vals).any() else np.nan,
                   "m reached in pilot": reached.get(s, np.nan), "ceiling A": a, "rate B": b,
                   "m fit": _m_from_fit(a, b, target), "_fit_orders": np.asarray(per_order)}

    # bootstrap: shadows and samples -> aggregates per set per replicate
    rng = np.random.default_rng(seed)
    w = rng.multinomial(w_n, np.full(w_n, 1.0 / w_n), size=n_boot).astype(np.float64)
    mem_b = _mem(correct, kp, w)
    # H^2 is resampled over samples only: a shadow drawn twice shrinks the fitted variances, which
    # inflates H^2 (measured: the replicates' median sat at twice the point value with 4 shadows a side)
    h2_b = np.broadcast_to(h2, (n_boot, h2.size))
    agg_b: dict[str, dict[str, np.ndarray]] = {"mem": {}, "h2": {}}
    for s, sel in sub.items():
        ids = np.flatnonzero(sel)
        draw = rng.integers(0, ids.size, size=(n_boot, ids.size))
        pick = ids[draw]
        agg_b["mem"][s] = np.nanmean(np.clip(np.take_along_axis(mem_b, pick, axis=1), 0, 1), axis=1)
        agg_b["h2"][s] = np.nanmean(np.take_along_axis(h2_b, pick, axis=1), axis=1)
    q = 100 * (1 - level) / 2

    def pct(v: np.ndarray) -> tuple[float, float]:
        # order statistics, no interpolation: the replicates may hold inf ("not reachable")
        v = v[~np.isnan(v)]
        if not v.size:
            return np.nan, np.nan
        return float(np.percentile(v, q, method="lower")), float(np.percentile(v, 100 - q, method="higher"))

    for s in rows:
        rows[s]["mean mem lo"], rows[s]["mean mem hi"] = pct(agg_b["mem"][s])
        rows[s]["mean H2 lo"], rows[s]["mean H2 hi"] = pct(agg_b["h2"][s])
        rows[s]["m fit lo"], rows[s]["m fit hi"] = pct(rows[s].pop("_fit_orders"))

    # A set that reaches the target at the grid's first point says only m <= grid[0] (an upper bound on
    # kappa); sets reaching it later pin m down to (previous grid point, m]. Calibrate on the latter
    # when there are any.
    cal = [s for s in reached if rows[s]["mean mem"] > 0 and reached[s] > grid[0]] \
        or [s for s in reached if rows[s]["mean mem"] > 0]
    for pred, agg in (("cor1-mem", "mem"), ("cor1-h2", "h2")):
        col_agg = "mean mem" if agg == "mem" else "mean H2"
        if not cal:
            kappa, kappa_b = float("nan"), np.full(n_boot, np.nan)
        else:
            kappa = float(np.median([reached[s] * rows[s][col_agg] for s in cal]))
            kappa_b = np.median(np.stack([reached[s] * agg_b[agg][s] for s in cal]), axis=0)
        for s, r in rows.items():
            lower = k_max + 1 if s not in reached else 1  # not reached with K references: needs more
            with np.errstate(divide="ignore", invalid="ignore"):
                point = max(kappa / r[col_agg], lower) if r[col_agg] > 0 else float("inf")
                reps = np.maximum(kappa_b / agg_b[agg][s], lower)
            if s in reached:
                point, reps = reached[s], np.full(n_boot, reached[s])
            r[f"m {pred}"] = point
            r[f"m {pred} lo"], r[f"m {pred} hi"] = pct(np.where(np.isnan(reps), np.nan, reps))
        for s, r in rows.items():
            r[f"kappa {pred}"] = kappa
    for s, r in rows.items():
        ceiling_below = np.isfinite(r["ceiling A"]) and r["ceiling A"] < target and s not in reached
        # AUROC follows the 1/m law from m = 2 on (measured on the demo's sweep), so its fitted ceiling
        # is evidence; TPR at a low FPR starts near 0 and rises faster than 1/m, so a fit of a small
        # pilot's first points bounds nothing: there the fit's prediction is left unknown instead
        if col == "auroc":
            r["reachable"] = bool(s in reached or not ceiling_below)
        else:
            r["reachable"] = True
            if ceiling_below:
                r["m fit"] = r["m fit lo"] = r["m fit hi"] = float("nan")
        if s in reached:
            r["m fit"] = r["m fit lo"] = r["m fit hi"] = reached[s]
        for pred in ("cor1-mem", "cor1-h2", "fit"):
            m = r[f"m {pred}"] if r["reachable"] else float("inf")
            if not r["reachable"]:
                r[f"m {pred}"] = r[f"m {pred} lo"] = r[f"m {pred} hi"] = float("inf")
            r[f"shadows {pred}"] = _shadows_to_train(m)
        r["m pilot"] = reached.get(s, np.nan)
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "set"
    settings = {"metric": col, "target": target, "attack": attack, "pilot_shadows": w_n, "pilot_k_max": k_max,
                "m_grid": grid, "repeats": repeats, "n_boot": n_boot, "seed": seed, "level": level,
                "singleton_threshold": thr, "calibration_sets": cal, "store": str(store)}
    return PlanResult(table=table, curve=summ, masks=masks, settings=settings)


def full_sweep_summary(full_store: str | Path, masks: dict[str, np.ndarray], *, attack: str = "lira-online",
                       repeats: int = 10, seed: int = 0, n_targets: int | None = 64,
                       threads: int | None = None) -> pd.DataFrame:
    """The full run's summarized sweep on ``masks`` (AUROC, TPR at 0.1% and 1%), for :func:`compare_with_sweep`
    (on ``threads``, default :func:`analysis.kernels.threads.n_threads`)."""
    data = open_shadows(full_store)
    t_n = min(data.n_shadows, n_targets or data.n_shadows)
    sw, _ = sweep_from_store(data, masks, n_targets=t_n, repeats=repeats, seed=seed, fprs=(0.001, 0.01),
                             attacks=(attack,), threads=n_threads() if threads is None else threads)
    return summarize_sweep(sw)


def compare_with_sweep(plan: PlanResult, full_store: str | Path | None = None, *, summary: pd.DataFrame | None = None,
                       repeats: int = 10, seed: int = 0, n_targets: int | None = 64) -> pd.DataFrame:
    """Predicted vs measured references per side on a full run, on the pilot's sample sets.

    The full store's sweep (:func:`full_sweep_summary`, or ``summary`` computed by it before on the
    same masks) gives the measured smallest m with mean metric >= target
    (:func:`analysis.studies.complexity.shadows_needed`); NaN when not reached within the full run
    (``> m_max``). Returns, per set, the predictions, the measured m, whether the measured value
    lies in each prediction's interval, whether it is the same grid point, and the ratio.
    """
    st = plan.settings
    col = st["metric"]
    if summary is None:
        if full_store is None:
            raise ValueError("compare_with_sweep needs full_store or summary")
        summary = full_sweep_summary(full_store, plan.masks, attack=st["attack"], repeats=repeats, seed=seed,
                                     n_targets=n_targets)
    summ = summary[summary["attack"] == st["attack"]]
    if f"{col} mean" not in summ.columns:
        raise ValueError(f"the full sweep has no {col!r} column; its metrics: AUROC, TPR at 0.1% and 1%")
    need = shadows_needed(summ, metric=col, target=st["target"]).xs(st["attack"], level="attack")
    m_max = int(summ["m"].max())
    out = plan.table[["kind", "n_samples", "mean mem", "mean H2", "reachable", "m pilot"]].copy()
    out["m measured"] = need["m_needed"].reindex(out.index)
    out["reached in full run"] = need["reached"].reindex(out.index).fillna(False).astype(bool)
    out["full m_max"] = m_max
    for pred in ("cor1-mem", "cor1-h2", "fit"):
        p, lo, hi = plan.table[f"m {pred}"], plan.table[f"m {pred} lo"], plan.table[f"m {pred} hi"]
        out[f"m {pred}"] = p
        meas = out["m measured"]
        # "not reached within the full run" agrees with a prediction above m_max (or unreachable)
        agree_unreached = ~out["reached in full run"] & (p > m_max)
        out[f"{pred} in interval"] = ((meas >= lo - 1e-9) & (meas <= hi + 1e-9)) | agree_unreached
        with np.errstate(divide="ignore", invalid="ignore"):
            out[f"{pred} ratio"] = np.where(out["reached in full run"] & np.isfinite(p), p / meas, np.nan)
        # within the sweep's grid resolution: the measured m is the first grid point >= the need
        grid = np.asarray(sorted(summ["m"].unique()), dtype=np.float64)
        snapped = [grid[np.searchsorted(grid, v - 1e-9)] if np.isfinite(v) and v <= grid[-1] else np.inf
                   for v in p]
        out[f"{pred} same grid point"] = [not np.isnan(v) and ((r and s == m) or (not r and not np.isfinite(s)))
                                          for v, r, s, m in zip(p, out["reached in full run"], snapped,
                                                                out["m measured"])]
    return out

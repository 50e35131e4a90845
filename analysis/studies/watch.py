"""Watched quantities of an adaptive run, computed cheaply for one shadow prefix (one wave).

An adaptive run (:mod:`mia_hpc.pipeline.adaptive`) decides after every wave whether more shadows would
still move the numbers it cares about. Those numbers are named by *watch keys*:

``ATTACK/METRIC GROUP``
    An attack's pooled metric over (target shadow, sample of GROUP) pairs, exactly as the report
    computes it (``tables/attacks.csv`` for the groups ``All`` / ``Under``, ``paper_attacks`` for
    the challenge sets). ATTACK is any attack of :data:`analysis.attacks.ATTACKS` (e.g.
    ``lira-online``); METRIC is ``AUROC`` or ``TPR@<x>%`` (any FPR, e.g. ``TPR@0.1%``).
``mem/mean GROUP``
    The mean Feldman-Zhang memorization estimate over GROUP's samples.

GROUP is ``All`` (every train sample), ``Under`` or ``under`` (the under-represented train
samples, which is also the paper's "random" challenge set, alias ``random``), ``over``,
``singletons`` (under-represented with mem above the singleton threshold, mem estimated from the
shadows of this prefix, as the report at this shadow count would), ``subpopulation`` (the
smallest feature cluster's under-represented samples, :func:`analysis.studies.groups.subpopulation`) or
``samples`` (an explicit list of store sample indices, ``adaptive.samples``).

Cost per wave: one pass over the prefix's logits for the per-sample sums
(:func:`analysis.store_io.passes.reduce_over_shadows`), the watched attacks only
(:func:`analysis.attacks.run_attacks`), and a bootstrap of the watched metrics -- no paper extras
(OOD, theory, shadow-count sweep), tables or plots. The value of a key equals the report's number
for the same shadows (tested), because the same functions compute it.

Uncertainty: every value carries a percentile bootstrap interval.

* Attack metrics: :func:`analysis.kernels.bootstrap.bootstrap_metrics`, resampling targets and (shared)
  samples, as the paper tables do.
* ``mem/mean``: resampling the prefix's shadows (each sample's IN/OUT correctness rates recomputed
  from the drawn shadows) and the group's samples.

The interval says how well the value is known *from these targets and samples*; it does not
shrink to zero with more shadows (the samples' own spread stays), which is why the adaptive stop
rule compares the change over the last doubling with a tolerance rather than waiting for a narrow
interval (see :mod:`mia_hpc.pipeline.adaptive`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from analysis.kernels.threads import n_threads

__all__ = ["WatchKey", "WatchValue", "WatchResult", "GROUPS", "parse_watch", "watch_values", "group_masks"]

#: Watchable groups; "random" and "under" are aliases of "Under" (all under-represented train samples).
GROUPS = ("All", "Under", "under", "random", "over", "singletons", "subpopulation", "samples")
_ALIAS = {"under": "Under", "random": "Under", "all": "All"}
_METRIC = re.compile(r"^(AUROC|TPR@([0-9]*\.?[0-9]+)%)$")


class WatchError(ValueError):
    """A watch key or setting is malformed; ``str(err)`` is one line naming it and the fix."""


@dataclass(frozen=True)
class WatchKey:
    """One parsed watch key (see the module docstring)."""

    key: str
    attack: str  # an attack name, or "mem"
    metric: str  # "AUROC", "TPR@0.1%", or "mean"
    group: str  # canonical group name (aliases resolved)
    fpr: float | None = None  # for TPR metrics

    @property
    def is_mem(self) -> bool:
        return self.attack == "mem"


def parse_watch(key: str) -> WatchKey:
    """Parse ``"ATTACK/METRIC GROUP"`` or ``"mem/mean GROUP"``; raise :class:`WatchError` naming the problem."""
    # in the function: a spec's watch keys are checked when it is loaded (mia_hpc.contract.waves.check_adaptive),
    # and this module stays light (numpy) for that; the attacks import numba, dask and the kernels
    from analysis.attacks import ATTACKS

    attack, sep, rest = str(key).partition("/")
    metric, _, group = rest.rpartition(" ")
    if not sep or not attack or not metric or not group:
        raise WatchError(f"{key!r} must be 'ATTACK/METRIC GROUP' (e.g. 'lira-online/AUROC singletons') or "
                         "'mem/mean GROUP'")
    if group not in GROUPS and group not in _ALIAS:
        raise WatchError(f"{key!r}: unknown group {group!r}; groups: {', '.join(GROUPS)}")
    group = _ALIAS.get(group, group)
    if attack == "mem":
        if metric != "mean":
            raise WatchError(f"{key!r}: memorization is watched as 'mem/mean GROUP', got metric {metric!r}")
        return WatchKey(key, "mem", "mean", group)
    if attack not in ATTACKS:
        raise WatchError(f"{key!r}: unknown attack {attack!r}; attacks: {', '.join(ATTACKS)}, or 'mem'")
    m = _METRIC.match(metric)
    if not m:
        raise WatchError(f"{key!r}: metric must be 'AUROC' or 'TPR@<x>%' (e.g. 'TPR@0.1%'), got {metric!r}")
    fpr = None
    if m.group(2) is not None:
        fpr = float(m.group(2)) / 100
        if not 0 < fpr < 1:
            raise WatchError(f"{key!r}: the FPR must lie strictly between 0% and 100%, got {metric!r}")
    return WatchKey(key, attack, m.group(1) if fpr is None else metric, group, fpr)


@dataclass
class WatchValue:
    """A watched value with its bootstrap interval, and what it was computed from."""

    value: float
    lo: float
    hi: float
    n_samples: int
    n_targets: int | None = None  # attack metrics: target shadows; mem: None (all shadows count)

    def as_dict(self) -> dict[str, Any]:
        return {"value": _num(self.value), "lo": _num(self.lo), "hi": _num(self.hi), "n_samples": self.n_samples,
                "n_targets": self.n_targets}


@dataclass
class WatchResult:
    """The watched values of one prefix."""

    n_shadows: int
    values: dict[str, WatchValue]
    set_sizes: dict[str, int] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)


def _num(v: float) -> float | None:
    return float(v) if v is not None and np.isfinite(v) else None


def group_masks(names: Sequence[str], *, group: np.ndarray, train: np.ndarray, mem: np.ndarray | None,
                threshold: float, features: np.ndarray | None = None, samples: Sequence[int] = (),
                seed: int = 0) -> dict[str, np.ndarray]:
    """Boolean masks over all store samples for the named (canonical) groups.

    The definitions are the report's (:mod:`analysis.studies.groups`), so a group here is the same set of
    samples as the report's challenge set of that name for the same shadows.
    """
    from analysis.studies.groups import random_under, singletons, subpopulation  # pandas: off the spec check's path

    group = np.asarray(group).astype(str)
    train = np.asarray(train, dtype=bool)
    out: dict[str, np.ndarray] = {}
    for g in dict.fromkeys(names):
        if g == "All":
            out[g] = train.copy()
        elif g == "Under":
            out[g] = random_under(group, train=train)
        elif g == "over":
            out[g] = train & (group == "over")
        elif g == "singletons":
            if mem is None:
                raise WatchError("singletons need memorization estimates")
            out[g] = singletons(mem, group, threshold, train=train)
        elif g == "subpopulation":
            if features is None:
                raise WatchError("group 'subpopulation' needs the store's features (written by shadow 0's worker)")
            out[g] = subpopulation(features, group, train=train, seed=seed)
        elif g == "samples":
            idx = np.asarray(list(samples), dtype=np.int64)
            if idx.size == 0:
                raise WatchError("group 'samples' needs adaptive.samples (store sample indices)")
            if idx.min() < 0 or idx.max() >= train.size:
                raise WatchError(f"adaptive.samples: indices must lie in 0..{train.size - 1}")
            m = np.zeros(train.size, dtype=bool)
            m[idx] = True
            if (m & ~train).any():
                raise WatchError(f"adaptive.samples: {np.flatnonzero(m & ~train)[:5].tolist()} are test-split "
                                 "samples, which are never members; give train-split sample indices")
            out[g] = m
        else:  # pragma: no cover (parse_watch refuses others)
            raise WatchError(f"unknown group {g!r}")
    return out


def mem_bootstrap(correct: np.ndarray, keep: np.ndarray, *, n_boot: int = 200, seed: int = 0,
                  level: float = 0.95) -> tuple[float, float, float]:
    """Mean memorization over samples and its bootstrap interval over shadows and samples.

    Parameters
    ----------
    correct, keep : ndarray of bool, shape (M, n)
        Correctness and membership of the group's samples under the prefix's shadows.

    Returns
    -------
    (mean, lo, hi)
        ``mean`` is the plain mean over samples with an estimate (both sides non-empty).
    """
    c = np.asarray(correct, dtype=np.float64)
    k = np.asarray(keep, dtype=np.float64)
    m, n = k.shape
    if n == 0 or m == 0:
        return float("nan"), float("nan"), float("nan")

    def mem_of(w: np.ndarray) -> np.ndarray:
        # w: (B, M) shadow weights -> (B, n) memorization per sample (NaN where a side is empty)
        n_in, n_out = w @ k, w @ (1 - k)
        c_in, c_out = w @ (c * k), w @ (c * (1 - k))
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where((n_in > 0) & (n_out > 0), c_in / n_in - c_out / n_out, np.nan)

    point = mem_of(np.ones((1, m)))[0]
    ok = np.isfinite(point)
    mean = float(point[ok].mean()) if ok.any() else float("nan")
    rng = np.random.default_rng(seed)
    w = rng.multinomial(m, np.full(m, 1.0 / m), size=n_boot).astype(np.float64)  # shadows
    s = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64)  # samples
    reps = mem_of(w)
    s = np.where(np.isfinite(reps), s, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        rep_mean = np.nansum(np.nan_to_num(reps) * s, axis=1) / s.sum(axis=1)
    rep_mean = rep_mean[np.isfinite(rep_mean)]
    if rep_mean.size == 0:
        return mean, float("nan"), float("nan")
    a = 100 * (1 - level) / 2
    lo, hi = np.percentile(rep_mean, [a, 100 - a])
    return mean, float(lo), float(hi)


def watch_values(store: str | Path, keys: Sequence[str | WatchKey], *, shadow_limit: int | None = None,
                 targets: int | None = None, threshold: float | None = None, samples: Sequence[int] = (),
                 n_boot: int = 200, seed: int = 0, level: float = 0.95, progress: bool = False,
                 threads: int | None = None) -> WatchResult:
    """The watched values of the store's done shadows below ``shadow_limit``.

    Parameters
    ----------
    store : path
        A mia-hpc store.
    keys : sequence of str or WatchKey
        Watch keys (module docstring).
    shadow_limit : int, optional
        Use only done shadows with index below this (a wave prefix).
    targets : int, optional
        Target shadows (the first T done ones; 0 = all). Default: the spec's ``analysis.targets``.
    threshold : float, optional
        Singleton threshold; default: the spec's ``analysis.singleton_threshold``.
    samples : sequence of int
        Store sample indices of the group ``samples``.
    n_boot, seed, level : int, int, float
        Bootstrap replicates, seed (same seed: paired replicates across keys) and interval coverage.
    threads : int, optional
        Threads of the pass, the attacks and the bootstrap; default
        :func:`analysis.kernels.threads.n_threads` (read once here).

    Returns
    -------
    WatchResult
    """
    # in the function, as in parse_watch: importing this module (a spec check) stays light
    from analysis.attacks import ATTACKS, AttackContext, run_attacks
    from analysis.kernels.bootstrap import bootstrap_metrics
    from analysis.studies.groups import store_features
    from analysis.attacks.lira import resolve_targets
    from analysis.store_io.load import open_shadows
    from analysis.studies.memorization import memorization_from_counts
    from analysis.store_io.passes import reduce_over_shadows

    threads = n_threads() if threads is None else int(threads)
    parsed = [k if isinstance(k, WatchKey) else parse_watch(k) for k in keys]
    data = open_shadows(store, shadow_limit=shadow_limit)
    spec_an = data.spec.get("analysis", {})
    thr = float(spec_an.get("singleton_threshold", 0.8)) if threshold is None else float(threshold)
    n_targets = resolve_targets(data.n_shadows, targets, int(spec_an.get("targets", 0)))
    group, train = data.group, data.split == "train"
    keep = np.asarray(data.keep.values, dtype=bool)

    sums, partner, counts = reduce_over_shadows(data, progress=progress, threads=threads)
    mem, _ = memorization_from_counts(counts.n_in, counts.c_in, counts.n_out, counts.c_out)
    needs_features = any(k.group == "subpopulation" for k in parsed)
    masks = group_masks([k.group for k in parsed], group=group, train=train, mem=mem, threshold=thr,
                        features=store_features(data.ds) if needs_features else None, samples=samples, seed=0)

    values: dict[str, WatchValue] = {}
    names = [a for a in ATTACKS if any(k.attack == a for k in parsed)]  # registry order
    if names:
        ctx = AttackContext.from_shadows(data, n_targets, phi_sums=sums, phi_partner=partner, threads=threads)
        res = run_attacks(ctx, names=names)
        # one bootstrap per (attack, group) with every FPR it needs: same seed, paired replicates
        for (attack, g) in dict.fromkeys((k.attack, k.group) for k in parsed if not k.is_mem):
            mask_tr = masks[g][train]
            fprs = sorted({k.fpr for k in parsed if (k.attack, k.group) == (attack, g) and k.fpr is not None})
            b = bootstrap_metrics(res.member, res.scores[attack], fprs=fprs or [0.001], n_boot=n_boot, seed=seed,
                                  level=level, mask=mask_tr, threads=threads)
            for k in parsed:
                if (k.attack, k.group) != (attack, g):
                    continue
                name = "AUROC" if k.fpr is None else b.names[1 + fprs.index(k.fpr)]
                values[k.key] = WatchValue(b.point[name], b.lo[name], b.hi[name], int(mask_tr.sum()), n_targets)
    mem_groups = list(dict.fromkeys(k.group for k in parsed if k.is_mem))
    if mem_groups:
        idx_all = np.flatnonzero(np.logical_or.reduce([masks[g] for g in mem_groups]))
        correct = np.asarray(data.correct().isel(sample=idx_all).values, dtype=bool) if idx_all.size else None
        for g in mem_groups:
            sel = np.isin(idx_all, np.flatnonzero(masks[g]))
            if not sel.any():
                v = WatchValue(float("nan"), float("nan"), float("nan"), 0)
            else:
                v = WatchValue(*mem_bootstrap(correct[:, sel], keep[:, idx_all[sel]], n_boot=n_boot, seed=seed,
                                              level=level), int(sel.sum()))
            for k in parsed:
                if k.is_mem and k.group == g:
                    values[k.key] = v
    return WatchResult(n_shadows=data.n_shadows, values={k.key: values[k.key] for k in parsed},
                       set_sizes={g: int(m.sum()) for g, m in masks.items()},
                       settings={"n_boot": n_boot, "seed": seed, "level": level, "singleton_threshold": thr,
                                 "n_targets": n_targets})

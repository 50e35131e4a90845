"""The adaptive stop rule replayed on a finished store: watched value vs shadows trained, stop points.

``mia-hpc adaptive-figure STORE --out DIR`` (see :func:`adaptive_figure`) evaluates the watched
quantities of the store's spec (``[adaptive] watch``; a SPEC argument may give another ``[adaptive]``
table for the same store) on every prefix of whole keep blocks (4, 8, 12, ... shadows), applies the
stop rule of :mod:`mia_hpc.pipeline.adaptive` to the wave sizes (first_wave, doubling), and writes

* ``adaptive_<attack>_<metric>.png`` per watched metric family: one line per group (e.g. singletons
  vs random under-represented samples) with its 95% bootstrap band, the wave points, each group's
  own stop point (the first wave at which that group alone moved by at most the tolerance over the
  last doubling) and the full run's value with the +- tolerance band;
* ``adaptive_curve.csv``: every prefix's values and intervals;
* ``adaptive_stops.md``: stop points and the stopped-minus-full differences for a grid of
  (first_wave, tolerance) settings, from the same curve.

Replaying on prefixes is legitimate: shadow s depends only on (spec, s), and the keep masks are
balanced per block, so the first w shadows of a full run are exactly what an adaptive run has
trained by its wave of w (tested: the replay equals a real adaptive run).
Torch-free.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from analysis.store_io.atomic import write_text
from analysis.store_io.figures import save_figure
from analysis.store_io.numfmt import to_markdown
from analysis.studies.watch import watch_values

__all__ = ["replay_curve", "stop_points", "stops_table", "plot_curve", "adaptive_figure"]


def replay_curve(store: str | Path, keys: Sequence[str], sizes: Sequence[int], *, samples: Sequence[int] = (),
                 progress: Any = None) -> pd.DataFrame:
    """Tidy DataFrame (shadows, key, value, lo, hi, n_samples) of the watched keys on every prefix size."""

    rows = []
    for m in sizes:
        r = watch_values(store, keys, shadow_limit=int(m), samples=samples)
        for k, v in r.values.items():
            d = v.as_dict()
            rows.append({"shadows": int(m), "key": k, "value": d["value"], "lo": d["lo"], "hi": d["hi"],
                         "n_samples": v.n_samples})
        if progress is not None:
            progress(1)
    return pd.DataFrame(rows)


def stop_points(curve: pd.DataFrame, waves: Sequence[int], tolerance: float) -> dict[str, int | None]:
    """Per key: the first wave at which it alone moved by at most ``tolerance`` since the previous wave.

    The rule of :mod:`mia_hpc.pipeline.adaptive` (:meth:`mia_hpc.pipeline.adaptive.Wave.within`), including its
    ``MIN_COUNTED``: a change from a wave of fewer shadows is not counted. None: never within the
    grid (the full run is needed).
    """
    from mia_hpc.contract.waves import MIN_COUNTED

    out: dict[str, int | None] = {}
    for k, d in curve.groupby("key", sort=False):
        v = d.set_index("shadows")["value"]
        out[k] = None
        for a, b in zip(waves[:-1], waves[1:]):
            if a < MIN_COUNTED or a not in v.index or b not in v.index:
                continue
            if np.isfinite(v[a]) and np.isfinite(v[b]) and abs(v[b] - v[a]) <= tolerance:
                out[k] = int(b)
                break
    return out


def _waves(first: int, total: int) -> list[int]:
    w, out = first, []
    while w < total:
        out.append(w)
        w *= 2
    return out + [total]


def stops_table(curve: pd.DataFrame, total: int, *, first_waves: Sequence[int], tolerances: Sequence[float],
                block: int) -> pd.DataFrame:
    """Stop point, stopped value and its difference to the full run per (key, first_wave, tolerance).

    Settings whose waves are not all prefix sizes of ``curve`` (not multiples of ``block``) are skipped.
    """
    have = set(curve["shadows"])
    full = curve[curve["shadows"] == total].set_index("key")["value"]
    rows = []
    for fw in first_waves:
        waves = _waves(fw, total)
        if fw % block or not set(waves) <= have:
            continue
        for tol in tolerances:
            for k, s in stop_points(curve, waves, tol).items():
                at = s or total
                v = float(curve[(curve["key"] == k) & (curve["shadows"] == at)]["value"].iloc[0])
                rows.append({"key": k, "first_wave": fw, "tolerance": tol, "waves": "/".join(map(str, waves)),
                             "stop": at, "stopped early": s is not None and s < total,
                             "value at stop": v, "full run": float(full[k]), "stop - full": v - float(full[k]),
                             "within tolerance of full": abs(v - float(full[k])) <= tol,
                             "compute saved": 1 - at / total})
    return pd.DataFrame(rows)


def _family(key: str) -> tuple[str, str]:
    """("lira-online/AUROC", "singletons") from "lira-online/AUROC singletons"."""
    head, _, group = key.rpartition(" ")
    return head, group


def plot_curve(curve: pd.DataFrame, waves: Sequence[int], tolerance: float, path: str | Path, *,
               family: str, total: int, formats: Sequence[str] = ("png",)) -> list[Path]:
    """One panel: every group of ``family`` vs shadows trained, bands, waves, stop points, full run."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    stops = stop_points(curve, waves, tolerance)
    keys = [k for k in dict.fromkeys(curve["key"]) if _family(k)[0] == family]
    for i, k in enumerate(keys):
        d = curve[curve["key"] == k].sort_values("shadows")
        color = f"C{i % 10}"
        group = _family(k)[1]
        n = int(d["n_samples"].iloc[-1])
        ax.plot(d["shadows"], d["value"], color=color, lw=1.2, label=f"{group} (n={n} at {total})")
        ax.fill_between(d["shadows"], d["lo"].astype(float), d["hi"].astype(float), color=color, alpha=0.15, lw=0)
        w = d[d["shadows"].isin(waves)]
        ax.plot(w["shadows"], w["value"], "o", color=color, ms=4)
        full = float(d[d["shadows"] == total]["value"].iloc[0])
        ax.axhspan(full - tolerance, full + tolerance, color=color, alpha=0.08, lw=0)
        ax.axhline(full, color=color, ls="--", lw=0.8)
        s = stops[k]
        if s is not None and s < total:
            v = float(d[d["shadows"] == s]["value"].iloc[0])
            ax.axvline(s, color=color, ls=":", lw=1.2)
            ax.plot([s], [v], "*", color=color, ms=12)
            ax.annotate(f"stop at {s}: {v:.3f}\n(full run {full:.3f})", (s, v), textcoords="offset points",
                        xytext=(-8, -34), ha="right", color=color, fontsize="small")
        else:
            ax.annotate(f"no stop before {total}\n(full run {full:.3f})", (total, full), textcoords="offset points",
                        xytext=(-8, -34), ha="right", color=color, fontsize="small")
    ax.set_xscale("log", base=2)
    ticks = sorted(set(waves) | {int(curve["shadows"].min())})
    ax.set_xticks(ticks, [str(w) for w in ticks])
    ax.minorticks_off()
    ax.set_xlabel("shadows trained (dots: waves; band: 95% bootstrap over targets and samples)")
    ax.set_ylabel(family)
    ax.set_title(f"Adaptive waves: {family} (stop: change <= {tolerance:g} per doubling)", fontsize="medium")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    return save_figure(fig, Path(path), formats)


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", s.replace("%", "pct")).strip("_").lower()


def adaptive_figure(store: str | Path, out: str | Path, *, spec: Any = None, every: int | None = None,
                    first_waves: Sequence[int] = (4, 8, 12, 16), tolerances: Sequence[float] = (0.01, 0.02, 0.05),
                    progress: Any = None) -> dict[str, Any]:
    """Replay the adaptive rule on ``store``'s prefixes; write the figures, the curve and the stops table.

    Parameters
    ----------
    store : path
        A finished store whose keep masks are balanced per block (``shadows.keep_block``).
    out : path
        Output folder (created).
    spec : mia_hpc.contract.spec.Spec, optional
        Whose ``[adaptive]`` table to use; default the store's spec. Must have the store's hash.
    every : int, optional
        Prefix step of the curve; default the keep block.
    first_waves, tolerances
        The settings grid of ``adaptive_stops.md``.

    Returns
    -------
    dict with ``curve`` (DataFrame), ``stops`` (per key, the spec's settings), ``table`` (grid),
    ``figures`` (paths), ``settings``.
    """
    from mia_hpc.contract.spec import SpecError
    from mia_hpc.contract.store import done_mask, open_store, spec_of
    from mia_hpc.contract.waves import check_adaptive, wave_sizes

    from analysis.studies.watch import parse_watch

    root = open_store(store)
    own = spec_of(root)
    spec = spec or own
    if spec.hash() != own.hash():
        raise SpecError(f"SPEC: its hash {spec.hash()} differs from the store's {own.hash()}; only the [adaptive] "
                        "table (and name, analysis) may differ")
    check_adaptive(spec, parse_watch)
    m = spec.shadows.count
    if not done_mask(root).all():
        raise SpecError(f"{store}: {int(done_mask(root).sum())}/{m} shadows done; the replay needs the full run")
    block = spec.shadows.keep_block or m
    every = every or block
    if every % block:
        raise SpecError(f"--every: must be a multiple of shadows.keep_block ({block}), got {every}")
    waves = wave_sizes(spec)
    sizes = sorted(set(range(every, m + 1, every)) | set(waves))
    curve = replay_curve(store, spec.adaptive.watch, sizes, samples=spec.adaptive.samples, progress=progress)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    figs: list[Path] = []
    for fam in dict.fromkeys(_family(k)[0] for k in spec.adaptive.watch):
        # PNG only: these are docs/ figures (small, committed)
        figs += plot_curve(curve, waves, spec.adaptive.tolerance, out / f"adaptive_{_slug(fam)}", family=fam, total=m)
    table = stops_table(curve, m, first_waves=sorted(set(first_waves) | {spec.adaptive.first_wave}),
                        tolerances=sorted(set(tolerances) | {spec.adaptive.tolerance}), block=block)
    write_text(out / "adaptive_curve.csv", curve.to_csv(index=False))
    view = table.copy()
    for c in ("value at stop", "full run", "stop - full", "compute saved"):
        view[c] = view[c].map(lambda x: f"{x:+.4f}" if c == "stop - full" else f"{x:.3f}")
    write_text(out / "adaptive_stops.md",
               f"Adaptive stop points replayed on {Path(store)} ({m} shadows, prefixes of {every}): per watched "
               "key alone, the first wave whose change over the last doubling is within the tolerance (changes "
               "from waves of < 6 shadows not counted); 'stop' = the full run when it never is.\n\n"
               + to_markdown(view.set_index("key")))
    stops = stop_points(curve, waves, spec.adaptive.tolerance)
    return {"curve": curve, "stops": stops, "table": table, "figures": figs,
            "settings": {"waves": waves, "tolerance": spec.adaptive.tolerance, "watch": list(spec.adaptive.watch),
                         "every": every}}

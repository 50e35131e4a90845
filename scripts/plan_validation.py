"""Validate ``mia-hpc plan`` against a full run's shadow-count sweep (the figure of docs/planning.md).

Usage (the demo-adaptive store, whose wave prefixes are balanced, so its first P shadows are a
legitimate P-shadow pilot of the same recipe)::

    .venv/bin/mia-hpc run jobs/demo-adaptive.toml --out runs/demo-adaptive --no-analyze
    .venv/bin/python scripts/plan_validation.py runs/demo-adaptive/store.zarr --out docs/figures \\
        --pilots 8 16 --targets auroc:0.7 auroc:0.8 auroc:0.9 auroc:0.95 tpr@1%:0.1 tpr@1%:0.3

For each pilot size P and target, :func:`analysis.studies.planner.plan_from_pilot` predicts from the first
P shadows the references per side every set needs (the challenge groups and the memorization bins);
the full store's sweep on the same sample sets measures them
(:func:`analysis.studies.planner.compare_with_sweep`). Writes ``plan_validation.csv`` (every row),
``plan_validation.md`` (summary per predictor) and ``plan_validation.png`` (predicted vs measured).
About 1 minute per pilot size and target on two cores.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis.store_io.atomic import write_text  # noqa: E402
from analysis.store_io.figures import save_figure  # noqa: E402
from analysis.studies.planner import compare_with_sweep, full_sweep_summary, plan_from_pilot  # noqa: E402
from analysis.store_io.numfmt import to_markdown  # noqa: E402

PREDICTORS = ("cor1-mem", "cor1-h2", "fit")


def run(store: str, pilots: list[int], targets: list[tuple[str, float]], repeats: int) -> pd.DataFrame:
    rows = []
    for p in pilots:
        summary = None
        for metric, tgt in targets:
            plan = plan_from_pilot(store, shadow_limit=p, metric=metric, target=tgt, repeats=repeats)
            if summary is None:  # same pilot, same sets: one full sweep serves every target
                summary = full_sweep_summary(store, plan.masks, repeats=repeats)
            c = compare_with_sweep(plan, summary=summary)
            for pred in PREDICTORS:
                c[f"m {pred} lo"] = plan.table[f"m {pred} lo"]
                c[f"m {pred} hi"] = plan.table[f"m {pred} hi"]
            c.insert(0, "target", tgt)
            c.insert(0, "metric", plan.settings["metric"])
            c.insert(0, "pilot", p)
            rows.append(c.reset_index())
            print(f"pilot {p}, {metric} >= {tgt}: done", flush=True)
    return pd.concat(rows, ignore_index=True)


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """Per pilot size, metric and predictor: how the predictions compare with the full run's sweep.

    Only sets the pilot did *not* already bring to the target (the pilot's own count needs no
    prediction). "reached": the full run reaches the target (measured m <= m_max); there the ratio
    predicted / measured is scored. "not reached": a prediction above the full run's m_max (or
    unreachable) is right. NaN predictions (the fit of a TPR curve below the target) count as misses.
    """
    out = {}
    todo = df[df["m pilot"].isna()]
    for (p, metric), d in todo.groupby(["pilot", "metric"]):
        for pred in PREDICTORS:
            r = d["reached in full run"].astype(bool)
            lr = np.log2(d.loc[r, f"{pred} ratio"].astype(float))
            lr = lr[np.isfinite(lr)]
            pm = d[f"m {pred}"].astype(float)
            hit = d[f"{pred} same grid point"].astype(bool) & pm.notna()  # a missing prediction is a miss
            out[(int(p), metric, pred)] = {
                "cases": len(d), "predicted": int(pm.notna().sum()),
                "same grid point": f"{int(hit.sum())}/{len(d)}",
                "measured in interval": f"{int(d[f'{pred} in interval'].sum())}/{len(d)}",
                "reached: n": int(r.sum()),
                "reached: median pred/measured": float(2 ** np.median(lr)) if lr.size else np.nan,
                "reached: within 2x": f"{int((np.abs(lr) <= 1).sum())}/{int(r.sum())}",
                "not reached: predicted > max": f"{int((~r & (pm > d['full m_max'])).sum())}/{int((~r).sum())}",
            }
    t = pd.DataFrame.from_dict(out, orient="index")
    t.index = pd.MultiIndex.from_tuples(t.index, names=["pilot shadows", "metric", "predictor"])
    return t


def plot(df: pd.DataFrame, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11.5, 3.9), dpi=90, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(PREDICTORS), sharey=True)
    todo = df[df["m pilot"].isna()]
    m_max = float(df["full m_max"].max())
    cap = 2 * m_max  # "not reached" / "unreachable" drawn here
    markers = {p: mk for p, mk in zip(sorted(df["pilot"].unique()), "os^D")}
    for ax, pred in zip(axes, PREDICTORS):
        for (p, kind), d in todo.groupby(["pilot", "kind"]):
            x = np.minimum(d[f"m {pred}"].astype(float).replace(np.inf, cap), cap)
            y = d["m measured"].astype(float).fillna(cap)
            lo = np.minimum(d[f"m {pred} lo"].astype(float).replace(np.inf, cap).fillna(cap), cap)
            hi = np.minimum(d[f"m {pred} hi"].astype(float).replace(np.inf, cap).fillna(cap), cap)
            ok = d[f"m {pred}"].notna().to_numpy()
            if not ok.any():
                continue
            x, y, lo, hi = x[ok], y[ok], lo[ok], hi[ok]
            ax.errorbar(x, y, xerr=[np.maximum(x - lo, 0), np.maximum(hi - x, 0)], fmt=markers[p],
                        color="C0" if kind == "group" else "C1", ms=5, alpha=0.75, lw=0.8,
                        label=f"pilot {p}, {'groups' if kind == 'group' else 'mem bins'}")
        ax.plot([0.8, cap * 1.1], [0.8, cap * 1.1], color="grey", ls="--", lw=0.8)
        ax.axhline(m_max, color="grey", ls=":", lw=0.8)
        ax.axvline(m_max, color="grey", ls=":", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log", base=2)
        ax.set_title({"cor1-mem": "Corollary 1: kappa / mean mem", "cor1-h2": "Corollary 1: kappa / mean H²",
                      "fit": "pilot curve, v = A - B/m"}[pred], fontsize="medium")
        ax.set_xlabel("predicted refs per side (right: unreachable)")
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel(f"measured in the full run (top: > {int(m_max)})")
    h, lab = axes[0].get_legend_handles_labels()
    uniq = dict(zip(lab, h))
    fig.legend(uniq.values(), uniq.keys(), loc="outside lower center", ncols=4, fontsize="small")
    fig.suptitle("mia-hpc plan: predicted vs measured shadows needed (sets not already at the target in the pilot)")
    save_figure(fig, path, ("png",))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("store", help="a full store with balanced prefixes (shadows.keep_block)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--pilots", type=int, nargs="+", default=[8, 16])
    ap.add_argument("--targets", nargs="+", default=["auroc:0.7", "auroc:0.8", "auroc:0.9", "auroc:0.95",
                                                       "tpr@1%:0.1", "tpr@1%:0.3"])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--from-csv", default=None, help="re-summarize and re-plot an earlier plan_validation.csv")
    a = ap.parse_args(argv)
    targets = [(t.rsplit(":", 1)[0], float(t.rsplit(":", 1)[1])) for t in a.targets]
    out = Path(a.out)
    if a.from_csv:
        df = pd.read_csv(a.from_csv)
    else:
        df = run(a.store, a.pilots, targets, a.repeats)
        write_text(out / "plan_validation.csv", df.to_csv(index=False))
    summ = summarize(df)
    write_text(out / "plan_validation.md",
               f"mia-hpc plan validated on {a.store}: pilots of {a.pilots} shadows, targets {a.targets}; "
               "sets the pilot had not already brought to the target. 'same grid point': the prediction rounds "
               "up to the sweep grid point measured (or both say 'not within the full run').\n\n"
               + to_markdown(summ.reset_index().set_index("pilot shadows")))
    plot(df, out / "plan_validation")
    print(to_markdown(summ.reset_index().set_index("pilot shadows")))
    return 0


if __name__ == "__main__":
    sys.exit(main())

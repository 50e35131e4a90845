"""Memorization with and without DP-SGD, per group (paper §8, Fig. 4): ``mia-hpc compare-mem A B --out DIR``.

Two stores of the *same samples* (e.g. ``jobs/demo.toml`` and ``jobs/fig4-dp.toml``: same data,
seed and keep masks, the second trained with DP-SGD) are compared on the Feldman-Zhang
memorization estimate of their train samples, per group (D_O "over" vs D_U "under"):

* ``mem_compare.png``: side by side, one panel per store, the distribution of mem per group
  (density histograms on the same bins, group means marked); the panel title gives the store's
  epsilon (if DP) and its mean test accuracy per group;
* ``mem_compare.csv`` / ``.md``: per store and group: samples, mean mem with its bootstrap
  interval over samples, median, fraction above 0.5 and 0.8, mean test accuracy, epsilon.

The paper's observation: under DP the under-represented group's memorization collapses (its mean
drops to near D_O's), because the clipped, noised per-sample gradients bound any one sample's
influence on the model (Feldman: DP hampers memorization). Inputs are checked before anything is
written: both must be stores, with the same samples (labels, groups, splits, images). Torch-free.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from analysis.store_io.atomic import write_text
from analysis.store_io.figures import save_figure
from analysis.store_io.load import open_shadows
from analysis.store_io.numfmt import to_markdown
from analysis.studies.memorization import memorization

__all__ = ["store_memorization", "compare_memorization", "CompareError"]

GROUP_LABEL = {"over": "D_O (over-represented)", "under": "D_U (under-represented)"}
GROUP_COLOR = {"over": "tab:blue", "under": "tab:red"}


class CompareError(ValueError):
    """Bad input to the comparison; ``str(err)`` names the store and the fix."""


def store_memorization(store: str | Path) -> dict[str, Any]:
    """Per train sample: mem and group; per store: shadows, epsilon, test accuracy per group.

    Returns ``{"mem", "group", "label", "split", "n_shadows", "epsilon", "accuracy", "image"}``; mem
    and group are over the train samples only, the others over all samples.
    """
    import zarr


    data = open_shadows(store)
    train = data.split == "train"
    mem, _ = memorization(data.correct(), data.keep)
    acc = data.accuracy()
    subsets = [str(s) for s in acc["subset"].values] if "subset" in acc.coords else []
    accv = np.asarray(acc.values, dtype=np.float64)
    accuracy = {s: float(np.nanmean(accv[:, i])) for i, s in enumerate(subsets)}
    dp = dict(zarr.open_group(str(store), mode="r").attrs.get("dp") or {})
    return {"mem": np.asarray(mem)[train], "group": data.group[train], "label": data.label, "split": data.split,
            "n_shadows": data.n_shadows, "epsilon": dp.get("epsilon"), "dp": dp, "accuracy": accuracy,
            "image": np.asarray(data.ds["image"].values)}


def _same_samples(a: dict[str, Any], b: dict[str, Any], name_b: str) -> None:
    for k in ("label", "split"):
        if a[k].shape != b[k].shape or not np.array_equal(a[k], b[k]):
            raise CompareError(f"{name_b}: holds other samples than the first store ({k} differs); compare-mem "
                               "compares the same data trained two ways (e.g. jobs/demo.toml and jobs/fig4-dp.toml)")
    if not np.array_equal(a["group"], b["group"]):
        raise CompareError(f"{name_b}: holds other samples than the first store (group differs)")
    if a["image"].shape != b["image"].shape or not np.array_equal(a["image"], b["image"]):
        raise CompareError(f"{name_b}: holds other samples than the first store (images differ); use stores of "
                           "specs with the same [data] table and seed")


def _boot_mean(v: np.ndarray, n_boot: int = 1000, seed: int = 0) -> tuple[float, float]:
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(n_boot, v.size))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def _table(stores: Sequence[dict[str, Any]], labels: Sequence[str]) -> pd.DataFrame:
    rows = []
    for lab, s in zip(labels, stores):
        for g in ("over", "under"):
            m = s["mem"][s["group"] == g]
            m = m[np.isfinite(m)]
            if m.size == 0:
                continue
            lo, hi = _boot_mean(m)
            rows.append({"store": lab, "group": g, "n_samples": int(m.size), "mean mem": float(m.mean()),
                         "mean mem lo": lo, "mean mem hi": hi, "median mem": float(np.median(m)),
                         "frac mem > 0.5": float((m > 0.5).mean()), "frac mem > 0.8": float((m > 0.8).mean()),
                         "test accuracy": s["accuracy"].get(f"test/{g}", np.nan),
                         "shadows": s["n_shadows"], "epsilon": s["epsilon"] if s["epsilon"] is not None else np.nan})
    return pd.DataFrame(rows).set_index(["store", "group"])


def _plot(stores: Sequence[dict[str, Any]], labels: Sequence[str], path: Path) -> list[Path]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10.0, 3.8), dpi=90, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(stores), sharey=True, sharex=True)
    bins = np.linspace(-1, 1, 41)
    lowest = min(float(np.nanmin(s["mem"])) for s in stores)
    left = max(-1.0, min(-0.25, np.floor(lowest * 4) / 4))  # negative estimates are noise: show no more axis
    for ax, lab, s in zip(np.atleast_1d(axes), labels, stores):
        for g in ("over", "under"):
            m = s["mem"][s["group"] == g]
            m = m[np.isfinite(m)]
            if m.size == 0:
                continue
            ax.hist(m, bins=bins, density=True, alpha=0.55, color=GROUP_COLOR[g],
                    label=f"{GROUP_LABEL[g]}: n={m.size}, mean {m.mean():.3f}")
            ax.axvline(m.mean(), color=GROUP_COLOR[g], ls="--", lw=1)
        eps = f", ε = {s['epsilon']:.1f} at δ = {s['dp'].get('delta', 0):g}" if s["epsilon"] is not None else ""
        acc = s["accuracy"]
        ax.set_title(f"{lab}{eps}\ntest accuracy: D_O {100 * acc.get('test/over', np.nan):.1f}%, "
                     f"D_U {100 * acc.get('test/under', np.nan):.1f}% ({s['n_shadows']} shadows)", fontsize="medium")
        ax.set_xlabel("memorization (Feldman-Zhang estimate)")
        ax.set_yscale("log")
        ax.set_xlim(left, 1.02)
        ax.legend(fontsize="small", loc="upper right")
        ax.grid(True, alpha=0.3)
    np.atleast_1d(axes)[0].set_ylabel("density (log scale)")
    return save_figure(fig, path, ("png",))


def compare_memorization(store_a: str | Path, store_b: str | Path, out: str | Path, *,
                         labels: Sequence[str] = ("no DP", "DP-SGD")) -> dict[str, Any]:
    """Compare two stores' memorization per group; write the figure and the table into ``out``.

    Returns ``{"table": DataFrame, "figure": Path, "files": [...]}``. Raises :class:`CompareError`
    (before writing anything) when the stores do not hold the same samples.
    """
    from mia_hpc.contract.store import StoreError

    if len(labels) != 2:
        raise CompareError(f"--labels: give two labels, got {len(labels)}")
    loaded = []
    for name in (store_a, store_b):
        if not (Path(name) / "zarr.json").is_file():
            raise CompareError(f"{name}: not a mia-hpc store (no zarr.json)")
        try:
            loaded.append(store_memorization(name))
        except StoreError as err:
            raise CompareError(str(err)) from None
    _same_samples(loaded[0], loaded[1], str(store_b))
    table = _table(loaded, labels)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fig = _plot(loaded, labels, out / "mem_compare")[0]
    csv = write_text(out / "mem_compare.csv", table.to_csv())
    view = table.reset_index()
    view["mean mem [95%]"] = [f"{m:.3f} [{lo:.3f}, {hi:.3f}]" for m, lo, hi in
                              zip(view["mean mem"], view["mean mem lo"], view["mean mem hi"])]
    view = view[["store", "group", "n_samples", "mean mem [95%]", "median mem", "frac mem > 0.5", "frac mem > 0.8",
                 "test accuracy", "shadows", "epsilon"]].set_index("store")
    md = write_text(out / "mem_compare.md",
                    f"Memorization per group: {labels[0]} ({store_a}) vs {labels[1]} ({store_b}); train samples, "
                    "mean with a 95% bootstrap interval over samples (paper §8, Fig. 4).\n\n" + to_markdown(view))
    return {"table": table, "figure": fig, "files": [fig, csv, md]}

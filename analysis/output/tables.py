"""The paper's tables as DataFrames, written as CSV, Markdown and LaTeX.

``accuracy_table``  Tables 1 / 4: train and test accuracy (%) per group, mean with a 95% interval
                    over shadows, from the store's ``accuracy(shadow, subset)``.
``attack_table``    Tables 2 / 3 / 5: rows = attack x challenge set (random, subpopulation,
                    singletons); columns AUROC and TPR@0.1% FPR for "All" and "Under-represented",
                    each a pooled point estimate with a bootstrap interval over targets and samples
                    (:mod:`analysis.kernels.bootstrap`).
``format_*``        The same tables as strings, "value [lo, hi]" (paper view).
``write_table``     ``name.csv`` (numbers), ``name.md`` and ``name.tex`` (the string view).

One store is one training set, so unlike the paper (where each challenge-set row is a separately
trained mixture) the "All" column is the same for every challenge set of an attack: all train
samples of the store. The "Under-represented" column of a row is that challenge set: all under
samples (random), the subpopulation, or the singletons. To compare stores, concatenate their tables
(``dataset=`` labels the rows).

LaTeX is written by hand (no jinja2 / Styler dependency): a ``table`` with a ``tabular`` that uses
only core LaTeX (``\\hline``, ``\\multicolumn``), every cell escaped (``% _ & # $ { } ~ ^ \\``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from analysis.store_io.atomic import write_text
from analysis.store_io.numfmt import fmt, is_p_column
from analysis.store_io.spill import release_freed_memory
from analysis.kernels.bootstrap import bootstrap_columns, metric_names

__all__ = ["accuracy_table", "format_accuracy_table", "attack_table", "format_attack_table", "to_markdown",
           "to_latex", "latex_escape", "write_table", "format_numbers", "SUBSET_LABELS"]

SUBSETS = ("train/over", "train/under", "test/over", "test/under")  # = mia_hpc.contract.store.SUBSETS
SUBSET_LABELS = {"train/over": "Train D_O", "train/under": "Train D_U", "test/over": "Test D_O",
                 "test/under": "Test D_U"}
COLUMN_LABELS = {"All": "All", "Under": "Under-represented"}


# --- Table 1 / 4 --------------------------------------------------------------------------------

def accuracy_table(acc: Any, *, subsets: Sequence[str] = SUBSETS, dataset: str = "store",
                   n_over: int | None = None, n_under: int | None = None, level: float = 0.95) -> pd.DataFrame:
    """Accuracy (%) per subset over shadows: one row (``dataset``), numeric columns.

    Parameters
    ----------
    acc : array-like (S, len(subsets)) or xarray DataArray (shadow, subset)
        Each shadow's accuracy in [0, 1] (``ShadowData.accuracy()``); NaN entries are ignored.
    subsets : sequence of str
        Column order of ``acc`` (the store's ``SUBSETS``; taken from the DataArray if it has them).
    dataset : str
        Row label.
    n_over, n_under : int, optional
        |D_O^tr| and |D_U^tr| (Table 4 reports them).
    level : float
        Interval level (0.95).

    Returns
    -------
    DataFrame, one row, columns per subset ``s``: ``s mean``, ``s pm`` (z * std, ddof=1; the
    paper's "mean ± x" with z = 1.96 at 95%), ``s lo``, ``s hi`` (the central ``level`` percentile
    range of the shadows), and ``n_shadows`` (and ``|D_O|``, ``|D_U|`` if given). A subset without
    any value (e.g. no under-represented group) is NaN, shown as N/A.
    """
    if hasattr(acc, "dims") and "subset" in getattr(acc, "coords", {}):
        subsets = [str(s) for s in np.asarray(acc["subset"].values).tolist()]
        acc = acc.transpose("shadow", "subset").values
    a = 100.0 * np.asarray(acc, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] != len(subsets):
        raise ValueError(f"acc must be (shadows, {len(subsets)}), got {a.shape}")
    from scipy.stats import norm

    z = float(norm.ppf(0.5 + level / 2))
    q = 100 * (1 - level) / 2
    row: dict[str, Any] = {"n_shadows": int(a.shape[0])}
    if n_over is not None:
        row["|D_O|"] = int(n_over)
    if n_under is not None:
        row["|D_U|"] = int(n_under)
    for j, s in enumerate(subsets):
        v = a[:, j][np.isfinite(a[:, j])]
        sd = float(np.std(v, ddof=1)) if v.size > 1 else float("nan")
        row[f"{s} mean"] = float(v.mean()) if v.size else float("nan")
        row[f"{s} pm"] = z * sd
        row[f"{s} lo"] = float(np.percentile(v, q)) if v.size else float("nan")
        row[f"{s} hi"] = float(np.percentile(v, 100 - q)) if v.size else float("nan")
    df = pd.DataFrame([row], index=pd.Index([dataset], name="dataset"))
    return df


def format_accuracy_table(df: pd.DataFrame, *, subsets: Sequence[str] = SUBSETS,
                          percentiles: bool = False) -> pd.DataFrame:
    """Paper view of :func:`accuracy_table`: "mean ± pm" per subset (or "mean [lo, hi]" with
    ``percentiles=True``), N/A where a subset has no value; numbers in the report's one format
    (:func:`analysis.store_io.numfmt.fmt`)."""
    view = pd.DataFrame(index=df.index)
    for c in ("n_shadows", "|D_O|", "|D_U|"):
        if c in df:
            view[c] = [str(int(v)) for v in df[c]]
    for s in subsets:
        cells = []
        for m, pm, lo, hi in zip(df[f"{s} mean"], df[f"{s} pm"], df[f"{s} lo"], df[f"{s} hi"]):
            if not math.isfinite(m):
                cells.append("N/A")
            elif percentiles:
                cells.append(f"{fmt(m)} [{fmt(lo)}, {fmt(hi)}]")
            else:
                cells.append(f"{fmt(m)} ± {fmt(pm)}" if math.isfinite(pm) else fmt(m))
        view[f"{SUBSET_LABELS.get(s, s)} (%)"] = cells
    return view


# --- Tables 2 / 3 / 5 ---------------------------------------------------------------------------

def attack_table(results: Mapping[str, tuple[np.ndarray, np.ndarray]], challenge: Mapping[str, np.ndarray], *,
                 all_mask: np.ndarray | None = None, fpr: float = 0.001, n_boot: int = 200, seed: int = 0,
                 level: float = 0.95, samples: str = "shared", dataset: str | None = None,
                 threads: int = 1, block_bytes: int | None = None,
                 spill_dir: str | Path | None = None) -> pd.DataFrame:
    """Pooled AUROC and TPR@``fpr`` with bootstrap intervals, per attack x challenge set.

    Parameters
    ----------
    results : mapping attack -> (member, score)
        ``member`` (T, N) bool and ``score`` (T, N) over the same N challenge samples (e.g.
        ``LiraResult.member`` and ``LiraResult.scores[attack]``; N = train samples).
    challenge : mapping set name -> bool (N,)
        The "Under-represented" column of each row, over the same N samples, e.g. ``{"random":
        under, "subpopulation": ..., "singletons": ...}`` (masks over the whole store restricted to
        the train samples: ``mask[train]``).
    all_mask : bool (N,), optional
        The "All" column; default every sample.
    fpr : float
        FPR of the TPR column (0.1%).
    n_boot, seed, level, samples
        Bootstrap settings (:func:`analysis.kernels.bootstrap.bootstrap_metrics`); the same seed for
        every cell, so the cells of one column are paired replicates.
    dataset : str, optional
        Prepended as an index level (to concatenate several stores' tables).
    threads : int
        Threads of the bootstrap (no result depends on it).
    block_bytes, spill_dir : optional
        The bootstrap's memory share and where its sorted pairs wait when they exceed it
        (:func:`analysis.kernels.bootstrap.bootstrap_metrics`; no result depends on them).

    Returns
    -------
    DataFrame indexed by (attack, challenge set) [or (dataset, attack, challenge set)], columns for
    each metric ``m`` in (``AUROC``, ``TPR@0.1%``) and column group ``g`` in (All, Under):
    ``"m g"``, ``"m g lo"``, ``"m g hi"``; then ``n All``, ``n Under`` (challenge samples) and
    ``degenerate`` (bootstrap replicates without both classes, summed over the row's cells).
    """
    names = metric_names([fpr])
    rows, index = [], []
    for attack, (member, score) in results.items():
        member = np.asarray(member, dtype=bool)
        score = np.asarray(score)
        if score.dtype != np.float32:
            score = score.astype(np.float64)
        n = member.shape[-1]
        am = np.ones(n, dtype=bool) if all_mask is None else np.asarray(all_mask, dtype=bool)
        if am.shape != (n,):
            raise ValueError(f"all_mask has shape {am.shape}, expected ({n},)")
        for cname, cmask in challenge.items():
            if np.shape(cmask) != (n,):
                raise ValueError(f"challenge set {cname!r} has shape {np.shape(cmask)}, expected ({n},)")
        # one sort of the attack's pairs serves the "All" column and every challenge set
        cols = bootstrap_columns(member, score, {"\0all": am, **challenge}, fprs=[fpr], n_boot=n_boot, seed=seed,
                                 level=level, samples=samples, threads=threads, block_bytes=block_bytes,
                                 spill_dir=spill_dir)
        release_freed_memory()
        b_all = cols.pop("\0all")  # the same for every challenge set
        for cname, b_u in cols.items():
            cmask = np.asarray(challenge[cname], dtype=bool)
            row: dict[str, Any] = {}
            for m in names:
                for g, b in (("All", b_all), ("Under", b_u)):
                    row[f"{m} {g}"] = b.point[m]
                    row[f"{m} {g} lo"] = b.lo[m]
                    row[f"{m} {g} hi"] = b.hi[m]
            row["n All"] = int(am.sum())
            row["n Under"] = int(cmask.sum())
            row["degenerate"] = b_all.n_degenerate + b_u.n_degenerate
            rows.append(row)
            index.append((attack, cname) if dataset is None else (dataset, attack, cname))
    levels = ["attack", "challenge set"] if dataset is None else ["dataset", "attack", "challenge set"]
    df = pd.DataFrame(rows, index=pd.MultiIndex.from_tuples(index, names=levels))
    df.attrs.update({"fpr": fpr, "n_boot": n_boot, "seed": seed, "level": level, "samples": samples})
    return df


def _cell(v: float, lo: float, hi: float, pct: bool) -> str:
    if not math.isfinite(v):
        return "N/A"
    f = (lambda x: f"{fmt(100 * x)}%") if pct else fmt
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return f(v)
    return f"{f(v)} [{f(lo)}, {f(hi)}]"


def format_attack_table(df: pd.DataFrame, *, show_n: bool = True) -> pd.DataFrame:
    """Paper view of :func:`attack_table`: "value [lo, hi]" strings, TPR in percent, numbers in the
    report's one format (:func:`analysis.store_io.numfmt.fmt`).

    Columns: ``AUROC All``, ``AUROC Under-represented``, ``TPR@0.1% FPR All``, ``TPR@0.1% FPR
    Under-represented`` (and ``n Under`` with ``show_n``)."""
    view = pd.DataFrame(index=df.index)
    metrics = [c[: -len(" All")] for c in df.columns if c.endswith(" All") and not c.startswith("n ")]
    for m in metrics:
        pct = m.startswith("TPR")
        for g in ("All", "Under"):
            label = f"{m}{' FPR' if pct else ''} {COLUMN_LABELS[g]}"
            view[label] = [_cell(v, lo, hi, pct)
                           for v, lo, hi in zip(df[f"{m} {g}"], df[f"{m} {g} lo"], df[f"{m} {g} hi"])]
    if show_n and "n Under" in df:
        view["n Under"] = [str(int(v)) for v in df["n Under"]]
    return view


# --- writers ------------------------------------------------------------------------------------

def format_numbers(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` as strings in the report's one number format; columns named like p-values
    (:func:`analysis.store_io.numfmt.is_p_column`) in scientific notation."""
    view = pd.DataFrame(index=df.index)
    for c in df.columns:
        p = is_p_column(c)
        view[c] = [fmt(v, p_value=p) for v in df[c].tolist()]
    return view


def _index_cells(df: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """Index names and per-row index cells, with repeats of outer levels blanked (grouped rows)."""
    names = [str(n or "") for n in df.index.names]
    rows, prev = [], None
    for key in df.index:
        key = key if isinstance(key, tuple) else (key,)
        cells = []
        for i, k in enumerate(key):
            same = prev is not None and i < len(key) - 1 and tuple(prev[: i + 1]) == tuple(key[: i + 1])
            cells.append("" if same else str(k))
        rows.append(cells)
        prev = key
    return names, rows


def to_markdown(view: pd.DataFrame) -> str:
    """A (string) DataFrame as a GitHub-flavoured Markdown table; index levels become columns."""
    names, idx = _index_cells(view)
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    head = names + [str(c) for c in view.columns]
    out = ["| " + " | ".join(map(esc, head)) + " |",
           "|" + "|".join([" --- "] * len(names) + [" ---: "] * len(view.columns)) + "|"]
    for ic, row in zip(idx, view.itertuples(index=False)):
        out.append("| " + " | ".join(map(esc, ic + [str(v) for v in row])) + " |")
    return "\n".join(out) + "\n"


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "±": r"$\pm$", "≥": r"$\geq$", "≤": r"$\leq$"}


def latex_escape(s: Any) -> str:
    """Escape LaTeX's special characters (and typeset ±) in one cell."""
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(s))


def to_latex(view: pd.DataFrame, *, caption: str = "", label: str = "", groups: bool = True) -> str:
    """A (string) DataFrame as a LaTeX ``table``/``tabular`` using core LaTeX only.

    With ``groups``, columns named ``"<head> <sub>"`` that share a head (e.g. ``AUROC All``,
    ``AUROC Under-represented``) get a ``\\multicolumn`` header over a second header row.
    """
    names, idx = _index_cells(view)
    cols = [str(c) for c in view.columns]
    ncol = len(names) + len(cols)
    lines = [r"\begin{table}[t]", r"\centering"]
    if caption:
        lines.append(r"\caption{" + latex_escape(caption) + "}")
    if label:
        lines.append(r"\label{" + label.replace("_", "-") + "}")
    lines += [r"\begin{tabular}{" + "l" * len(names) + "r" * len(cols) + "}", r"\hline"]
    heads = [c.rsplit(" ", 1) if " " in c else [c, ""] for c in cols]
    spans: list[list] = []  # [head, count, first column]
    for j, (h, _) in enumerate(heads):
        if spans and spans[-1][0] == h:
            spans[-1][1] += 1
        else:
            spans.append([h, 1, j])
    if groups and any(n > 1 for _, n, _ in spans):
        top = [""] * len(names)
        bottom = [latex_escape(n) for n in names]
        for h, n, j in spans:
            if n > 1:
                top.append(r"\multicolumn{%d}{c}{%s}" % (n, latex_escape(h)))
                bottom += [latex_escape(heads[j + i][1]) for i in range(n)]
            else:  # a lone column keeps its whole name on top
                top.append(latex_escape(cols[j]))
                bottom.append("")
        lines += [" & ".join(top) + r" \\", " & ".join(bottom) + r" \\"]
    else:
        lines.append(" & ".join(latex_escape(c) for c in names + cols) + r" \\")
    lines.append(r"\hline")
    for ic, row in zip(idx, view.itertuples(index=False)):
        if ic[0] and lines[-1] != r"\hline" and len(names) > 1:
            lines.append(r"\hline")  # a new outer group
        cells = [latex_escape(c) for c in ic] + [latex_escape(v) for v in row]
        assert len(cells) == ncol
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\hline", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def write_table(folder: str | Path, name: str, numeric: pd.DataFrame, view: pd.DataFrame | None = None, *,
                caption: str = "") -> list[Path]:
    """Write ``folder/name.csv`` (``numeric``), ``name.md`` (caption + ``view``) and ``name.tex``.

    ``view`` defaults to ``numeric`` in the report's one number format (:func:`format_numbers`).
    Each file is written to a temporary name and renamed into place. Returns the three paths.
    """
    folder = Path(folder)
    view = format_numbers(numeric) if view is None else view
    paths = [folder / f"{name}.csv", folder / f"{name}.md", folder / f"{name}.tex"]
    write_text(paths[0], numeric.to_csv())
    write_text(paths[1], (f"{caption}\n\n" if caption else "") + to_markdown(view))
    write_text(paths[2], to_latex(view, caption=caption, label=f"tab:{name}"))
    return paths

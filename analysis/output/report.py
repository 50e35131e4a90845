"""``analyze``: from a shadow store to tables, plots and a JSON summary.

Outputs under ``out`` (each file is written to a temporary name and renamed into place, so a crash
never leaves a complete-looking but partial file; ``analysis.json`` is removed first and written
last, so its presence marks a finished analysis):

* ``tables/attacks.csv|md``: every attack of :mod:`analysis.attacks` (Yeom, Shokri, Song,
  Sablayrolles, LiRA online / offline / fixed-variance, RMIA), AUROC and TPR at each FPR,
  "All" train samples and "Under" (the under-represented group), on pooled (target, sample) pairs;
* ``tables/attacks_per_target.csv|md``: the same metrics per target, mean and std across targets;
* ``tables/accuracy.csv|md``: shadow accuracy per subset, mean and 95% intervals (paper Table 1);
* ``tables/memorization.csv|md``: per group, count, mean memorization, fraction above the
  singleton threshold, mean privacy score;
* ``per_sample.csv``: sample, group, split, label, mem, mem_se, privacy_score;
* ``plots/privacy_score_hist.png`` (paper Fig. 1a) and ``plots/mem_vs_privacy.png`` (Fig. 2a);
* ``roc/roc.csv`` and ``plots/roc.png|pdf``: every attack's pooled ROC per column (:mod:`analysis.output.roc`);
* ``analysis.json``: all numbers, with the store's spec hash and the wall seconds of each phase (``timings_s``).

The logits are read once for the attacks (:func:`analysis.store_io.passes.one_pass`: every per-sample
reduction over shadows and the targets' own phi and signals together); Shokri's classifier reads
its training rows and the targets' full softmax again, and the paper extras read what they need.
"""

from __future__ import annotations

import json
import math
import threading
import time
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from mia_hpc.contract.store import SUBSETS

from analysis.attacks import ATTACKS as ATTACK_REGISTRY
from analysis.attacks import AttackContext, run_attacks
from analysis.attacks.shokri import fit_shokri
from analysis.attacks.lira import LIRA_VARIANTS, LiraResult, resolve_targets, run_lira
from analysis.attacks.lira_reference import run_lira_reference
from analysis.store_io.load import ShadowData, open_shadows
from analysis.studies.memorization import memorization_from_counts
from analysis.kernels.metrics import attack_metrics, fpr_label, metric_columns
from analysis.store_io.passes import one_pass
from analysis.kernels.stats import MemCounts
from analysis.studies.privacy import privacy_score_from_sums
from analysis.output.roc import write_roc
from analysis.store_io.atomic import write_text
from analysis.store_io.figures import FigureQueue, save_figure
from analysis.store_io.numfmt import fmt, format_table, to_markdown  # format_table, to_markdown: re-exported
from analysis.studies.complexity import theory_json, theory_suite, theory_tables
from analysis.studies.groups import challenge_sets, highly_memorized, sample_set_table, set_definition, store_features
from analysis.studies.ood import ood_correlations, ood_scores_from_store, plot_mem_vs_ood, plot_ood_vs_privacy, spearman
from analysis.output.tables import accuracy_table, attack_table, format_accuracy_table, format_attack_table, write_table
from analysis.output.html_report import incomplete_line, write_report
from analysis.output.scores import StoredScores, write_scores
from analysis.output.pieces import attacks_as_tasks, bootstrap_as_tasks, metrics_as_tasks, pieces_client
from analysis.store_io.spill import DiskRows, SpilledScores, current_rss_bytes, peak_rss_gib, release_freed_memory
from analysis.store_io.tasks import file_ref
from analysis.kernels.threads import n_threads
from mia_hpc.contract.settings import ANALYSIS_MEMORY_GB, memory_budget_bytes

__all__ = ["analyze", "format_table", "to_markdown", "terminal_lines"]

GROUP_COLORS = {"over": "tab:blue", "under": "tab:red"}


# --- formatting -------------------------------------------------------------------------------

def _fmt(v: Any, *, p_value: bool = False) -> str:
    """The report's one number format (:func:`analysis.store_io.numfmt.fmt`)."""
    return fmt(v, p_value=p_value)


def terminal_lines(res: Mapping[str, Any]) -> list[str]:
    """What ``mia-hpc run`` and ``mia-hpc analyze`` print after an analysis, last line the report's path.

    ``res`` is :func:`analyze`'s result: a "k of M shadows done" line first when the store has
    shadows not done, the attack table, then ``report: OUT/report/index.html``.
    """
    lines = []
    warn = incomplete_line(res["summary"])
    if warn:
        lines.append(warn)
    lines.append(format_table(res["attacks"]))
    lines.append(f"report: {res['report']}")
    return lines


def _write_table(out: Path, name: str, df: pd.DataFrame, caption: str, view: pd.DataFrame | None = None) -> None:
    """``tables/name.csv`` (numbers) and ``tables/name.md`` (caption + ``view``, default ``df``)."""
    write_text(out / "tables" / f"{name}.csv", df.to_csv())
    write_text(out / "tables" / f"{name}.md", f"{caption}\n\n{to_markdown(df if view is None else view)}")


def _jsonable(v: Any) -> Any:
    """NaN/inf -> None (strict JSON), numpy scalars/arrays -> Python."""
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple, np.ndarray)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return float(v) if math.isfinite(v) else None
    if isinstance(v, np.bool_):
        return bool(v)
    return v


# --- tables -----------------------------------------------------------------------------------

def _attack_tables(lira: LiraResult, group_tr: np.ndarray, fprs: list[float], threads: int = 1,
                   block_bytes: int | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    masks = {"All": np.ones(group_tr.size, dtype=bool), "Under": group_tr == "under"}
    cols = metric_columns(fprs)
    pooled, per = {}, {}
    client = pieces_client(lira.scores)
    done = None if client is None else metrics_as_tasks(lira, client, masks, fprs, block_bytes)  # one task per attack
    for a in lira.scores:  # every attack run (analysis.attacks.ATTACKS order)
        if done is None:
            p, mu, sd = attack_metrics(lira.member, lira.scores[a], masks, fprs, threads=threads,
                                       block_bytes=block_bytes)
            release_freed_memory()
        else:
            p, mu, sd = done[a]
        pooled[a] = [p[c] for c in cols]
        per[a] = [x for c in cols for x in (mu[c], sd[c])]
    attacks = pd.DataFrame.from_dict(pooled, orient="index", columns=cols)
    attacks.index.name = "attack"
    per_cols = [f"{c} {s}" for c in cols for s in ("mean", "std")]
    per_target = pd.DataFrame.from_dict(per, orient="index", columns=per_cols)
    per_target.index.name = "attack"
    return attacks, per_target


class _LazyPairs(Mapping):
    """``attack -> (member, scores)`` of a result, each attack's scores read when asked for."""

    def __init__(self, lira: LiraResult) -> None:
        self.lira = lira

    def __getitem__(self, attack: str) -> tuple[np.ndarray, np.ndarray]:
        return self.lira.member, self.lira.scores[attack]

    def __iter__(self):
        return iter(self.lira.scores)

    def __len__(self) -> int:
        return len(self.lira.scores)


def _accuracy_table(acc: np.ndarray) -> pd.DataFrame:
    """Accuracy (%) per subset over shadows: mean, std, mean +- 1.96 std half-width, 2.5/97.5 percentiles."""
    rows = {}
    for j, s in enumerate(SUBSETS):
        v = 100.0 * acc[:, j]
        v = v[np.isfinite(v)]
        if v.size == 0:
            rows[s] = [0, np.nan, np.nan, np.nan, np.nan, np.nan]
            continue
        sd = float(np.std(v, ddof=1)) if v.size > 1 else np.nan
        rows[s] = [int(v.size), float(v.mean()), sd, 1.96 * sd, float(np.percentile(v, 2.5)),
                   float(np.percentile(v, 97.5))]
    df = pd.DataFrame.from_dict(rows, orient="index",
                                columns=["n_shadows", "mean", "std", "pm95", "p2.5", "p97.5"])
    df.index.name = "subset"
    return df


def _accuracy_md(df: pd.DataFrame) -> pd.DataFrame:
    """Paper-style view: 'mean ± 1.96 sd' and the 2.5-97.5 percentile range."""
    view = pd.DataFrame(index=df.index)
    view["shadows"] = df["n_shadows"].astype(int)
    view["accuracy (%)"] = [f"{_fmt(m)} ± {_fmt(h)}" if np.isfinite(m) else "N/A" for m, h in zip(df["mean"], df["pm95"])]
    view["95% of shadows (%)"] = [f"[{_fmt(lo)}, {_fmt(hi)}]" if np.isfinite(lo) else "N/A"
                                 for lo, hi in zip(df["p2.5"], df["p97.5"])]
    return view


def _memorization_table(group_tr: np.ndarray, mem_tr: np.ndarray, priv_tr: np.ndarray, thr: float) -> pd.DataFrame:
    rows = {}
    for g in ("over", "under", "all"):
        sel = np.ones(group_tr.size, dtype=bool) if g == "all" else group_tr == g
        m = mem_tr[sel]
        p = priv_tr[sel]
        m_ok = m[np.isfinite(m)]
        p_ok = p[np.isfinite(p)]  # +inf (zero spread on both sides) would swamp a mean
        rows[g] = [int(sel.sum()), float(m_ok.mean()) if m_ok.size else np.nan,
                   float((m_ok > thr).mean()) if m_ok.size else np.nan, int((m_ok > thr).sum()),
                   float(p_ok.mean()) if p_ok.size else np.nan]
    df = pd.DataFrame.from_dict(rows, orient="index", columns=[
        "count", "mean mem", f"frac mem > {_fmt(thr)}", f"n mem > {_fmt(thr)}", "mean privacy score"])
    df.index.name = "group"
    return df


# --- plots ------------------------------------------------------------------------------------

def _figure():
    # The object-oriented API with an explicit Agg canvas: no pyplot state, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.4), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _plot_privacy_hist(path: Path, group_tr: np.ndarray, priv_tr: np.ndarray) -> None:
    fig = _figure()
    ax = fig.subplots()
    ok = np.isfinite(priv_tr)
    vals = priv_tr[ok]
    bins = np.histogram_bin_edges(vals, bins=40) if vals.size else 10
    for g in ("over", "under"):
        v = priv_tr[ok & (group_tr == g)]
        if v.size:
            ax.hist(v, bins=bins, alpha=0.6, color=GROUP_COLORS[g], label=f"{g}-represented (n={v.size})")
    ax.set_xlabel(r"privacy score $|\mu_{in}-\mu_{out}|/(\sigma_{in}+\sigma_{out})$")
    ax.set_ylabel("number of train samples")
    ax.set_title("Privacy score by group")
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    save_figure(fig, path)


def _plot_mem_vs_privacy(path: Path, group_tr: np.ndarray, mem_tr: np.ndarray, priv_tr: np.ndarray,
                         rho: dict[str, Any]) -> None:
    fig = _figure()
    ax = fig.subplots()
    ok = np.isfinite(mem_tr) & np.isfinite(priv_tr)
    for g in ("over", "under"):
        sel = ok & (group_tr == g)
        if sel.any():
            ax.scatter(mem_tr[sel], priv_tr[sel], s=6, alpha=0.5, color=GROUP_COLORS[g],
                       label=f"{g}-represented (n={int(sel.sum())})")
    ax.set_xlabel("memorization score (Feldman-Zhang)")
    ax.set_ylabel("privacy score")
    title = "Memorization vs privacy score"
    if np.isfinite(rho["rho"]):
        title += f"\nSpearman ρ = {rho['rho']:.3f} (p = {rho['p']:.1e}, n = {rho['n']})"
    ax.set_title(title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    save_figure(fig, path)




# --- entry point ------------------------------------------------------------------------------

class _Phases:
    """Wall seconds and memory of the analysis' phases (``analysis.json``: ``timings_s``,
    ``peak_rss_gib``, ``phase_rss_gib``; printed by ``mia-hpc bench analyze``): where a run's time
    and memory went, measured in that run. Names with a ``/`` are parts of the phase before the
    ``/``; the other phases do not overlap.

    ``peak_rss_gib`` is the process' peak RSS when each phase ended (``getrusage``: it only grows,
    and is what ``/usr/bin/time`` reports). ``phase_rss_gib`` is the largest RSS seen while each
    phase ran (sampled every 50 ms on a background thread; a spike shorter than that can be
    missed), so each phase's own peak shows even after an earlier phase's higher one.
    """

    def __init__(self, sample_s: float = 0.05) -> None:
        self.seconds: dict[str, float] = {}
        self.peak_rss_gib: dict[str, float] = {}
        self.phase_rss_gib: dict[str, float] = {}
        self._open: dict[str, int] = {}  # phase -> the largest RSS (bytes) seen while it is open
        self._lock = threading.Lock()
        self._stop = threading.Event()
        # the thread holds only a weak reference: it ends with close() or when the phases are gone
        self._sampler = threading.Thread(target=_Phases._sample, args=(weakref.ref(self), self._stop, sample_s),
                                         name="rss-sampler", daemon=True)
        self._sampler.start()

    @staticmethod
    def _sample(ref: "weakref.ref[_Phases]", stop: threading.Event, every: float) -> None:
        while not stop.wait(every):
            phases = ref()
            if phases is None:
                return
            rss = current_rss_bytes()
            with phases._lock:
                for k, v in phases._open.items():
                    if rss > v:
                        phases._open[k] = rss
            del phases

    def close(self) -> None:
        """Stop the sampler."""
        self._stop.set()

    @contextmanager
    def __call__(self, name: str):
        t = time.perf_counter()
        with self._lock:
            self._open[name] = current_rss_bytes()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - t, 3)
            self.peak_rss_gib[name] = round(peak_rss_gib(), 3)
            rss = current_rss_bytes()
            with self._lock:
                seen = max(self._open.pop(name, 0), rss) / 2**30
            self.phase_rss_gib[name] = round(max(self.phase_rss_gib.get(name, 0.0), seen), 3)


def analyze(store: str | Path, out: str | Path, *, targets: int | None = None, fpr: list[float] | None = None,
            progress: bool = True, shadow_limit: int | None = None, extras: bool = True,
            lira_variant: str | None = None, threads: int | None = None,
            memory_gb: float | None = None) -> dict[str, Any]:
    """Analyse a shadow store: LiRA attacks, memorization, privacy scores, accuracy; write reports.

    Parameters
    ----------
    store : str or Path
        A mia-hpc store; only its ``done`` shadows are used (at least 2).
    out : str or Path
        Output folder (created). Files: see the module docstring.
    targets : int, optional
        Number of target shadows T (the first T done shadows), each attacked with the other done
        shadows as references (less one partner per sample, see :mod:`analysis.kernels.stats`); 0 = all.
        Default: the spec's ``analysis.targets``.
    fpr : list of float, optional
        FPRs at which TPR is reported. Default: the spec's ``analysis.fpr``.
    progress : bool
        Show tqdm progress bars (on stderr).
    shadow_limit : int, optional
        Use only done shadows with index below this (a wave prefix of an adaptive run).
    extras : bool
        Also compute the paper's challenge sets (random, subpopulation, singletons) with bootstrap
        intervals, OOD scores, Hellinger/Eq. 8 checks, the shadow-count sweep and the sample
        complexity (:func:`_paper_extras`). Off for quick repeated analyses (adaptive waves).
    lira_variant : {"ours", "reference"}, optional
        How LiRA is scored (:mod:`analysis.attacks.lira` or :mod:`analysis.attacks.lira_reference`). Default: the
        spec's ``analysis.lira_variant``.
    threads : int, optional
        Threads of every parallel step (the pass, LiRA, the attacks, metrics, bootstrap, sweep,
        scores.zarr); no result depends on it. Default :func:`analysis.kernels.threads.n_threads`,
        read once here and passed down.
    memory_gb : float, optional
        Memory budget in GiB (default :data:`mia_hpc.contract.settings.ANALYSIS_MEMORY_GB`). The
        block sizes follow from it: when the targets' per-query arrays (phi, signals, scores:
        targets x samples x queries) exceed a quarter of it they are written to local disk under
        ``out`` by the pass and read back a block of targets at a time; the batches of LiRA and the
        attacks and the kept phi of every shadow (the sweep's input) are sized from it too. No
        result depends on it (tests/test_memory_budget.py).

    Returns
    -------
    dict
        ``attacks``, ``attacks_per_target``, ``accuracy``, ``memorization``, ``per_sample``
        (DataFrames), ``spearman`` (dict), ``lira`` (:class:`analysis.attacks.lira.LiraResult`) and
        ``summary`` (what ``analysis.json`` holds).
    """
    t_start = time.perf_counter()
    threads = n_threads() if threads is None else int(threads)
    if threads < 1:
        raise ValueError(f"threads: expected a positive integer, got {threads}")
    budget = memory_budget_bytes(ANALYSIS_MEMORY_GB if memory_gb is None else memory_gb, "memory_gb")
    phase = _Phases()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "analysis.json").unlink(missing_ok=True)  # its presence means "finished"

    with phase("open"):
        data = open_shadows(store, shadow_limit=shadow_limit)
    spec_an = data.spec.get("analysis", {})
    fprs = [float(f) for f in (spec_an.get("fpr", [0.001, 0.01]) if fpr is None else fpr)]
    bad = [f for f in fprs if not 0 < f < 1]
    if bad:
        raise ValueError(f"fpr values must lie in (0, 1), got {bad}")
    thr = float(spec_an.get("singleton_threshold", 0.8))
    variant = str(spec_an.get("lira_variant", "ours") if lira_variant is None else lira_variant)
    if variant not in LIRA_VARIANTS:
        raise ValueError(f"lira_variant: must be one of {', '.join(map(repr, LIRA_VARIANTS))}, got {variant!r}")
    n_targets = resolve_targets(data.n_shadows, targets, int(spec_an.get("targets", 0)))

    group, split, label = data.group, data.split, data.label
    train = split == "train"
    if not train.any():
        raise ValueError(f"{store}: no train-split samples, nothing to attack")
    keep = np.asarray(data.keep.values, dtype=bool)

    # Shokri's k attack classifiers are fitted first (from a few sampled shadow rows), so that the
    # one pass scores the targets as it reads them instead of a second read of the targets' logits.
    with phase("shokri_fit"):
        shokri = fit_shokri(data.logits.data, keep, data.label, train, n_targets)
    # Each attack's (T, N) scores go to disk as soon as they exist (one attack in memory at a time);
    # the targets' signals and Shokri scores wait there while LiRA runs on the targets' phi.
    spill = SpilledScores(out)
    try:
        # One pass over the logits: every reduction over shadows, and the targets' own phi and signals.
        with phase("pass"):
            # the reference variant scores from every shadow's phi (its medians need the values themselves)
            phi_budget = 1 << 62 if variant == "reference" else min(512 << 20, budget // 6) if extras else 0
            m_all, n_all, q_all = data.logits.shape[:3]
            kept_rows = m_all if variant == "reference" else n_targets
            held = 4 * (kept_rows * n_all * q_all + n_targets * n_all * 3 + n_targets * int(train.sum()))
            # the targets' per-query arrays wait on disk, not in memory, when they exceed a quarter of
            # the budget, or when every shadow's phi (the sweep's input) does not fit its share: then
            # that waits on disk too and the sweep reads it a block of samples at a time
            phi_fits = 4 * m_all * n_all * q_all <= phi_budget
            on_disk = held > budget // 4 or (extras and not phi_fits)
            if on_disk and extras:
                phi_budget = 1 << 62
            p = one_pass(data, n_targets, train=train, progress=progress, phi_budget=phi_budget,
                         scorers={"shokri": shokri.score_features}, threads=threads,
                         spill_dir=spill.dir / "targets" if on_disk else None)
        release_freed_memory()
        sums, partner, counts = p.sums, p.partner, p.counts
        mem, mem_se = memorization_from_counts(counts.n_in, counts.c_in, counts.n_out, counts.c_out)
        priv = privacy_score_from_sums(sums)
        if on_disk:  # read a block of targets at a time (the shokri scores: one attack's (T, N_train))
            target_signals, shokri_scores = p.target_signals, p.target_scores["shokri"].mmap
        else:
            spill["_signals"], spill["_shokri"] = p.target_signals, p.target_scores["shokri"]
            target_signals, shokri_scores = None, (lambda: spill.pop("_shokri"))
        p.target_signals = p.target_scores = None

        # On a dask distributed cluster LiRA's batches of targets and the attacks that score the
        # targets are dask tasks (analysis.attacks.lira, analysis.output.pieces) reading the
        # targets' arrays from files.
        client = pieces_client(spill)
        # Each target against the other shadows (balanced leave-pair-out from the sums), from memory.
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=n_targets, desc="LiRA targets", unit="target")
        try:
            with phase("lira"):
                if variant == "reference":
                    phi_all = p.phi_all.mmap() if on_disk else p.phi_all
                    lira = run_lira_reference(phi_all, keep, train, n_targets, shadow_ids=data.ds["shadow"].values,
                                              sample_ids=data.ds["sample"].values,
                                              progress=bar.update if bar is not None else None, threads=threads)
                else:
                    # the tasks read the targets' phi from its file: the pass' one, else written once here
                    phi_file = (file_ref(p.target_phi, spill.dir / "target_phi.npy")
                                if client is not None and not isinstance(p.target_phi, DiskRows) else None)
                    x_of = ((lambda sl: p.target_phi[sl]) if client is None
                            else p.target_phi if phi_file is None else phi_file)
                    lira = run_lira(x_of, keep, sums, partner, train, n_targets,
                                    shadow_ids=data.ds["shadow"].values, sample_ids=data.ds["sample"].values,
                                    batch_bytes=min(64 << 20, budget // 48),
                                    progress=bar.update if bar is not None else None,
                                    threads=threads,
                                    # its three (T, N_train) score arrays go to disk as they are made
                                    # (always with a client: the tasks write their rows there)
                                    spill_dir=spill.dir / "lira" if client is not None or 3 * 4 * n_targets
                                    * int(train.sum()) > budget // 8 else None, client=client)
                    if phi_file is not None:
                        phi_file.close()
        finally:
            if bar is not None:
                bar.close()
        p.target_phi = None  # only LiRA reads it
        release_freed_memory()
        # Every other attack of analysis.attacks (LiRA's result reused), merged into one result
        # whose scores are the spill's arrays, in analysis.attacks.ATTACKS order; on a dask
        # distributed cluster the attacks that score the targets are one task each, reading the
        # targets' signals from their file (analysis.output.pieces)
        if client is not None and target_signals is None:
            target_signals = DiskRows.open(spill.path("_signals"))  # the file stays until the tasks are done
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(ATTACK_REGISTRY), desc="attacks", unit="attack")
        try:
            ctx = AttackContext.from_shadows(data, n_targets, phi_sums=sums, phi_partner=partner, lira=lira,
                                             signal_stats=(p.sig_sums, p.sig_partner, p.hist, p.edges),
                                             target_signals=spill.pop("_signals") if target_signals is None
                                             else target_signals,
                                             precomputed={"shokri": (shokri, shokri_scores)},
                                             batch_bytes=min(128 << 20, budget // 24), threads=threads)
            phi_all = p.phi_all
            if on_disk and phi_all is not None and 4 * np.prod(phi_all.shape) <= min(512 << 20, budget // 6):
                phi_all = phi_all[:]  # the sweep's input in memory when it fits its share, else read in blocks
            extra_inputs = {"fits": p.fits, "ood": p.ood, "phi": phi_all, "memory_bytes": budget // 4}
            del p
            with phase("attacks"):
                done = (lambda _name: bar.update(1)) if bar is not None else None
                if client is None:
                    lira = run_attacks(ctx, progress=done, scores=spill)
                else:
                    lira = attacks_as_tasks(ctx, client, spill, signals=target_signals, progress=done)
                    spill.pop("_signals", None)
            del ctx
            release_freed_memory()
        finally:
            if bar is not None:
                bar.close()
    except BaseException:
        spill.close()
        phase.close()
        raise
    try:
        # every figure is drawn on one background thread while the tables are computed
        with FigureQueue() as figures:
            inputs = ReportInputs(data=data, lira=lira, out=out, store=store, train=train, group=group, label=label,
                                  split=split, mem=mem, mem_se=mem_se, priv=priv, counts=counts, thr=thr, fprs=fprs,
                                  n_targets=n_targets, extras=extras, extra_inputs=extra_inputs, progress=progress,
                                  t_start=t_start, lira_variant=variant, threads=threads, budget=budget)
            return _tabulate(inputs, figures=figures, phase=phase)
    finally:
        spill.close()
        phase.close()


@dataclass
class ReportInputs:
    """What :func:`analyze` hands its tables, figures and JSON summary (:func:`_tabulate`).

    Attributes
    ----------
    data : analysis.store_io.load.ShadowData
        The opened store (its done shadows).
    lira : analysis.attacks.AttackResult
        Every attack's (T, N_train) scores, in :data:`analysis.attacks.ATTACKS` order.
    out, store : Path, str or Path
        The output folder and the store's path.
    train, group, label, split : ndarray (N,)
        Per store sample: train split (bool), "over"/"under", class, "train"/"test".
    mem, mem_se, priv : ndarray (N,)
        Memorization, its standard error and the privacy score per store sample.
    counts : analysis.kernels.stats.MemCounts
        Correctness counts over all done shadows (the theory's input).
    thr : float
        Singleton threshold.
    fprs : list of float
        FPRs of the TPR columns.
    n_targets : int
        Target shadows attacked.
    extras : bool
        Compute the paper's extras (:func:`_paper_extras`).
    extra_inputs : dict
        The one pass' ``fits``, ``ood`` and ``phi`` for the extras (cleared once used).
    progress : bool
        tqdm bars.
    t_start : float
        ``time.perf_counter()`` at the start of :func:`analyze` (``wall_s``, ``timings_s``).
    lira_variant : str
        "ours" or "reference".
    threads : int
        The analysis' threads (passed down; ``summary["threads"]``).
    budget : int, optional
        The memory budget in bytes; the pooled metrics, ROC curves and bootstrap tables sort at most
        a twelfth of it (4 KiB at least) at a time (``block_bytes`` of
        :func:`analysis.kernels.metrics.attack_metrics`, :func:`analysis.output.roc.write_roc` and
        :func:`analysis.output.tables.attack_table`; no result depends on it).
    """

    data: ShadowData
    lira: LiraResult
    out: Path
    store: str | Path
    train: np.ndarray
    group: np.ndarray
    label: np.ndarray
    split: np.ndarray
    mem: np.ndarray
    mem_se: np.ndarray
    priv: np.ndarray
    counts: MemCounts
    thr: float
    fprs: list[float]
    n_targets: int
    extras: bool
    extra_inputs: dict[str, Any]
    progress: bool
    t_start: float
    lira_variant: str = "ours"
    threads: int = 1
    budget: int | None = None


def _tabulate(inputs: ReportInputs, *, figures: FigureQueue, phase: _Phases) -> dict[str, Any]:
    """The rest of :func:`analyze`: tables, plots (drawn on ``figures``), ``scores.zarr``,
    ``analysis.json`` and the report."""
    data, lira, out, store = inputs.data, inputs.lira, inputs.out, inputs.store
    train, group, label, split = inputs.train, inputs.group, inputs.label, inputs.split
    mem, mem_se, priv, counts, thr, fprs = inputs.mem, inputs.mem_se, inputs.priv, inputs.counts, inputs.thr, inputs.fprs
    n_targets, extras, extra_inputs, progress = inputs.n_targets, inputs.extras, inputs.extra_inputs, inputs.progress
    t_start, lira_variant, threads = inputs.t_start, inputs.lira_variant, inputs.threads

    group_tr = group[train]
    lira_how = ("LiRA as the reference code scores it (lira_variant 'reference': medians, ddof 0, every other "
                "shadow truncated to the smallest per-sample count, see docs/lira-variants.md)"
                if lira_variant == "reference" else "LiRA: lira_variant 'ours'")
    rho = spearman(mem[train], priv[train])
    figures.submit(_plot_privacy_hist, out / "plots" / "privacy_score_hist.png", group_tr, priv[train])
    figures.submit(_plot_mem_vs_privacy, out / "plots" / "mem_vs_privacy.png", group_tr, mem[train], priv[train], rho)
    with phase("metrics"):
        # the pooled metrics, ROC curves and bootstrap tables sort a twelfth of the budget at a time
        block_bytes = None if inputs.budget is None else max(inputs.budget // 12, 4 << 10)
        attacks, per_target = _attack_tables(lira, group_tr, fprs, threads, block_bytes)
    accuracy = _accuracy_table(np.asarray(data.accuracy().values, dtype=np.float64))
    memo = _memorization_table(group_tr, mem[train], priv[train], thr)
    per_sample = pd.DataFrame({"sample": data.ds["sample"].values, "group": group, "split": split,
                               "label": label, "mem": mem, "mem_se": mem_se, "privacy_score": priv})

    extra: dict[str, Any] = {}
    if extras:
        with phase("paper_extras"):
            extra = _paper_extras(data, counts, lira, out, train=train, group=group, mem=mem, priv=priv, thr=thr,
                                  lira_how=lira_how,
                                  fprs=fprs, n_targets=n_targets, progress=progress, figures=figures, phase=phase,
                                  threads=threads, block_bytes=block_bytes, **extra_inputs)
        per_sample = per_sample.merge(extra.pop("per_sample"), on="sample", how="left")
    extra_inputs.clear()  # every shadow's phi (the sweep's input) is not needed any more
    release_freed_memory()
    # ROC curves (analysis.output.roc) on the figure thread; the scores are bound now (memory-mapped), as
    # lira.scores is replaced by scores.zarr's reader while the figures are still being drawn
    # "Under" is the random challenge set's samples: one panel, under the set's one name, when both exist
    sets_tr = {k: np.asarray(v, dtype=bool)[train] for k, v in extra.get("challenge_sets", {}).items()}
    roc_masks = {"All": np.ones(group_tr.size, dtype=bool),
                 **({} if "random" in sets_tr else {"Under": group_tr == "under"}), **sets_tr}
    figures.submit(write_roc, out, {a: (lira.member, lira.scores[a]) for a in lira.scores}, roc_masks, fprs,
                   block_bytes=block_bytes)

    # --- write ---------------------------------------------------------------------------------
    n_pairs = lira.member.size
    _write_table(out, "attacks", attacks,
                 f"Attacks ({', '.join(attacks.index)}) on {n_targets} target shadow(s), each against the other "
                 f"{data.n_shadows - 1} done shadows only (per-sample statistics less one partner per sample: balanced "
                 f"IN/OUT reference counts; Shokri: {lira.info.get('shokri', {}).get('k', 'k')}-fold cross-fitting "
                 f"over shadows; Yeom uses none); metrics on {n_pairs} "
                 f"pooled (target, train sample) pairs. All = train split, "
                 f"Under = under-represented group. {lira_how}.")
    per_view = pd.DataFrame(index=per_target.index)
    for c in metric_columns(fprs):
        per_view[c] = [f"{_fmt(m)} ± {_fmt(s)}" for m, s in zip(per_target[f"{c} mean"], per_target[f"{c} std"])]
    _write_table(out, "attacks_per_target", per_target,
                 f"Per-target metrics, mean ± std (ddof=1) across {n_targets} target shadow(s). A single target "
                 "has about N/2 negatives per column, so a TPR at an FPR below 2/N is a TPR at FPR 0; the pooled "
                 f"table (attacks.md) resolves low FPRs. {lira_how}.", per_view)
    _write_table(out, "accuracy", accuracy,
                 f"Shadow accuracy (%) over {data.n_shadows} done shadows: mean ± 1.96 std, and the range "
                 "holding 95% of shadows (2.5-97.5 percentiles).", _accuracy_md(accuracy))
    _write_table(out, "memorization", memo,
                 f"Train-split samples per group: Feldman-Zhang memorization, fraction above the singleton "
                 f"threshold {_fmt(thr)}, mean (finite) privacy score; rows are the groups (under = the random "
                 f"set, all = All: sample_sets.md). Spearman rho(mem, privacy) = {_fmt(rho['rho'])} "
                 f"(n = {rho['n']}); the OOD scores' rho: ood_correlations.md.")
    write_text(out / "per_sample.csv", per_sample.to_csv(index=False))

    summary = {
        "store": str(Path(store).resolve()),
        "spec_hash": data.spec_hash,
        "n_shadows_total": data.n_total,
        "n_shadows_done": data.n_shadows,
        "n_targets": n_targets,
        "target_shadows": lira.targets.tolist(),
        "n_train_samples": int(train.sum()),
        "n_pairs": int(n_pairs),
        "fpr": fprs,
        "fpr_labels": [fpr_label(f) for f in fprs],
        "singleton_threshold": thr,
        "lira_variant": lira_variant,
        "method": {"metrics": "pooled over (target, train sample) pairs; per-target mean/std alongside",
                   "references": "all other done shadows less one partner per sample (equal IN/OUT counts)",
                   "privacy_score": "query 0 phi, sample std (ddof=1)",
                   "memorization": "Feldman-Zhang, identity-query argmax, over all done shadows"},
        "attacks": attacks.to_dict(orient="index"),
        "attacks_per_target": per_target.to_dict(orient="index"),
        "n_neutral_scores": lira.n_neutral,
        "accuracy_percent": accuracy.to_dict(orient="index"),
        "memorization": memo.to_dict(orient="index"),
        "spearman_mem_privacy": rho,
        **extra.get("summary", {}),
        "wall_s": round(time.perf_counter() - t_start, 3),
    }
    with phase("scores_zarr"):
        write_scores(out, {"per_sample": per_sample, "lira": lira, "summary": summary}, threads=threads)
    # the returned scores are read back from scores.zarr (float32, as computed) on access
    lira.scores = StoredScores(out / "scores.zarr", lira.samples)
    with phase("figures_wait"):  # the figures still being drawn when everything else is done
        figures.wait()  # every figure written before analysis.json marks the analysis finished
    summary["timings_s"] = {**phase.seconds, "total": round(time.perf_counter() - t_start, 3)}
    summary["peak_rss_gib"] = {**phase.peak_rss_gib, "total": round(peak_rss_gib(), 3)}
    summary["phase_rss_gib"] = dict(phase.phase_rss_gib)
    summary["threads"] = threads  # of the timings (no result depends on it: tests/test_threads.py)
    write_text(out / "analysis.json", json.dumps(_jsonable(summary), indent=2, allow_nan=False) + "\n")
    report = write_report(out, store=store)  # reads analysis.json for its header
    return {"attacks": attacks, "attacks_per_target": per_target, "accuracy": accuracy, "memorization": memo,
            "per_sample": per_sample, "spearman": rho, "lira": lira, "summary": summary, "report": report,
            **{k: v for k, v in extra.items() if k != "summary"}}


def _paper_extras(data, counts, lira, out: Path, *, train: np.ndarray, group: np.ndarray, mem: np.ndarray,
                  priv: np.ndarray, thr: float, fprs: list[float], n_targets: int, progress: bool,
                  fits: Any = None, ood: dict[str, np.ndarray] | None = None,
                  phi: np.ndarray | None = None, figures: FigureQueue | None = None,
                  phase: _Phases | None = None, lira_how: str = "LiRA: lira_variant 'ours'",
                  threads: int = 1, memory_bytes: int | None = None,
                  block_bytes: int | None = None) -> dict[str, Any]:
    """The paper's further outputs; writes its tables and figures and returns their data.

    Challenge sets (random under-represented, subpopulation from shadow 0's features, singletons)
    with bootstrap intervals (Tables 2/3/5), Table 1/4, OOD scores and their correlations (Figs.
    1b, 5, 9, 10), Hellinger distances with the Eq. 8 check, the shadow-count sweep (Figs. 3, 7, 8)
    and the sample complexity against 1/mem and 1/H^2 (Corollary 1). ``fits``, ``ood`` and ``phi``
    come from the report's one pass (:class:`analysis.store_io.passes.PassResult`); without them they are
    read from the store. ``block_bytes``: the bootstrap tables' memory share (their sorted pairs
    wait in a scratch folder under ``out`` when larger; None: in memory).
    """
    under = group == "under"
    group_tr = group[train]
    sets = challenge_sets(group, train, mem, thr, store_features(data.ds), seed=0)
    ood = ood_scores_from_store(data, n_targets) if ood is None else ood
    ood_corr = ood_correlations(ood, priv, mem, {"train": train, "train under": train & under})
    figures = figures if figures is not None else FigureQueue(background=False)
    hm = sets["singletons"][train]
    for k, v in ood.items():  # drawn while the bootstrap tables are computed
        figures.submit(plot_ood_vs_privacy, out / "plots" / f"ood_{k}_vs_privacy", v[train], priv[train], group_tr,
                       name=k, highlight=hm, highlight_label="singletons")
        figures.submit(plot_mem_vs_ood, out / "plots" / f"mem_vs_ood_{k}", v[train], mem[train], group_tr, name=k,
                       highlight=hm, highlight_label="singletons")
    phase = phase or _Phases()
    with phase("paper_extras/bootstrap_tables"):
        challenge = {k: v[train] for k, v in sets.items()}
        kw = dict(fpr=0.001, n_boot=200, seed=0, block_bytes=block_bytes, spill_dir=out)
        client = pieces_client(lira.scores)
        if client is None:
            paper = attack_table(_LazyPairs(lira), challenge, threads=threads, **kw)
        else:  # one task per attack; their pools wait under out, which the workers share
            paper = bootstrap_as_tasks(lira, client, challenge, **kw)
    table1 = accuracy_table(data.accuracy(), dataset=str(data.spec.get("name", "store")),
                            n_over=int((train & ~under).sum()), n_under=int((train & under).sum()))
    subpop = {"subpopulation": sets["subpopulation"]} if "subpopulation" in sets else {}
    with phase("paper_extras/theory"):
        theory = theory_suite(data, counts, train=train, mem=mem, group=group, threshold=thr, plots=out / "plots",
                              fprs=fprs, n_targets=min(n_targets, 64), progress=progress, extra_masks=subpop,
                              fits=fits, phi=phi, figures=figures, threads=threads, memory_bytes=memory_bytes)

    write_table(out / "tables", "paper_attacks", paper, format_attack_table(paper),
                caption=f"Pooled AUROC and TPR@0.1% FPR over {n_targets} targets with 95% bootstrap intervals "
                        f"({paper.attrs['n_boot']} replicates over targets and samples). All = train split; "
                        "Under-represented = the row's challenge set (one store: the 'All' column is the same "
                        "for every challenge set of an attack). "
                        + " ".join(f"{k} = {set_definition(k, thr)}." for k in sets)
                        + _subpopulation_sentence({k: v & train for k, v in sets.items()}, mem, data.label)
                        + f" {lira_how}.")
    named = {"All": train, **sets, "highly memorized": highly_memorized(mem, thr, train=train)}
    _write_table(out, "sample_sets", sample_set_table({k: v[train] for k, v in named.items()}, group_tr, thr),
                 "Every set of samples the tables and figures name, one name each: size, how it relates to the "
                 "other sets (subsets and supersets) and its definition.")
    write_table(out / "tables", "paper_accuracy", table1, format_accuracy_table(table1),
                caption=f"Accuracy (%) over {data.n_shadows} shadows, mean ± 1.96 sd (paper Table 1/4).")
    write_table(out / "tables", "ood_correlations", ood_corr, caption=_ood_caption(ood_corr, mem, priv, train, under))
    for name, (df, caption) in theory_tables(theory).items():
        _write_table(out, name, df, caption)
    if not theory["sweep"].empty:
        write_text(out / "tables" / "sweep_raw.csv", theory["sweep"].to_csv(index=False))

    per_sample = pd.DataFrame({"sample": data.ds["sample"].values,
                               **{f"in_{k}": v for k, v in sets.items()},
                               **{f"ood_{k}": v for k, v in ood.items()}})
    h2 = theory["theory"][["sample", "H2_gauss_uni", "H2_gauss_multi", "H2_bernoulli", "violation"]]
    per_sample = per_sample.merge(h2.rename(columns={"violation": "eq8_violation"}), on="sample", how="left")
    return {
        "per_sample": per_sample, "paper_attacks": paper, "paper_accuracy": table1, "ood_correlations": ood_corr,
        "challenge_sets": sets, "theory": theory,
        "summary": {
            "challenge_sets": {k: int(v.sum()) for k, v in sets.items()},
            "ood_correlations": {f"{a}/{b}": r for (a, b), r in ood_corr.to_dict(orient="index").items()},
            "paper_attacks": {f"{a}/{c}": r for (a, c), r in paper.to_dict(orient="index").items()},
            "theory": theory_json(theory),
        },
    }


def _ood_caption(corr: pd.DataFrame, mem: np.ndarray, priv: np.ndarray, train: np.ndarray, under: np.ndarray) -> str:
    """The OOD table's caption, with the §5 reading of the demo: whether an OOD score out-ranking mem
    on All comes from mem's ties (a property of the data and of the 0/1 estimate) or not."""
    rho_all = spearman(mem[train], priv[train])
    rho_u = spearman(mem[train & under], priv[train & under])
    m = mem[train]
    zero = float(np.mean(m[np.isfinite(m)] == 0)) if np.isfinite(m).any() else float("nan")
    text = ("Spearman rho (two-sided p) of each OOD score (mean over the target shadows, IN and OUT alike) with the "
            "privacy score and with memorization; 'train' = All, 'train under' = random. For comparison, "
            f"Spearman(mem, privacy) = {_fmt(rho_all['rho'])} on All and {_fmt(rho_u['rho'])} on random.")
    msp_all = corr["rho privacy"].get(("msp", "train"), float("nan"))
    msp_u = corr["rho privacy"].get(("msp", "train under"), float("nan"))
    if np.isfinite(msp_all) and np.isfinite(rho_all["rho"]) and msp_all > rho_all["rho"]:
        text += (f" MSP out-ranks mem on All ({_fmt(msp_all)} > {_fmt(rho_all['rho'])}) because "
                 f"{_fmt(100 * zero)}% of the train samples have mem exactly 0 (as often right when IN as when OUT, "
                 "mostly always right): one tie that caps mem's rank correlation while MSP and the privacy score order "
                 "those samples by confidence; this is a property of the data (mostly easy D_O samples) and of "
                 "the 0/1-correctness estimate of mem, not a defect"
                 + (f", and on random, where mem is spread, mem leads ({_fmt(rho_u['rho'])} vs MSP {_fmt(msp_u)})."
                    if np.isfinite(msp_u) and rho_u["rho"] > msp_u else "."))
    return text


def _subpopulation_sentence(sets: Mapping[str, np.ndarray], mem: np.ndarray, label: np.ndarray) -> str:
    """One sentence on why the subpopulation is (or is not) less exposed than random: its mean mem
    against random's, and how much of it is one class (the feature clusters tend to follow classes)."""
    if "subpopulation" not in sets or not sets["subpopulation"].any():
        return ""
    sub, rnd = sets["subpopulation"], sets["random"]
    m_sub, m_rnd = float(np.nanmean(mem[sub])), float(np.nanmean(mem[rnd]))
    lab = np.asarray(label)[sub]
    vals, cnt = np.unique(lab, return_counts=True)
    top = int(np.argmax(cnt))
    cls = f"{_fmt(100 * cnt[top] / lab.size)}% of it is label {vals[top]}"
    if m_sub < m_rnd:
        return (f" The subpopulation ({int(sub.sum())} samples; {cls}) has mean mem {_fmt(m_sub)} against "
                f"{_fmt(m_rnd)} for random, so a lower attack success on it than on random is a property of the "
                "data (its feature cluster is an easily learnt part of D_U), not a defect: exposure follows "
                "memorization, not cluster membership.")
    return (f" The subpopulation ({int(sub.sum())} samples; {cls}) has mean mem {_fmt(m_sub)} against "
            f"{_fmt(m_rnd)} for random.")

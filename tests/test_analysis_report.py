"""``analyze`` end to end on a small synthetic store: files, tables, plots, JSON."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import analysis.output.report as report
from analysis.attacks import ATTACKS
from analysis.store_io.load import AnalysisError
from analysis.output.html_report import incomplete_line
from analysis.store_io.numfmt import max_significant_digits
from analysis.output.report import analyze, format_table, terminal_lines
from analysis.tools.synthetic_store import write_synthetic_store
from mia_hpc.contract.store import SUBSETS

ROWS = list(ATTACKS)
LIRA_ROWS = ["lira-online", "lira-offline", "lira-fixed-variance"]
FILES = ["tables/attacks.csv", "tables/attacks.md", "tables/attacks_per_target.csv", "tables/attacks_per_target.md",
         "tables/accuracy.csv", "tables/accuracy.md", "tables/memorization.csv", "tables/memorization.md",
         "per_sample.csv", "plots/privacy_score_hist.png", "plots/mem_vs_privacy.png", "analysis.json"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("store") / "store.zarr"
    # Only the under-represented group is separated; offsets low enough that some under samples are
    # misclassified when OUT and right when IN (memorized).
    info = write_synthetic_store(path, n_shadows=16, n_samples=400, n_test=100, n_queries=2, seed=5,
                                 separation={"over": 0.0, "under": 4.0}, frac_under=0.25, offset_mean=0.0,
                                 offset_std=2.0, n_done=14, analysis={"targets": 0, "fpr": [0.001, 0.01]})
    return path, info


@pytest.fixture(scope="module")
def result(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("analysis")
    return out, analyze(store[0], out, progress=False)


def test_writes_every_file(result):
    out, _ = result
    for f in FILES:
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    leftovers = [p for p in out.rglob(".*")]
    assert not leftovers, f"temporary files left behind: {leftovers}"


def test_attack_table(result):
    out, res = result
    df = res["attacks"]
    assert list(df.index) == ROWS
    assert list(df.columns) == ["AUROC All", "AUROC Under", "TPR@0.1% All", "TPR@0.1% Under",
                                "TPR@1% All", "TPR@1% Under"]
    # only "under" is separated: the attack is better there than on the whole train split
    assert (df["AUROC Under"] > df["AUROC All"] + 0.1).all()
    assert (df.loc[LIRA_ROWS, "AUROC Under"] > 0.95).all()  # per-sample attacks; global ones score lower
    assert ((df.values >= 0) & (df.values <= 1)).all()
    csv = pd.read_csv(out / "tables" / "attacks.csv", index_col=0)
    np.testing.assert_allclose(csv.values, df.values, rtol=1e-12)
    md = (out / "tables" / "attacks.md").read_text()
    assert all(r in md for r in ROWS) and "| attack | AUROC All |" in md
    per = res["attacks_per_target"]
    assert list(per.index) == ROWS and "AUROC Under mean" in per.columns and "AUROC Under std" in per.columns
    # pooled and per-target AUROC agree closely (same scores, different averaging)
    assert np.allclose(per["AUROC All mean"], df["AUROC All"], atol=0.03)
    assert "±" in (out / "tables" / "attacks_per_target.md").read_text()


def test_accuracy_and_memorization_tables(result, store):
    out, res = result
    acc = res["accuracy"]
    assert list(acc.index) == list(SUBSETS)
    assert (acc["n_shadows"] == 14).all()  # the done shadows only
    assert ((acc["mean"] > 0) & (acc["mean"] <= 100)).all()
    assert (acc["p2.5"] <= acc["mean"]).all() and (acc["mean"] <= acc["p97.5"]).all()
    memo = res["memorization"]
    assert list(memo.index) == ["over", "under", "all"]
    assert list(memo.columns) == ["count", "mean mem", "frac mem > 0.8", "n mem > 0.8", "mean privacy score"]
    assert memo.loc["over", "count"] == 300 and memo.loc["under", "count"] == 100
    # IN shifts phi of "under" samples only: they are memorized and vulnerable, "over" ones are not
    assert memo.loc["under", "mean mem"] > memo.loc["over", "mean mem"] + 0.1
    assert abs(memo.loc["over", "mean mem"]) < 0.05
    assert memo.loc["under", "mean privacy score"] > 2 * memo.loc["over", "mean privacy score"]
    per = pd.read_csv(out / "per_sample.csv")
    assert list(per.columns[:7]) == ["sample", "group", "split", "label", "mem", "mem_se", "privacy_score"]
    # the paper's extras per sample: challenge-set flags, OOD scores, Hellinger distances, Eq. 8 check
    assert {"in_random", "in_singletons", "ood_msp", "ood_energy", "H2_gauss_uni", "H2_bernoulli",
            "eq8_violation"} <= set(per.columns)
    assert per.loc[~_test_split(per), "H2_bernoulli"].notna().all()
    assert len(per) == 500
    test = per["split"] == "test"
    assert per.loc[test, "mem"].isna().all() and per.loc[~test, "mem"].notna().all()
    assert per.loc[~test, "privacy_score"].notna().all()


def _test_split(per: pd.DataFrame) -> pd.Series:
    return per["split"] == "test"


def test_plots_are_valid_pngs(result):
    out, _ = result
    for name in ("privacy_score_hist.png", "mem_vs_privacy.png"):
        with Image.open(out / "plots" / name) as im:
            assert im.format == "PNG" and im.size[0] > 100 and im.size[1] > 100
            im.verify()


def test_json_summary(result, store):
    out, res = result
    summary = json.loads((out / "analysis.json").read_text())  # strict JSON: no NaN
    assert summary["spec_hash"] == store[1]["spec_hash"]
    assert summary["n_shadows_done"] == 14 and summary["n_shadows_total"] == 16 and summary["n_targets"] == 14
    assert summary["n_pairs"] == 14 * 400
    assert set(summary["attacks"]) == set(ROWS)
    assert summary["attacks"]["lira-online"]["AUROC Under"] == pytest.approx(
        res["attacks"].loc["lira-online", "AUROC Under"])
    rho = summary["spearman_mem_privacy"]
    # memorized ("under") samples are the vulnerable ones: a clear positive rank correlation
    assert rho["n"] == 400 and rho["rho"] > 0.1 and rho["p"] < 0.01


def test_timings_name_every_phase_and_add_up(result):
    # analysis.json says where the run's time went: every phase, parts ("a/b") within their phase,
    # the non-overlapping phases within the total
    out, res = result
    t = json.loads((out / "analysis.json").read_text())["timings_s"]
    top = {"open", "shokri_fit", "pass", "lira", "attacks", "metrics", "paper_extras", "scores_zarr", "figures_wait"}
    assert top | {"paper_extras/bootstrap_tables", "paper_extras/theory", "total"} == set(t)
    assert all(v >= 0 for v in t.values())
    assert sum(t[k] for k in top) <= t["total"] + 1e-6
    assert t["paper_extras/bootstrap_tables"] + t["paper_extras/theory"] <= t["paper_extras"] + 1e-6
    assert t["total"] >= res["summary"]["wall_s"] - 1e-6
    # and its memory: the cumulative peak at each phase's end (non-decreasing in phase order) and
    # each phase's own peak, for the same phases
    summary = json.loads((out / "analysis.json").read_text())
    peak, own = summary["peak_rss_gib"], summary["phase_rss_gib"]
    assert set(peak) == set(t) and set(own) == set(t) - {"total"}
    order = [k for k in ("open", "shokri_fit", "pass", "lira", "attacks", "metrics", "paper_extras",
                         "scores_zarr", "figures_wait")]
    assert all(peak[a] <= peak[b] for a, b in zip(order, order[1:])) and peak["total"] >= peak["figures_wait"]
    assert all(0 < own[k] <= peak["total"] + 0.01 for k in own)


def test_overrides_and_format_table(store, tmp_path):
    res = analyze(store[0], tmp_path, targets=3, fpr=[0.05], progress=True)
    assert list(res["attacks"].columns) == ["AUROC All", "AUROC Under", "TPR@5% All", "TPR@5% Under"]
    assert res["summary"]["n_targets"] == 3 and res["lira"].scores["lira-online"].shape == (3, 400)
    text = format_table(res["attacks"])
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["attack", "AUROC", "All"] and len(lines) == 2 + len(ROWS)
    assert all(r in text for r in ROWS)
    with pytest.raises(ValueError, match="fpr"):
        analyze(store[0], tmp_path, fpr=[1.5], progress=False)


def test_crash_leaves_no_complete_looking_output(store, tmp_path, monkeypatch):
    analyze(store[0], tmp_path, targets=2, progress=False)
    assert (tmp_path / "analysis.json").is_file()

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(report, "_plot_mem_vs_privacy", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        analyze(store[0], tmp_path, targets=2, progress=False)
    # the completion marker of the previous run is gone, and no temporary file remains
    assert not (tmp_path / "analysis.json").exists()
    assert not list(tmp_path.rglob(".*"))


def test_too_few_done_shadows(tmp_path):
    write_synthetic_store(tmp_path / "s", n_shadows=4, n_samples=40, n_done=1, frac_under=0.25)
    with pytest.raises(AnalysisError, match="at least 2"):
        analyze(tmp_path / "s", tmp_path / "out", progress=False)


def test_tables_are_computed_from_the_returned_float32_scores(result):
    # The scores analyze returns are read back from scores.zarr; recomputing the metrics from them
    # gives the attack table to the bit, and no scratch file of the spilled scores is left.
    from analysis.kernels.metrics import attack_metrics
    from analysis.output.scores import StoredScores

    out, res = result
    lira = res["lira"]
    assert isinstance(lira.scores, StoredScores)
    ps = res["per_sample"]
    under = (ps["group"].values == "under")[ps["split"].values == "train"]
    masks = {"All": np.ones(under.size, dtype=bool), "Under": under}
    table = res["attacks"]
    assert list(lira.scores) == list(table.index)
    for a in lira.scores:
        s = lira.scores[a]
        assert s.dtype == np.float32 and s.shape == lira.member.shape
        pooled, _, _ = attack_metrics(lira.member, s, masks, [0.001, 0.01])
        for col in table.columns:
            assert pooled[col] == table.loc[a, col] or (np.isnan(pooled[col]) and np.isnan(table.loc[a, col]))
    assert not list(Path(out).rglob(".scores-spill-*"))


def test_spilled_scores_hold_one_file_per_attack(tmp_path):
    from analysis.store_io.spill import SpilledScores

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(3, 5)), rng.normal(size=(3, 5)).astype(np.float32)
    with SpilledScores(tmp_path) as sp:
        sp["a"], sp["b"] = a, b
        assert list(sp) == ["a", "b"] and len(list(sp.dir.iterdir())) == 2
        np.testing.assert_array_equal(sp["a"], a.astype(np.float32))
        assert sp["a"].dtype == np.float32
        sp.move_to_end("a")
        assert list(sp) == ["b", "a"]
        sp["b"] = a  # overwritten in place
        np.testing.assert_array_equal(sp["b"], a.astype(np.float32))
        del sp["a"]
        assert list(sp) == ["b"] and len(list(sp.dir.iterdir())) == 1
        with pytest.raises(KeyError):
            sp["a"]
        d = sp.dir
    assert not d.exists()


def test_figure_queue_runs_calls_in_order_on_one_thread_and_reraises():
    import threading

    from analysis.store_io.figures import FigureQueue

    seen = []
    with FigureQueue() as q:
        for i in range(5):
            q.submit(lambda i=i: seen.append((i, threading.current_thread().name)))
        q.wait()
        assert [i for i, _ in seen] == list(range(5))
        names = {name for _, name in seen}
        assert len(names) == 1 and threading.current_thread().name not in names  # one background thread

        def boom():
            raise ValueError("bad figure")

        q.submit(boom)
        with pytest.raises(ValueError, match="bad figure"):
            q.wait()
    inline = []
    FigureQueue(background=False).submit(lambda: inline.append(threading.current_thread().name))
    assert inline == [threading.current_thread().name]


def _page_text(html: str) -> str:
    """The report's text: embedded images dropped."""
    return re.sub(r'src="data:[^"]*"', "", html)


def test_report_numbers_have_at_most_four_significant_digits(result):
    # Every number a person reads (Markdown tables and their captions, the HTML page, the terminal)
    # has at most 4 significant digits; integer counts are exempt. The CSVs keep full precision.
    out, res = result
    texts = {p.name: p.read_text() for p in sorted((out / "tables").glob("*.md"))}
    assert {"attacks.md", "paper_attacks.md", "theory.md", "ood_correlations.md", "sample_sets.md"} <= set(texts)
    texts["index.html"] = _page_text((out / "report" / "index.html").read_text())
    texts["terminal"] = "\n".join(terminal_lines(res))
    for name, text in texts.items():
        n, number = max_significant_digits(text)
        assert n <= 4, f"{name}: {number} has {n} significant digits"
    csv = pd.read_csv(out / "tables" / "attacks.csv", index_col=0)
    assert max(max_significant_digits(repr(float(v)))[0] for v in csv.to_numpy().ravel()) > 4
    # p-values in scientific notation, in the Markdown and in the page
    md = (out / "tables" / "ood_correlations.md").read_text()
    rows = [ln.split("|")[1:-1] for ln in md.splitlines() if ln.startswith("| msp") or ln.startswith("| energy")]
    head = [c.strip() for c in md.splitlines()[[i for i, ln in enumerate(md.splitlines()) if ln.startswith("|")][0]]
            .split("|")[1:-1]]
    p_cols = [i for i, c in enumerate(head) if c.startswith("p ")]
    assert rows and p_cols
    for r in rows:
        for i in p_cols:
            assert re.fullmatch(r"\d\.\d\de[-+]\d+|N/A", r[i].strip()), r


def test_store_with_shadows_not_done_says_so_first(result):
    # the fixture's store has 14 of its 16 shadows done
    out, res = result
    lines = terminal_lines(res)
    assert lines[0].startswith("14 of 16 shadows done")
    body = (out / "report" / "index.html").read_text().split("<body>", 1)[1]
    first = next(t for t in (x.strip() for x in re.split(r"<[^>]+>", body)) if t)
    assert first.startswith("14 of 16 shadows done")
    assert incomplete_line({"n_shadows_done": 16, "n_shadows_total": 16}) is None


def test_terminal_ends_with_the_real_report_path(result):
    out, res = result
    last = terminal_lines(res)[-1]
    assert last == f"report: {out / 'report' / 'index.html'}"
    assert Path(last.split(": ", 1)[1]).is_file()


def test_analyze_cli_prints_the_report_path_last(store, tmp_path, capsys):
    from mia_hpc.cli import main

    out = tmp_path / "an"
    assert main(["analyze", str(store[0]), "--out", str(out), "--quick", "--targets", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("14 of 16 shadows done")
    assert lines[-1] == f"report: {out / 'report' / 'index.html'}" and (out / "report" / "index.html").is_file()


def test_one_name_per_sample_set(result):
    # Every set named in the tables is a registered set, and the sample_sets table says how the
    # look-alikes differ: highly memorized = singletons plus the over-represented samples above the threshold.
    from analysis.studies.groups import SAMPLE_SETS

    out, res = result
    sets = pd.read_csv(out / "tables" / "sample_sets.csv", index_col=0)
    assert list(sets.index) == [k for k in SAMPLE_SETS if k in sets.index]
    ps = res["per_sample"]
    tr = ps[ps["split"] == "train"]
    hm = tr["mem"] > 0.8
    assert sets.loc["highly memorized", "n"] == int(hm.sum())
    assert sets.loc["singletons", "n"] == int((hm & (tr["group"] == "under")).sum())
    assert sets.loc["random", "n"] == int((tr["group"] == "under").sum()) and sets.loc["All", "n"] == len(tr)
    n_over_hm = int((hm & (tr["group"] == "over")).sum())
    assert ("the same samples as singletons" if n_over_hm == 0 else f"singletons plus {n_over_hm}") in \
        sets.loc["highly memorized", "relation"]
    named = set(res["paper_attacks"].index.get_level_values("challenge set"))
    named |= set(res["theory"]["theory_summary"].index)
    assert named <= set(SAMPLE_SETS), named - set(SAMPLE_SETS)

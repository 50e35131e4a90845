"""ROC curves (analysis.output.roc): the same pooled curves the tables report, downsampled without losing area.

Known answers by hand, the downsampling's guarantees against the tables' own metrics, and an
analysis of a real synthetic store whose written ``roc/roc.csv`` must integrate to the written
tables' AUROC and read their TPR@0.1% FPR.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis.kernels.metrics import attack_metrics, tpr_at_fpr
from analysis.output.roc import ROC_CSV, corners, curves_frame, downsample, plot_roc, pooled_curve, roc_curves, write_roc_csv


def test_pooled_curve_known_answer():
    # scores 0.9 (member), 0.8 (non), 0.7 (member), 0.1 (non): the ROC walks (0,0) (0,.5) (.5,.5)
    # (.5,1) (1,1); sklearn drops none of these corners. Area = .5*.5 + .5*1 = 0.75.
    member = np.array([[True, False], [True, False]])
    score = np.array([[0.9, 0.8], [0.7, 0.1]])
    f, t, thr = pooled_curve(member, score)
    np.testing.assert_array_equal(f, [0, 0, 0.5, 0.5, 1])
    np.testing.assert_array_equal(t, [0, 0.5, 0.5, 1, 1])
    np.testing.assert_array_equal(thr[1:], [0.9, 0.8, 0.7, 0.1])
    assert np.trapezoid(t, f) == 0.75
    # a mask pools only its columns (column 1 of every row goes): 5.0 (non) above the members 0.9,
    # 0.75, 0.7, so the curve is (0,0) (1,0) (1,1), the two collinear points between dropped
    f, t, _ = pooled_curve(np.array([[True, False, False], [True, False, True]]),
                           np.array([[0.9, 0.8, 5.0], [0.7, 0.1, 0.75]]), np.array([True, False, True]))
    np.testing.assert_array_equal(f, [0, 1, 1])
    np.testing.assert_array_equal(t, [0, 0, 1])


def test_downsample_drops_only_collinear_points_when_exact():
    # from FPR 0.2 on the points lie on one line: its interior points go (0.2 is a corner), the area stays
    f = np.array([0.0, 0.005, 0.01, 0.2, 0.4, 0.6, 0.8, 1.0])
    t = np.array([0.0, 0.1, 0.2, 0.36, 0.52, 0.68, 0.84, 1.0])
    keep = downsample(f, t, dense_fpr=0.01, area_tol=1e-15, per_decade=1)
    np.testing.assert_array_equal(keep, [0, 1, 2, 3, 7])
    assert np.trapezoid(t[keep], f[keep]) == pytest.approx(np.trapezoid(t, f), abs=1e-15)
    # a corner (not collinear) must stay when no area change is allowed
    t2 = t.copy()
    t2[4] = 0.6
    keep2 = downsample(f, t2, dense_fpr=0.01, area_tol=1e-15, per_decade=1)
    assert 4 in keep2
    assert np.trapezoid(t2[keep2], f[keep2]) == pytest.approx(np.trapezoid(t2, f), abs=1e-15)


@pytest.fixture(scope="module")
def scored():
    rng = np.random.default_rng(3)
    t, n = 40, 500
    member = rng.random((t, n)) < 0.5
    under = np.arange(n) < 100
    pairs = {"strong": (member, (rng.normal(size=(t, n)) + member * np.where(under, 2.5, 0.4)).astype(np.float32)),
             "weak": (member, rng.normal(size=(t, n)) + member * 0.2)}
    pairs["tied"] = (member, np.round(pairs["strong"][1], 1))  # many ties: diagonal ROC segments
    masks = {"All": np.ones(n, dtype=bool), "Under": under, "singletons": np.arange(n) % 50 == 0}
    return pairs, masks


def test_curves_match_the_tables_metrics(scored):
    pairs, masks = scored
    fprs = [0.001, 0.01]
    curves = roc_curves(pairs, masks, fprs)
    assert [(c.attack, c.column) for c in curves] == [(a, m) for a in pairs for m in masks]
    for c in curves:
        member, score = pairs[c.attack]
        pooled, _, _ = attack_metrics(member, score, {c.column: masks[c.column]}, fprs)
        full_f, full_t, _ = pooled_curve(member, score, masks[c.column])
        # the written (downsampled) points integrate to the table's AUROC within the 1e-9 budget
        assert abs(np.trapezoid(c.tpr, c.fpr) - pooled[f"AUROC {c.column}"]) <= 1e-9 + 1e-12, c
        assert c.auroc == pytest.approx(pooled[f"AUROC {c.column}"], abs=1e-12)
        for f in fprs:
            assert tpr_at_fpr(c.fpr, c.tpr, f) == pooled[f"TPR@{100 * f:g}% {c.column}"], (c.attack, c.column, f)
        # every corner of the low-FPR end is written (the interior points of straight vertical and
        # horizontal runs go), and every written point is a point of the full curve
        low = (full_f <= 0.01) & corners(full_f, full_t)
        np.testing.assert_array_equal(c.fpr[c.fpr <= 0.01], full_f[low])
        np.testing.assert_array_equal(c.tpr[c.fpr <= 0.01], full_t[low])
        assert set(zip(c.fpr.tolist(), c.tpr.tolist())) <= set(zip(full_f.tolist(), full_t.tolist()))
        assert c.fpr[0] == 0 and c.tpr[0] == 0 and c.fpr[-1] == 1 and c.tpr[-1] == 1
        assert np.all(np.diff(c.fpr) >= 0) and np.all(np.diff(c.tpr) >= 0)
    big = [c for c in curves if c.column == "All" and c.attack != "tied"]
    assert all(len(c.fpr) < c.n_full / 3 for c in big), [(len(c.fpr), c.n_full) for c in big]


def test_written_csv_round_trips(scored, tmp_path):
    pairs, masks = scored
    curves = roc_curves(pairs, masks, [0.001])
    path = write_roc_csv(curves, tmp_path / ROC_CSV)
    df = pd.read_csv(path)
    assert list(df.columns) == ["attack", "column", "fpr", "tpr", "threshold"]
    for c in curves:
        part = df[(df["attack"] == c.attack) & (df["column"] == c.column)]
        np.testing.assert_array_equal(part["fpr"].to_numpy(), c.fpr)  # float64 exactly
        np.testing.assert_array_equal(part["tpr"].to_numpy(), c.tpr)
        assert np.isinf(part["threshold"].iloc[0])  # the (0, 0) point: nothing called a member
    files = plot_roc(curves, tmp_path / "plots" / "roc.png", fprs=[0.001])
    assert [p.suffix for p in files] == [".png", ".pdf"] and all(p.stat().st_size > 10_000 for p in files)


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    from analysis.output.report import analyze
    from analysis.tools.synthetic_store import write_synthetic_store

    root = tmp_path_factory.mktemp("roc")
    store = root / "store.zarr"
    write_synthetic_store(store, n_shadows=10, n_samples=240, n_test=40, n_queries=2, seed=7,
                          separation={"over": 0.3, "under": 4.0}, frac_under=0.25, offset_mean=0.0,
                          analysis={"targets": 0, "fpr": [0.001, 0.01]})
    out = root / "analysis"
    analyze(store, out, progress=False)
    return out


def test_analysis_writes_curves_equal_to_its_tables(analysed):
    out = analysed
    roc = pd.read_csv(out / ROC_CSV)
    attacks = pd.read_csv(out / "tables" / "attacks.csv", index_col=0)
    paper = pd.read_csv(out / "tables" / "paper_attacks.csv", index_col=[0, 1])
    sets = sorted(set(paper.index.get_level_values(1)))
    assert set(roc["attack"]) == set(attacks.index)
    assert {"All", "random"} <= set(roc["column"]) <= {"All", *sets}  # "Under" is random's samples: one panel
    checked = 0
    for (attack, column), part in roc.groupby(["attack", "column"], sort=False):
        f, t = part["fpr"].to_numpy(), part["tpr"].to_numpy()
        if column in ("All", "Under"):
            auroc, tpr = attacks.loc[attack, f"AUROC {column}"], attacks.loc[attack, f"TPR@0.1% {column}"]
        else:  # a challenge set: the "Under-represented" column of its paper_attacks row
            auroc, tpr = paper.loc[(attack, column), "AUROC Under"], paper.loc[(attack, column), "TPR@0.1% Under"]
        assert abs(np.trapezoid(t, f) - auroc) <= 1e-9 + 1e-12, (attack, column)
        assert tpr_at_fpr(f, t, 0.001) == pytest.approx(tpr, abs=1e-12), (attack, column)
        checked += 1
    assert checked >= len(attacks) * 3
    assert (out / "plots" / "roc.png").stat().st_size > 10_000 and (out / "plots" / "roc.pdf").is_file()


def test_corners_known_answer():
    # up 3 (tied member runs of 1, 2, 1 pairs: sklearn keeps each step), across 3, up 2, across 1:
    # only the runs' ends stay, and the first and last points
    f = np.array([0, 0, 0, 0, 1, 2, 3, 3, 3, 4], dtype=float) / 4
    t = np.array([0, 1, 3, 4, 4, 4, 4, 5, 6, 6], dtype=float) / 6
    np.testing.assert_array_equal(np.flatnonzero(corners(f, t)), [0, 3, 6, 8, 9])
    np.testing.assert_array_equal(downsample(f, t, dense_fpr=1.0), [0, 3, 6, 8, 9])
    assert corners(f[:2], t[:2]).all() and corners(f[:0], t[:0]).size == 0
    # a diagonal step between two vertical runs is no straight run: its ends stay
    f2 = np.array([0, 0, 0, 0.5, 0.5, 1])
    t2 = np.array([0, 0.2, 0.4, 0.6, 0.8, 1])
    np.testing.assert_array_equal(np.flatnonzero(corners(f2, t2)), [0, 2, 3, 4, 5])


def _tied_runs(seed=5, t=60, n=500):
    """Pairs whose top scores are member-only ties of varying counts (vertical runs that
    drop_intermediate keeps step by step) and whose bottom ones are non-member-only ties."""
    rng = np.random.default_rng(seed)
    member = rng.random((t, n)) < 0.5
    score = rng.normal(size=(t, n)) + np.where(member, 1.5, 0.0)
    score = np.round(score, 2).astype(np.float32)
    return member, score


def assert_on_polyline(full_f, full_t, f, t, upto):
    """Every point of the full curve with FPR <= upto lies on a vertical or horizontal segment of the
    written curve (f, t): only the interiors of straight runs were left out, never a corner."""
    where = {p: i for i, p in enumerate(zip(full_f.tolist(), full_t.tolist()))}
    idx = [where[p] for p in zip(f.tolist(), t.tolist())]  # every written point is a full-curve point
    assert idx == sorted(idx) and idx[0] == 0
    for a, b in zip(idx, idx[1:]):
        if full_f[b] > upto:
            break
        mid = slice(a + 1, b)
        vertical = np.all(full_f[mid] == full_f[a]) and full_f[b] == full_f[a]
        horizontal = np.all(full_t[mid] == full_t[a]) and full_t[b] == full_t[a]
        assert b == a + 1 or vertical or horizontal, (a, b, full_f[a:b + 1], full_t[a:b + 1])


@pytest.mark.parametrize("dense_fpr", [0.01, 1.0])
def test_ties_keep_every_corner(dense_fpr):
    from analysis.output.roc import DENSE_NEGATIVES

    member, score = _tied_runs()
    masks = {"All": np.ones(score.shape[1], dtype=bool)}
    full_f, full_t, _ = pooled_curve(member, score)
    (c,) = roc_curves({"a": (member, score)}, masks, [0.001, 0.01], dense_fpr=dense_fpr)
    upto = min(dense_fpr, DENSE_NEGATIVES / c.n_neg)  # every corner is kept up to here
    inner = ~corners(full_f, full_t)
    assert inner[full_f <= upto].sum() > 50  # the data has long straight runs to thin
    assert c.fpr.size <= full_f.size - inner.sum()
    assert_on_polyline(full_f, full_t, c.fpr, c.tpr, upto)
    # no area and no TPR@f lost to the thinning, at every FPR the full curve reaches in the dense end
    assert abs(np.trapezoid(c.tpr, c.fpr) - c.auroc) <= 1e-9
    for x in np.unique(full_f[full_f <= upto]):
        assert tpr_at_fpr(c.fpr, c.tpr, x) == tpr_at_fpr(full_f, full_t, x), x


def test_csv_is_the_one_frame_bytes(scored, tmp_path):
    # written a curve at a time, the file is the one DataFrame of all curves, byte for byte
    pairs, masks = scored
    curves = roc_curves(pairs, masks, [0.001])
    for some in (curves, curves[:1], []):
        path = write_roc_csv(some, tmp_path / "x" / "roc.csv")
        frame = curves_frame(some).to_csv(index=False, float_format="%.17g")
        assert path.read_bytes() == frame.encode("utf-8")
    assert not [p for p in (tmp_path / "x").iterdir() if p.name != "roc.csv"]  # no temporary left

"""Shadow-count sweep (analysis.studies.sweep) and sample complexity (analysis.studies.complexity)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

from analysis.studies.complexity import plot_complexity, sample_complexity, shadows_needed
from analysis.attacks.lira import PER_SAMPLE_VARIANCE_MIN, lira_scores, run_lira, sd_floor
from analysis.store_io.load import open_shadows
from analysis.kernels.metrics import attack_metrics
from analysis.kernels.stats import GaussianSums, gaussian_sums, partners
from analysis.studies.sweep import (default_m_grid, plot_sweep, shadow_sweep, summarize_sweep, sweep_figure,
                            sweep_from_store, sweep_scores)
from analysis.tools.synthetic_store import synthetic_keep, write_synthetic_store

ATT = ("lira-online", "lira-fixed-variance", "lira-offline")


def _phi(m=12, n=25, q=2, seed=0):
    rng = np.random.default_rng(seed)
    keep = synthetic_keep(m, n, 0, rng)
    phi = 300.0 + rng.normal(0, 2, size=(1, n, 1)) + 1.5 * keep[..., None] + rng.normal(size=(m, n, q))
    return phi, keep


def test_default_grid():
    assert default_m_grid(31) == [1, 2, 4, 8, 16, 31]
    assert default_m_grid(8) == [1, 2, 4, 8]
    assert default_m_grid(1) == [1] and default_m_grid(0) == []


def test_sweep_scores_equal_an_explicit_reference_selection():
    # the prefix-sum shortcut must equal: per (target, sample), take the first m IN and first m OUT
    # shadows in the order (target skipped), fit, score
    phi, keep = _phi()
    m_tot, n, q = phi.shape
    ms = np.array([1, 2, 3, 5])
    order = np.random.default_rng(3).permutation(m_tot)
    shift = phi.mean(0)
    floor = sd_floor(gaussian_sums(phi, keep, shift))
    got = sweep_scores(phi, keep, ms, order, 5, shift=shift, floor=floor, attacks=ATT, per_sample_min=0)
    for t in range(5):
        for li, m in enumerate(ms):
            sel = np.zeros((m_tot, n), dtype=bool)
            for i in range(n):
                others = [s for s in order if s != t]
                ins = [s for s in others if keep[s, i]][:m]
                outs = [s for s in others if not keep[s, i]][:m]
                sel[ins + outs, i] = True
            # sums over exactly the selected shadows: mask the rest out of both sides
            x = phi - shift
            kin = keep & sel
            kout = ~keep & sel
            ref = GaussianSums(shift=shift, n_in=kin.sum(0), s1_in=(x * kin[..., None]).sum(0),
                               s2_in=(x * x * kin[..., None]).sum(0), n_out=kout.sum(0),
                               s1_out=(x * kout[..., None]).sum(0), s2_out=(x * x * kout[..., None]).sum(0))
            assert (ref.n_in == m).all() and (ref.n_out == m).all()
            exp, _ = lira_scores(phi[t], ref, floor=floor, attacks=ATT)
            for a in ATT:
                np.testing.assert_allclose(got[a][t, li], exp[a], rtol=1e-9, atol=1e-9)


def test_largest_m_in_reverse_order_equals_the_full_leave_pair_out_analysis():
    # with m = K = M/2 - 1 and the order M-1, ..., 0, the dropped reference on the target's other
    # side is its lowest-index shadow: exactly run_lira's partner, so metrics must agree
    phi, keep = _phi(m=16, n=60, seed=2)
    m_tot = phi.shape[0]
    train = np.ones(phi.shape[1], dtype=bool)
    masks = {"all": train, "half": np.arange(60) < 30}
    # per_sample_min=1: per-sample variances at m = 7, as the full analysis fits them
    sw = shadow_sweep(phi, keep, masks, n_targets=6, m_grid=[m_tot // 2 - 1], repeats=1, attacks=ATT,
                      orders=[np.arange(m_tot)[::-1]], fprs=(0.01,), per_sample_min=1)
    res = run_lira(lambda sl: phi[sl], keep, gaussian_sums(phi, keep), partners(phi, keep), train, 6, attacks=ATT)
    for a in ATT:
        pooled, _, _ = attack_metrics(res.member, res.scores[a], masks, [0.01])
        for s in masks:
            row = sw[(sw["attack"] == a) & (sw["set"] == s)].iloc[0]
            assert row["auroc"] == pytest.approx(pooled[f"AUROC {s}"], abs=1e-12)
            assert row["tpr@1%"] == pytest.approx(pooled[f"TPR@1% {s}"], abs=1e-12)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    path = tmp_path_factory.mktemp("sweep") / "s.zarr"
    info = write_synthetic_store(path, n_shadows=32, n_samples=400, n_queries=2, frac_under=0.25,
                                 separation={"over": 0.5, "under": 6.0}, seed=1, sample_chunk=128)
    return path, info


def test_sweep_on_a_synthetic_store_well_vs_weakly_separated(synth, tmp_path):
    path, info = synth
    data = open_shadows(path)
    train = data.split == "train"
    masks = {"strong": train & (data.group == "under"), "weak": train & (data.group == "over"), "random": train}
    sw, secs = sweep_from_store(data, masks, n_targets=16, repeats=6, seed=0)
    assert secs < 30
    assert set(sw["m"]) == {1, 2, 4, 8, 15} and (sw["n_shadows"] == 2 * sw["m"]).all()
    assert len(sw) == 3 * 2 * 5 * 6
    summ = summarize_sweep(sw)
    assert (summ["repeats"] == 6).all()
    assert (summ["auroc lo"] <= summ["auroc mean"] + 1e-12).all()
    assert (summ["auroc mean"] <= summ["auroc hi"] + 1e-12).all()

    def curve(s, a):
        d = summ[(summ["set"] == s) & (summ["attack"] == a)].sort_values("m")
        return d["auroc mean"].to_numpy()

    for a in ("lira-online", "lira-fixed-variance"):
        strong, weak = curve("strong", a), curve("weak", a)
        assert strong[0] > 0.97 and strong[-1] > 0.99  # ~1 with one shadow per side
        assert weak[-1] > weak[0] + 0.03  # the weak group gains from more shadows
        assert weak[-1] < 0.8 and weak[-1] > 0.6  # and stays near its Bayes AUROC (0.69 per query)
    # fixed-variance: a monotone trend in m (up to resampling noise)
    weak = curve("weak", "lira-fixed-variance")
    assert (np.diff(weak) > -0.01).all()
    # same seed, same numbers
    sw2, _ = sweep_from_store(data, masks, n_targets=16, repeats=6, seed=0)
    pd.testing.assert_frame_equal(sw, sw2)

    files = plot_sweep(summ, tmp_path / "plots" / "sweep_auroc.png", title="synthetic")
    files += plot_sweep(summ, tmp_path / "plots" / "sweep_tpr", metric="tpr@0.1%")
    assert [f.suffix for f in files] == [".png", ".pdf", ".png", ".pdf"]
    assert all(f.stat().st_size > 1000 for f in files)
    assert files[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and files[1].read_bytes()[:5] == b"%PDF-"

    # sample complexity on the measured sweep: the strong group needs one shadow per side
    mem = np.where(data.group == "under", 0.9, 0.05)
    tab = sample_complexity(summ, mem, {"gauss_uni": np.where(data.group == "under", 0.99, 0.02)}, masks)
    assert tab.loc[("strong", "lira-online"), "m_needed auroc>=0.9"] == 1
    assert not tab.loc[("weak", "lira-online"), "reached auroc>=0.9"]
    assert tab.loc[("weak", "lira-online"), "pred 1/mem"] == pytest.approx(20.0)
    out = plot_complexity(tab, tmp_path / "complexity")
    assert all(p.stat().st_size > 1000 for p in out)


def test_few_references_use_the_pooled_variance():
    # below PER_SAMPLE_VARIANCE_MIN references per side online LiRA is the fixed-variance ratio and
    # offline's z-score uses the pooled OUT std; from it on, both are the per-sample ones
    phi, keep = _phi(m=24, n=30, seed=4)
    ms = np.array([1, 2, 3, PER_SAMPLE_VARIANCE_MIN, PER_SAMPLE_VARIANCE_MIN + 2])
    order = np.random.default_rng(5).permutation(phi.shape[0])
    shift = phi.mean(0)
    floor = sd_floor(gaussian_sums(phi, keep, shift))
    new = sweep_scores(phi, keep, ms, order, 4, shift=shift, floor=floor, attacks=ATT)
    old = sweep_scores(phi, keep, ms, order, 4, shift=shift, floor=floor, attacks=ATT, per_sample_min=0)
    small = ms < PER_SAMPLE_VARIANCE_MIN
    assert small.tolist() == [True, True, True, False, False]
    np.testing.assert_array_equal(new["lira-online"][:, small], new["lira-fixed-variance"][:, small])
    np.testing.assert_array_equal(new["lira-online"][:, ~small], old["lira-online"][:, ~small])
    np.testing.assert_array_equal(new["lira-offline"][:, ~small], old["lira-offline"][:, ~small])
    np.testing.assert_array_equal(new["lira-fixed-variance"], old["lira-fixed-variance"])
    # offline with the pooled OUT variance, from its definition: the fixed-variance sums of the
    # first m OUT references in the order, per target and sample
    for t in range(4):
        li = 1  # m = 2
        outs_all = [[s for s in order if s != t and not keep[s, i]][:2] for i in range(phi.shape[1])]
        ins_all = [[s for s in order if s != t and keep[s, i]][:2] for i in range(phi.shape[1])]
        vo = np.concatenate([phi[o, i] for i, o in enumerate(outs_all)])  # (2 N, Q): every OUT value
        vi = np.concatenate([phi[o, i] for i, o in enumerate(ins_all)])
        sd_o = np.maximum(vo.std(0, ddof=1), floor)
        sd_i = np.maximum(vi.std(0, ddof=1), floor)
        mu_o = np.stack([phi[o, i].mean(0) for i, o in enumerate(outs_all)])
        mu_i = np.stack([phi[o, i].mean(0) for i, o in enumerate(ins_all)])
        exp_off = norm.logcdf((phi[t] - mu_o) / sd_o).mean(-1)
        exp_on = (norm.logpdf(phi[t], mu_i, sd_i) - norm.logpdf(phi[t], mu_o, sd_o)).sum(-1)
        np.testing.assert_allclose(new["lira-offline"][t, li], exp_off, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(new["lira-online"][t, li], exp_on, rtol=1e-9, atol=1e-9)


def test_sweep_has_no_v_at_few_shadows_and_says_which_variance(synth):
    # today's per-sample fit from 2 values per side made the online curve dip in a V (strong set:
    # AUROC 1.0 at m = 1, 0.89 at m = 2, 0.996 at m = 4 on this store); with the pooled variance
    # below PER_SAMPLE_VARIANCE_MIN the mean AUROC does not fall as m grows
    path, _ = synth
    data = open_shadows(path)
    train = data.split == "train"
    masks = {"strong": train & (data.group == "under"), "weak": train & (data.group == "over")}
    sw, _ = sweep_from_store(data, masks, n_targets=16, repeats=6, seed=0, attacks=ATT)
    summ = summarize_sweep(sw)
    for s in masks:
        for a in ATT:
            d = summ[(summ["set"] == s) & (summ["attack"] == a)].sort_values("m")
            assert (np.diff(d["auroc mean"].to_numpy()) > -0.005).all(), (s, a, d["auroc mean"].tolist())
            exp = np.where((d["m"] < PER_SAMPLE_VARIANCE_MIN) | (a == "lira-fixed-variance"), "fixed", "per-sample")
            assert d["variance"].tolist() == exp.tolist()
    assert set(sw["variance"]) == {"fixed", "per-sample"}  # the raw CSV's rows say it too
    # the old estimator on the same store does dip: what this test guards against
    old, _ = sweep_from_store(data, masks, n_targets=16, repeats=6, seed=0, attacks=("lira-online",),
                              per_sample_min=0)
    c = summarize_sweep(old).query("set == 'strong'").sort_values("m")["auroc mean"].to_numpy()
    assert c[1] < c[0] - 0.05 and c[2] > c[1] + 0.05

    fig = sweep_figure(summ)
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "fixed variance" in labels and "per-sample variance" in labels
    ax = fig.axes[ATT.index("lira-online")]
    assert ax.get_xlabel().startswith("reference shadows per target (IN + OUT")
    squares = sorted({x for ln in ax.get_lines() if ln.get_marker() == "s" for x in ln.get_xdata()})
    circles = sorted({x for ln in ax.get_lines() if ln.get_marker() == "o" for x in ln.get_xdata()})
    assert squares == [2, 4, 8] and circles == [16, 30]  # n_shadows = 2 m; m = 1, 2, 4 | 8, 15


def test_sweep_rejects_bad_inputs():
    phi, keep = _phi()
    with pytest.raises(ValueError, match="empty"):
        shadow_sweep(phi, keep, {"none": np.zeros(phi.shape[1], bool)})
    with pytest.raises(ValueError, match="no m"):
        shadow_sweep(phi, keep, {"all": np.ones(phi.shape[1], bool)}, m_grid=[100])
    k = keep.copy()
    k[:, 0] = False
    k[0, 0] = True  # one IN shadow only
    with pytest.raises(ValueError, match=">= 2 IN"):
        shadow_sweep(phi, k, {"all": np.ones(phi.shape[1], bool)})


def _table():
    rows = []
    curves = {"hm": [0.95, 0.99, 1.0, 1.0], "mid": [0.6, 0.85, 0.91, 0.97], "rand": [0.5, 0.55, 0.6, 0.62]}
    for s, curve in curves.items():
        for m, v in zip([1, 2, 4, 8], curve):
            rows.append({"set": s, "attack": "lira-online", "m": m, "n_shadows": 2 * m, "n_samples": 10,
                         "repeats": 5, "auroc mean": v, "tpr@1% mean": v - 0.3})
    return pd.DataFrame(rows)


def test_complexity_picks_the_smallest_m_reaching_the_target():
    summ = _table()
    need = shadows_needed(summ, target=0.9)
    assert need.loc[("hm", "lira-online"), "m_needed"] == 1
    assert need.loc[("mid", "lira-online"), "m_needed"] == 4
    assert need.loc[("mid", "lira-online"), "n_shadows_needed"] == 8
    assert np.isnan(need.loc[("rand", "lira-online"), "m_needed"]) and not need.loc[("rand", "lira-online"), "reached"]
    assert need.loc[("rand", "lira-online"), "best"] == 0.62
    # a dip after reaching the target does not matter: the first m that reaches it counts
    assert shadows_needed(summ, target=0.6).loc[("mid", "lira-online"), "m_needed"] == 1
    assert shadows_needed(summ, metric="tpr@1%", target=0.6).loc[("mid", "lira-online"), "m_needed"] == 4
    with pytest.raises(KeyError):
        shadows_needed(summ, metric="nope")

    n = 30
    masks = {"hm": np.arange(n) < 10, "mid": (np.arange(n) >= 10) & (np.arange(n) < 20), "rand": np.arange(n) >= 20}
    mem = np.r_[np.full(10, 0.9), np.full(10, 0.25), np.zeros(10)]
    tab = sample_complexity(summ, mem, mem ** 2, masks, tpr_metric="tpr@1%", tpr_target=0.6)
    assert tab.loc[("hm", "lira-online"), "pred 1/mem"] == pytest.approx(1 / 0.9)
    assert tab.loc[("mid", "lira-online"), "pred 1/H2"] == pytest.approx(16.0)
    assert tab.loc[("rand", "lira-online"), "pred 1/mem"] == np.inf
    assert tab.loc[("mid", "lira-online"), "m_needed auroc>=0.9"] == 4
    assert tab.loc[("mid", "lira-online"), "m_needed tpr@1%>=0.6"] == 4
    med = sample_complexity(summ, mem, mem ** 2, masks, aggregate="median", tpr_metric=None)
    assert "median mem" in med.columns and "m_needed tpr@1%>=0.5" not in med.columns


def test_relative_target_uses_each_curves_own_full_shadow_value():
    summ = _table()
    need = shadows_needed(summ, relative=0.95)
    # hm: target 0.5 + 0.95 * 0.5 = 0.975 -> m = 2; mid: 0.5 + 0.95 * 0.47 = 0.9465 -> m = 8;
    # rand: 0.5 + 0.95 * 0.12 = 0.614 -> m = 8
    assert need["m_needed"].tolist() == [2, 8, 8]
    assert need.loc[("mid", "lira-online"), "target"] == pytest.approx(0.9465)


def test_theory_suite_end_to_end_on_a_synthetic_store(synth, tmp_path):
    from analysis.studies.complexity import theory_suite
    from analysis.studies.memorization import memorization_from_counts
    from analysis.store_io.passes import reduce_over_shadows

    path, _ = synth
    data = open_shadows(path)
    _, _, counts = reduce_over_shadows(data)
    mem, _ = memorization_from_counts(counts.n_in, counts.c_in, counts.n_out, counts.c_out)
    train = data.split == "train"
    extra = {"subpopulation": np.arange(train.size) % 7 == 0}
    r = theory_suite(data, counts, train=train, mem=mem, group=data.group, threshold=0.5, plots=tmp_path / "plots",
                     n_targets=8, repeats=3, extra_masks=extra, fprs=[0.001], max_per_set=60)
    assert set(r["masks"]) <= {"highly memorized", "All", "random", "subpopulation"}
    assert {"All", "random", "subpopulation"} <= set(r["masks"])
    assert len(r["theory"]) == int(train.sum())
    assert r["theory_summary"].loc["All", "n"] == int(train.sum())
    # the strongly separated group: Gaussian H^2 near 1; nowhere a Bernoulli violation
    th = r["theory"]
    under = data.group[train] == "under"
    assert th.loc[under, "H2_gauss_uni"].mean() > 0.9 > th.loc[~under, "H2_gauss_uni"].mean()
    assert set(r["sweep"]["set"]) == set(r["masks"])
    n_sw = r["sweep"].groupby("set")["n_samples"].first()
    assert n_sw["All"] == 60 and n_sw["random"] == 60  # capped (100 under samples)
    assert r["complexity"].loc[("All", "lira-online"), "n_samples"] == int(train.sum())  # predictions: all
    assert all(p.exists() and p.stat().st_size > 1000 for p in r["figures"])
    assert {p.name for p in r["figures"]} >= {"sweep_auroc.png", "sweep_auroc.pdf", "complexity.png",
                                              "complexity_relative.pdf", "sweep_tpr_0p1pct.png"}
    assert r["complexity"].loc[("random", "lira-online"), "m_needed auroc>=0.9"] == 1
    # the report helpers: flat tables with captions, strict-JSON digest
    import json

    from analysis.studies.complexity import theory_json, theory_tables
    from analysis.output.report import _jsonable
    from analysis.store_io.numfmt import to_markdown

    tabs = theory_tables(r)
    assert set(tabs) == {"theory", "sweep", "complexity"}
    for df, caption in tabs.values():
        assert caption and not isinstance(df.index, pd.MultiIndex)
        assert to_markdown(df).count("\n") == len(df) + 2
    assert "random / lira-online / 1" in tabs["sweep"][0].index
    json.dumps(_jsonable(theory_json(r)), allow_nan=False)


def test_theory_suite_skips_the_sweep_with_too_few_shadows(tmp_path):
    from analysis.studies.complexity import theory_suite, theory_tables
    from analysis.studies.memorization import memorization_from_counts
    from analysis.store_io.passes import reduce_over_shadows

    write_synthetic_store(tmp_path / "s", n_shadows=2, n_samples=50, seed=3)
    data = open_shadows(tmp_path / "s")
    _, _, counts = reduce_over_shadows(data)
    mem, _ = memorization_from_counts(counts.n_in, counts.c_in, counts.n_out, counts.c_out)
    r = theory_suite(data, counts, train=data.split == "train", mem=mem, group=data.group, threshold=0.5,
                     plots=tmp_path / "plots")
    assert r["skipped"] and r["sweep"].empty and r["figures"] == []
    assert len(r["theory"]) == 50 and r["theory"]["H2_gauss_uni"].isna().all()  # one shadow per side: no fit
    assert set(theory_tables(r)) == {"theory"}


def test_overwrite_phi_changes_no_result_and_only_then_the_input():
    """The sweep shifts its phi in place only when told the array is its own; the results are the same."""
    rng = np.random.default_rng(4)
    m, n, q = 30, 120, 3
    keep = rng.random((m, n)) < 0.5
    phi = rng.normal(size=(m, n, q)) + keep[..., None]
    masks = {"All": np.ones(n, dtype=bool), "half": rng.random(n) < 0.5}
    before = phi.copy()
    kept = shadow_sweep(phi, keep, masks, n_targets=5, repeats=2)
    np.testing.assert_array_equal(phi, before)  # the caller's array is left alone by default
    own = shadow_sweep(phi, keep, masks, n_targets=5, repeats=2, overwrite_phi=True)
    pd.testing.assert_frame_equal(own, kept)
    assert not np.array_equal(phi, before)  # it was used as the sweep's working array


@pytest.mark.parametrize("block", [1, 7, 64])
def test_sweep_in_blocks_of_samples_equals_the_whole(tmp_path, block):
    """``block_samples`` reads phi a block of scored samples at a time (here from a DiskRows file on
    disk, as the analysis does on large stores): the sweep's frame is the same, bit for bit."""
    from analysis.store_io.spill import DiskRows

    rng = np.random.default_rng(5)
    m, n, q = 26, 150, 2
    keep = rng.random((m, n)) < 0.5
    phi = (rng.normal(size=(m, n, q)) + keep[..., None] * rng.random((1, n, 1))).astype(np.float32)
    masks = {"All": rng.random(n) < 0.6, "few": rng.random(n) < 0.2}
    whole = shadow_sweep(phi, keep, masks, n_targets=6, repeats=3, threads=2,
                         attacks=("lira-online", "lira-fixed-variance", "lira-offline"))
    rows = DiskRows(tmp_path / "phi.npy", phi.shape)
    rows.write(0, phi)
    blocked = shadow_sweep(rows, keep, masks, n_targets=6, repeats=3, threads=2, block_samples=block,
                           attacks=("lira-online", "lira-fixed-variance", "lira-offline"))
    pd.testing.assert_frame_equal(blocked, whole)


@pytest.mark.parametrize("memory_bytes,block", [(None, None), (1, None), (1, 5), (1 << 30, 5)])
def test_metrics_per_grid_point_equal_those_of_all_grid_points_at_once(tmp_path, memory_bytes, block):
    """The sweep forms each grid point's scores and their metrics one point at a time
    (:func:`scores_by_m`), with no more repeats at once than ``memory_bytes`` holds: its frame is
    the one of scoring every grid point (:func:`sweep_scores`, (T, L, N)) and computing all L rows
    of metrics at once, as it did before, bit for bit (a grid point or set misaligned, or a
    repeat's rows mixed up, would change it)."""
    from analysis.kernels.metrics import per_target_metrics
    from analysis.store_io.spill import DiskRows

    rng = np.random.default_rng(8)
    m, n, q, t_n, reps = 22, 90, 2, 5, 3
    keep = rng.random((m, n)) < 0.5
    phi = (rng.normal(size=(m, n, q)) + keep[..., None] * rng.random((1, n, 1))).astype(np.float32)
    phi[:, 3] = 0.5  # every shadow alike: floored variances, tied scores
    masks = {"All": np.ones(n, dtype=bool), "few": rng.random(n) < 0.2}
    orders = [rng.permutation(m) for _ in range(reps)]
    fprs = [0.01, 0.1]
    x = phi.astype(np.float64)
    shift = x.mean(axis=0)
    floor = sd_floor(gaussian_sums(x, keep, shift))
    ms = np.asarray(default_m_grid(int(min(keep.sum(0).min(), (~keep).sum(0).min())) - 1))
    rows = []
    for r in range(reps):
        scores = sweep_scores(x, keep, ms, orders[r], t_n, shift=shift, floor=floor, attacks=ATT)
        for name, mask in masks.items():
            mem = np.broadcast_to(keep[:t_n, mask].reshape(1, -1), (ms.size, t_n * int(mask.sum())))
            for a in ATT:
                vals = per_target_metrics(mem, np.moveaxis(scores[a], 1, 0)[:, :, mask].reshape(ms.size, -1), fprs)
                for li, mv in enumerate(ms):
                    how = "fixed" if a == "lira-fixed-variance" or mv < PER_SAMPLE_VARIANCE_MIN else "per-sample"
                    rows.append([name, a, int(mv), 2 * int(mv), r, int(mask.sum()), how] + list(vals[li]))
    want = pd.DataFrame(rows, columns=["set", "attack", "m", "n_shadows", "repeat", "n_samples", "variance",
                                       "auroc", "tpr@1%", "tpr@10%"])
    src = phi
    if block is not None:
        src = DiskRows(tmp_path / "phi.npy", phi.shape)
        src.write(0, phi)
    got = shadow_sweep(src, keep, masks, n_targets=t_n, repeats=reps, orders=orders, fprs=fprs, attacks=ATT,
                       threads=2, block_samples=block, memory_bytes=memory_bytes)
    pd.testing.assert_frame_equal(got, want, check_exact=True)


@pytest.mark.parametrize("shape", [(5, 40, 3), (4, 33)])
def test_disk_rows_take_columns_equals_indexing_the_mapped_file(tmp_path, shape):
    """``DiskRows.take_columns`` (the sweep's blocks of samples, read without mapping the file)
    gives ``rows[:, cols]`` exactly: sorted, unsorted, repeated, first and last columns, none."""
    from analysis.store_io.spill import DiskRows

    rng = np.random.default_rng(4)
    a = rng.normal(size=shape).astype(np.float32)
    rows = DiskRows(tmp_path / "a.npy", a.shape)
    rows.write(0, a)
    n = shape[1]
    for cols in (np.array([0, 3, 4, 17, n - 1]), np.array([9, 2, 2, 30]), np.arange(n), np.array([5]),
                 np.array([], dtype=np.int64)):
        got = rows.take_columns(cols)
        assert got.dtype == a.dtype and got.shape == a[:, cols].shape
        np.testing.assert_array_equal(got, rows[:, cols])
        np.testing.assert_array_equal(got, a[:, cols])

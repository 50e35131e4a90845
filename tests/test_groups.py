"""Challenge sets (subpopulation on planted clusters, singletons, random) and OOD scores."""

from __future__ import annotations

import math

import numpy as np
import pytest
import xarray as xr

from analysis.studies.groups import (challenge_sets, random_under, singletons, store_features, subpopulation,
                             subpopulation_clusters)
from analysis.studies.ood import (energy_score, msp_score, ood_correlations, ood_scores, ood_scores_from_store,
                          plot_mem_vs_ood, plot_ood_vs_privacy, spearman)


def _planted(seed=0, small_under=True):
    """5 well-separated clusters in 32-d: sizes 150, 140, 130, 120 and a small one of 24 (the last
    rows), plus 30 test samples; the small cluster has 16 under + 8 over samples."""
    rng = np.random.default_rng(seed)
    sizes = [150, 140, 130, 120, 24]
    centres = rng.normal(size=(5, 32)) * 20
    feats = np.concatenate([c + rng.normal(size=(k, 32)) for c, k in zip(centres, sizes)])
    n_tr = feats.shape[0]
    cluster = np.repeat(np.arange(5), sizes)
    group = np.where(rng.random(n_tr) < 0.15, "under", "over")
    small = cluster == 4
    if small_under:
        group[np.flatnonzero(small)[:16]] = "under"
        group[np.flatnonzero(small)[16:]] = "over"
    else:
        group[small] = "over"
    # test samples sitting in the small cluster must never be selected
    test_feats = centres[4] + rng.normal(size=(30, 32))
    feats = np.concatenate([feats, test_feats])
    group = np.concatenate([group, np.array(["under"] * 30)])
    train = np.arange(feats.shape[0]) < n_tr
    cluster = np.concatenate([cluster, np.full(30, -1)])
    # shuffle so the small cluster is not at a telling position
    perm = rng.permutation(feats.shape[0])
    return feats[perm], group[perm], train[perm], cluster[perm]


def test_subpopulation_recovers_planted_cluster_exactly():
    feats, group, train, cluster = _planted()
    truth = (cluster == 4) & (group == "under") & train
    for seed in (0, 1):
        mask = subpopulation(feats, group, train=train, seed=seed)
        np.testing.assert_array_equal(mask, truth)
    sp = subpopulation_clusters(feats, group, train=train)
    assert sp.rank == 0 and list(sp.sizes) == [24, 120, 130, 140, 150]
    assert sp.n_under[0] == 16 and (sp.labels[~train] == -1).all()
    assert 0 < sp.explained_variance <= 1


def test_subpopulation_skips_clusters_without_under_samples():
    feats, group, train, cluster = _planted(small_under=False)
    sp = subpopulation_clusters(feats, group, train=train)
    assert sp.rank == 1 and sp.n_under[0] == 0
    expected = (cluster == 3) & (group == "under") & train  # the 120-sample cluster is next smallest
    np.testing.assert_array_equal(sp.mask, expected)
    assert sp.mask.sum() > 0
    # no under-represented samples at all: empty set, rank -1
    none = subpopulation_clusters(feats, np.full(group.size, "over"), train=train)
    assert none.rank == -1 and not none.mask.any()


def test_subpopulation_edge_cases():
    feats, group, train, _ = _planted()
    bad = feats.copy()
    bad[np.flatnonzero(train)[0], 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        subpopulation(bad, group, train=train)
    # NaN on a test row is fine (only train samples are clustered)
    bad = feats.copy()
    bad[np.flatnonzero(~train)[0], 0] = np.nan
    subpopulation(bad, group, train=train)
    # fewer samples than clusters / dims: capped, still a valid mask
    tiny = subpopulation(feats[:3, :2], np.array(["under", "over", "under"]))
    assert tiny.dtype == bool and tiny.shape == (3,) and tiny.sum() >= 1


def test_singletons_and_random_under():
    group = np.array(["under", "under", "under", "over", "under", "under"])
    train = np.array([True, True, True, True, True, False])
    mem = np.array([0.9, 0.8, np.nan, 0.95, 0.81, 0.99])
    np.testing.assert_array_equal(singletons(mem, group, 0.8, train=train),
                                  [True, False, False, False, True, False])
    np.testing.assert_array_equal(random_under(group, train=train), [True, True, True, False, True, False])
    sub = random_under(group, train=train, size=2, seed=3)
    assert sub.sum() == 2 and not (sub & ~random_under(group, train=train)).any()
    np.testing.assert_array_equal(sub, random_under(group, train=train, size=2, seed=3))
    sets = challenge_sets(group, train, mem, 0.8)
    assert set(sets) == {"random", "singletons"}


def test_store_features():
    ds = xr.Dataset({"label": ("sample", np.arange(4))})
    assert store_features(ds) is None
    ds["features"] = (("sample", "feature"), np.full((4, 3), np.nan, dtype=np.float32))
    assert store_features(ds) is None
    ds["features"] = (("sample", "feature"), np.ones((4, 3), dtype=np.float32))
    assert store_features(ds).shape == (4, 3)


# --- OOD ------------------------------------------------------------------------------------------

def test_ood_scores_known_values():
    z = np.array([[0.0, 0.0, 0.0, 0.0], [10.0, 0.0, 0.0, 0.0], [1e4, -1e4, 0.0, 0.0]])
    msp = msp_score(z)
    np.testing.assert_allclose(msp, [0.75, 1 - 1 / (1 + 3 * math.exp(-10)), 0.0], atol=1e-12)
    np.testing.assert_allclose(energy_score(z)[:2], [-math.log(4), -(10 + math.log(1 + 3 * math.exp(-10)))])
    assert np.isfinite(energy_score(z)).all()
    assert energy_score(np.array([[2.0, 0.0]]), temperature=2.0)[0] == pytest.approx(-2 * np.logaddexp(1.0, 0.0))
    # confident (ID-like) rows score lower = less OOD under both detectors
    assert msp[1] < msp[0] and energy_score(z)[1] < energy_score(z)[0]
    both = ood_scores(np.stack([z, z + 1.0]))  # mean over 2 targets; energy shifts by -1 for the 2nd
    np.testing.assert_allclose(both["msp"], msp)
    np.testing.assert_allclose(both["energy"], energy_score(z) - 0.5)


def test_spearman_and_correlation_table():
    rng = np.random.default_rng(0)
    x = rng.normal(size=200)
    r = spearman(x, x ** 3)
    assert r["rho"] == pytest.approx(1.0) and r["p"] < 1e-10 and r["n"] == 200
    y = x.copy()
    y[:5] = np.nan
    assert spearman(x, y)["n"] == 195
    assert math.isnan(spearman(x, np.ones(200))["rho"])
    df = ood_correlations({"msp": x, "energy": -x}, privacy=2 * x, mem=rng.normal(size=200),
                          masks={"all": np.ones(200, bool), "half": np.arange(200) < 100})
    assert list(df.index) == [("msp", "all"), ("msp", "half"), ("energy", "all"), ("energy", "half")]
    assert df.loc[("msp", "all"), "rho privacy"] == pytest.approx(1.0)
    assert df.loc[("energy", "half"), "rho privacy"] == pytest.approx(-1.0)
    assert df.loc[("msp", "half"), "n privacy"] == 100 and abs(df.loc[("msp", "all"), "rho mem"]) < 0.3


@pytest.fixture(scope="module")
def small_store(tmp_path_factory):
    from analysis.store_io.load import open_shadows
    from analysis.tools.synthetic_store import write_synthetic_store

    path = tmp_path_factory.mktemp("ood") / "s.zarr"
    write_synthetic_store(path, n_shadows=4, n_samples=60, n_test=10, seed=1, sample_chunk=16)
    return open_shadows(path)


def test_ood_from_store_matches_in_memory(small_store):
    data = small_store
    got = ood_scores_from_store(data, 3)
    want = ood_scores(np.asarray(data.logits.isel(query=0, shadow=slice(0, 3)).values))
    for k in ("msp", "energy"):
        np.testing.assert_allclose(got[k], want[k], rtol=1e-12)
        assert got[k].shape == (70,)


def test_plots_write_png_and_pdf(tmp_path):
    rng = np.random.default_rng(0)
    n = 80
    group = np.where(np.arange(n) < 60, "over", "under")
    ood, priv, mem = rng.random(n), rng.random(n) * 3, rng.random(n)
    mem[0] = np.nan
    p1 = plot_ood_vs_privacy(tmp_path / "fig1b_msp", ood, priv, group, name="msp", highlight=mem > 0.8)
    p2 = plot_mem_vs_ood(tmp_path / "plots" / "fig10_energy", ood, mem, group, name="energy")
    for p in p1 + p2:
        assert p.is_file() and p.stat().st_size > 1000
    assert [p.suffix for p in p1] == [".png", ".pdf"]
    assert (tmp_path / "fig1b_msp.pdf").read_bytes().startswith(b"%PDF")
    assert not list(tmp_path.rglob(".*tmp*"))


def test_ood_from_store_out_models_only(small_store):
    data = small_store
    z = np.asarray(data.logits.isel(query=0).values, dtype=np.float64)
    keep = np.asarray(data.keep.values, dtype=bool)
    got = ood_scores_from_store(data, models="out")
    e = energy_score(z)
    want = np.nansum(np.where(~keep, e, np.nan), axis=0) / (~keep).sum(axis=0)
    np.testing.assert_allclose(got["energy"], want, rtol=1e-12)
    got_in = ood_scores_from_store(data, models="in")
    assert np.isnan(got_in["msp"][60:]).all() and np.isfinite(got_in["msp"][:60]).all()
    with pytest.raises(ValueError, match="models"):
        ood_scores_from_store(data, models="some")


def test_sample_set_table_names_each_set_once_and_says_how_look_alikes_differ():
    from analysis.studies.groups import SAMPLE_SETS, highly_memorized, sample_set_table, set_definition, set_name

    group = np.array(["over"] * 6 + ["under"] * 4)
    train = np.ones(10, dtype=bool)
    mem = np.array([0.0, 0.9, 0.95, 0.1, 0.0, 0.2, 0.85, 0.3, 0.99, np.nan])
    hm = highly_memorized(mem, 0.8, train=train)
    assert hm.tolist() == [False, True, True, False, False, False, True, False, True, False]
    masks = {"Under": random_under(group, train=train), "All": train, "highly memorized": hm,
             "singletons": singletons(mem, group, 0.8, train=train)}
    t = sample_set_table(masks, group, 0.8)
    assert list(t.index) == ["All", "random", "singletons", "highly memorized"]  # registry order, alias resolved
    assert t["n"].tolist() == [10, 4, 2, 4] and t["n over"].tolist() == [6, 0, 0, 2]
    assert t.loc["highly memorized", "relation"] == "singletons plus 2"
    assert t.loc["singletons", "relation"] == "random less 2; highly memorized less 2"
    assert t.loc["All", "relation"] == "-"
    assert "memorization > 0.8" in t.loc["singletons", "definition"] == set_definition("singletons", 0.8)
    assert set_name("Under") == "random" and set(t.index) <= set(SAMPLE_SETS)
    with pytest.raises(KeyError, match="not a registered sample set"):
        set_name("outliers")

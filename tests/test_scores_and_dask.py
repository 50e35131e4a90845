"""``scores.zarr`` opens with xarray as documented; ``analyze`` on a real 2-process LocalCluster
gives the same tables as in one process."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from analysis.output.report import analyze
from analysis.output.scores import write_scores
from analysis.tools.synthetic_store import write_synthetic_store

TABLES = ["attacks", "attacks_per_target", "accuracy", "memorization"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("store") / "store.zarr"
    # several sample chunks (sample_chunk=128), so that workers really split the work
    write_synthetic_store(path, n_shadows=12, n_samples=300, n_test=60, n_queries=2, seed=11,
                          separation={"over": 0.5, "under": 3.0}, frac_under=0.3, offset_mean=0.0,
                          sample_chunk=128, n_done=11, analysis={"targets": 0, "fpr": [0.01, 0.1]})
    return path


@pytest.fixture(scope="module")
def single(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    return out, analyze(store, out, progress=False)


def test_scores_zarr_opens_with_xarray(single):
    out, res = single
    path = write_scores(out, res)
    assert path == out / "scores.zarr"
    write_scores(out, res)  # rewriting replaces it in place
    assert not [p for p in out.iterdir() if p.name.startswith(".scores")], "temporary stores left behind"
    ds = xr.open_zarr(path)
    for v in ("mem", "mem_se", "privacy_score", "group", "label", "split", "challenge", "under", "score", "member"):
        assert v in ds, v
    ps = res["per_sample"]
    lira = res["lira"]
    assert ds.sizes["sample"] == len(ps)
    assert ds["score"].dims == ("attack", "target", "sample")
    assert list(ds["attack"].values) == list(lira.scores)
    np.testing.assert_array_equal(ds["target"].values, lira.targets)
    np.testing.assert_array_equal(ds["sample"].values, ps["sample"].values)
    np.testing.assert_allclose(ds["mem"].values, ps["mem"].values, equal_nan=True)
    np.testing.assert_allclose(ds["privacy_score"].values, ps["privacy_score"].values, equal_nan=True)
    assert list(ds["group"].values) == list(ps["group"].astype(str))
    assert list(ds["split"].values) == list(ps["split"].astype(str))
    ch = ds["challenge"].values
    assert ch.sum() == 300 and (ds["split"].values[ch] == "train").all()
    for a, s in lira.scores.items():
        got = ds["score"].sel(attack=a).values
        np.testing.assert_allclose(got[:, ch], s, rtol=1e-5, atol=1e-5)
        assert np.isnan(got[:, ~ch]).all()
    np.testing.assert_array_equal(ds["member"].values[:, ch], lira.member)
    assert not ds["member"].values[:, ~ch].any()
    assert ds.attrs["spec_hash"] == res["summary"]["spec_hash"]


def test_scores_extra_variables(single, tmp_path):
    _, res = single
    n = len(res["per_sample"])
    extra = {"h2": np.linspace(0, 1, n)}
    more = {"fake-attack": np.zeros_like(res["lira"].scores["lira-online"])}
    ds = xr.open_zarr(write_scores(tmp_path, res, extra_per_sample=extra, extra_scores=more, score_dtype="float64"))
    np.testing.assert_array_equal(ds["h2"].values, extra["h2"])
    assert "fake-attack" in list(ds["attack"].values)
    np.testing.assert_array_equal(ds["score"].sel(attack="lira-online").values[:, ds["challenge"].values],
                                  res["lira"].scores["lira-online"])
    with pytest.raises(ValueError):
        write_scores(tmp_path, res, extra_per_sample={"bad": np.zeros(n + 1)})


def test_analyze_on_local_cluster_equals_single_process(store, single, tmp_path):
    pytest.importorskip("distributed", reason="pip install distributed (pinned to dask's version)")
    from dask.distributed import LocalCluster, get_task_stream

    from analysis.store_io.distributed import client_for

    out1, res1 = single
    out2 = tmp_path / "cluster"
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with client_for(cluster.scheduler_address) as client:
            workers = set(client.scheduler_info()["workers"])
            assert len(workers) == 2
            with get_task_stream() as ts:
                res2 = analyze(store, out2, progress=False)
    # the logits were reduced on the worker processes (both of them), not in this process
    ran_on = {t["worker"] for t in ts.data}
    assert ran_on <= workers and len(ran_on) == 2, ran_on
    assert any("_fold" in str(t["key"]) for t in ts.data)  # the pass's tasks (analysis.store_io.passes._fold)
    for t in TABLES:
        pd.testing.assert_frame_equal(res2[t], res1[t], check_exact=False, rtol=1e-12, atol=1e-12)
        a = pd.read_csv(out1 / "tables" / f"{t}.csv", index_col=0)
        b = pd.read_csv(out2 / "tables" / f"{t}.csv", index_col=0)
        pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-12, atol=1e-12)
        assert (out1 / "tables" / f"{t}.md").read_text() == (out2 / "tables" / f"{t}.md").read_text()
    pd.testing.assert_frame_equal(res2["per_sample"], res1["per_sample"], check_exact=False, rtol=1e-12)
    for a in res1["lira"].scores:
        np.testing.assert_allclose(res2["lira"].scores[a], res1["lira"].scores[a], rtol=1e-12, atol=1e-12)
    j1 = json.loads((out1 / "analysis.json").read_text())
    j2 = json.loads((out2 / "analysis.json").read_text())
    for k in ("attacks", "accuracy_percent", "memorization"):
        pd.testing.assert_frame_equal(pd.DataFrame(j1[k]).astype(float), pd.DataFrame(j2[k]).astype(float),
                                      check_exact=False, rtol=1e-12)
    assert j1["spearman_mem_privacy"] == pytest.approx(j2["spearman_mem_privacy"], rel=1e-12)


def test_client_for_local_cluster_closes_it():
    pytest.importorskip("distributed", reason="pip install distributed (pinned to dask's version)")
    import dask
    import dask.array as da

    from analysis.store_io.distributed import client_for

    with client_for(None, n_workers=2) as client:
        cluster = client.cluster
        assert len(client.scheduler_info()["workers"]) == 2
        x = da.ones((100, 100), chunks=(10, 100))
        assert float(dask.compute(x.sum())[0]) == 10000.0
    assert cluster.status.name in ("closed", "closing")


def test_bench_analyze_cli_reports_ratio_and_memory(capsys):
    from mia_hpc.cli import main

    assert main(["bench", "analyze", "--shadows", "8", "--samples", "200", "--targets", "4"]) == 0
    out = capsys.readouterr().out
    assert "read logits once" in out and "through xarray" in out and "ratio" in out and "peak RSS analyze" in out
    assert "where the time goes (s): open" in out and "pass" in out


def test_bench_analyze_quick_times_the_analysis_without_extras(tmp_path):
    from analysis.tools.analyze_bench import bench_analyze

    r = bench_analyze(shadows=8, samples=200, targets=4, extras=False, workdir=tmp_path, keep=True, log=None)
    assert r["extras"] is False and r["analyze_s"] > 0 and r["ratio"] > 0
    # the synthetic store's logits are the realistic kind (compress like trained ones), and it says so
    assert r["logits"] == "realistic" and 1.0 < r["logits_compression"] < 1.2
    # both reads timed; the ratio is against the analysis' own (block) reader
    assert r["ratio"] == r["analyze_s"] / r["read_s"] and r["ratio_xarray"] == r["analyze_s"] / r["read_xarray_s"]
    out = tmp_path / "analysis"
    assert (out / "analysis.json").is_file() and (out / "tables" / "attacks.csv").is_file()
    assert not (out / "tables" / "paper_attacks.csv").exists()  # the extras did not run

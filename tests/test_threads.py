"""The analysis' thread count (``MIA_HPC_THREADS`` / the CPUs the process may use, read once by the
entry point and passed down) changes how the work is split, never a result: every parallel step is
compared bit for bit across thread counts."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from analysis.kernels.threads import ENV, n_threads, thread_map


def test_n_threads_default_is_the_usable_cpus_and_env_overrides(monkeypatch):
    from dask.system import cpu_count

    monkeypatch.delenv(ENV, raising=False)
    assert n_threads() == cpu_count() <= len(os.sched_getaffinity(0))
    monkeypatch.setenv(ENV, "7")
    assert n_threads() == 7
    for bad in ("0", "-2", "two"):
        monkeypatch.setenv(ENV, bad)
        with pytest.raises(ValueError, match=f"{ENV}: expected a positive integer"):
            n_threads()


def test_thread_map_keeps_order_and_caps_workers():
    import threading

    seen = set()

    def f(x):
        seen.add(threading.get_ident())
        return x * x

    assert thread_map(f, range(20), 3) == [x * x for x in range(20)]
    assert len(seen) <= 3
    seen.clear()
    assert thread_map(f, range(5)) == [x * x for x in range(5)]  # default: serial, inline
    assert seen == {threading.get_ident()}
    assert thread_map(f, [], 4) == []


def _tied_pairs(seed=3, t=41, n=700):
    rng = np.random.default_rng(seed)
    member = rng.random((t, n)) < 0.5
    under = rng.random(n) < 0.3
    # coarse scores: long tie groups that the range splits must not cut
    score = np.round(rng.normal(size=(t, n)) + member * np.where(under, 1.5, 0.2), 1).astype(np.float32)
    return member, score, under


@pytest.mark.parametrize("threads", [2, 3, 5, 16])
def test_metrics_and_bootstrap_equal_one_thread_bit_for_bit(threads):
    from analysis.kernels.bootstrap import bootstrap_columns
    from analysis.kernels.metrics import attack_metrics

    member, score, under = _tied_pairs()
    masks = {"All": np.ones(under.size, dtype=bool), "Under": under}
    kw = dict(fprs=[0.001, 0.01, 0.1], n_boot=37, seed=1, exact_budget=0)
    ref_m = attack_metrics(member, score, masks, [0.001, 0.01], threads=1)
    ref_b = bootstrap_columns(member, score, {"All": None, "Under": under}, threads=1, **kw)
    got_m = attack_metrics(member, score, masks, [0.001, 0.01], threads=threads)
    got_b = bootstrap_columns(member, score, {"All": None, "Under": under}, threads=threads, **kw)
    assert got_m == ref_m
    for col in ref_b:
        assert got_b[col].settings["method"].startswith("linearised")  # the threaded fast path
        np.testing.assert_array_equal(got_b[col].replicates, ref_b[col].replicates)
        assert got_b[col].point == ref_b[col].point


def _results(out: Path) -> dict:
    tables = {p.name: p.read_bytes() for p in sorted((out / "tables").glob("*.csv"))}
    summary = json.loads((out / "analysis.json").read_text().replace(str(out), "OUT"))
    for k in ("timings_s", "peak_rss_gib", "phase_rss_gib", "wall_s", "threads"):  # wall-clock seconds and memory, and the threads
        summary.pop(k)
    summary["theory"].pop("sweep_s")
    score = xr.open_zarr(out / "scores.zarr").score.values
    return {"tables": tables, "summary": summary, "score": score}


def test_whole_analysis_with_one_and_three_threads_is_identical(tmp_path, monkeypatch):
    """analyze with the paper extras (attacks, metrics, bootstrap tables, sweep, scores.zarr); the
    thread count from the environment (read once by analyze) and passed as an argument."""
    from analysis.output.report import analyze
    from analysis.tools.synthetic_store import write_synthetic_store

    store = tmp_path / "store.zarr"
    write_synthetic_store(store, n_shadows=24, n_samples=300, n_test=60, seed=11, frac_under=0.25,
                          separation={"over": 0.3, "under": 3.0}, analysis={"targets": 0, "fpr": [0.001, 0.01]})
    runs = {}
    monkeypatch.setenv(ENV, "1")
    analyze(store, tmp_path / "1", progress=False)
    runs["1"] = _results(tmp_path / "1")
    monkeypatch.setenv(ENV, "2")  # overridden by the argument
    analyze(store, tmp_path / "3", progress=False, threads=3)
    runs["3"] = _results(tmp_path / "3")
    assert json.loads((tmp_path / "3" / "analysis.json").read_text())["threads"] == 3
    one, three = runs["1"], runs["3"]
    assert len(one["tables"]) > 10 and one["tables"].keys() == three["tables"].keys()
    for name in one["tables"]:
        assert one["tables"][name] == three["tables"][name], name
    assert one["summary"] == three["summary"]
    np.testing.assert_array_equal(one["score"], three["score"])


@pytest.mark.parametrize("threads", [1, 3])
def test_the_pass_runs_on_the_analysis_threads(tmp_path, monkeypatch, threads):
    import threading

    import analysis.store_io.passes as passes
    from analysis.store_io.load import open_shadows
    from analysis.tools.synthetic_store import write_synthetic_store

    write_synthetic_store(tmp_path / "s.zarr", n_shadows=48, n_samples=50_000, n_test=0, seed=1)
    data = open_shadows(tmp_path / "s.zarr")
    assert data.n_shadows // passes.shadows_per_task(data.logits.shape) >= 3  # tasks enough for 3 threads
    seen, task = set(), passes._fold

    def spy(*args, **kwargs):
        seen.add(threading.get_ident())
        return task(*args, **kwargs)

    monkeypatch.setattr(passes, "_fold", spy)
    passes.one_pass(data, 4, threads=threads)
    assert 1 <= len(seen) <= threads and (threads == 1 or len(seen) > 1)

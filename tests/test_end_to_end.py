"""End to end on jobs/smoke.toml, and resuming after a shard is killed mid-way."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import xarray as xr

from mia_hpc import api
from mia_hpc.cli import main
from mia_hpc.contract.spec import load_spec, spec_from_dict
from mia_hpc.contract.store import done_mask, open_store

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "jobs" / "smoke.toml"
# Different processes may use different thread counts, which reorders float sums in the conv
# kernels; measured differences are 0 to ~1e-7. A wrong shadow (other data/seed) differs by > 1e-2.
RESUME_ATOL = 1e-5


def test_smoke_end_to_end_through_cli(tmp_path, capsys):
    out = tmp_path / "smoke"
    assert main(["run", str(SMOKE), "--out", str(out)]) == 0  # submitit LocalExecutor: real subprocesses
    spec = load_spec(SMOKE)
    ds = xr.open_zarr(out / "store.zarr")
    m, n = spec.shadows.count, spec.data.size
    assert dict(ds.sizes)["shadow"] == m
    assert ds.logits.dims == ("shadow", "sample", "query", "class")
    assert ds.sizes["query"] == 5 and ds.sizes["class"] == 10
    assert ds.done.values.all()
    keep = ds.keep.values
    pool = ds.split.values == "train"
    assert pool.sum() == n
    assert (keep[:, pool].sum(0) == m // 2).all() and not keep[:, ~pool].any()
    assert np.isfinite(ds.logits.values).all()
    # shadow 0's penultimate features, for subpopulation selection (CNN32 width 8, 2 scales: 32)
    assert ds.features.dims == ("sample", "feature") and ds.features.shape == (len(ds.sample), 32)
    assert np.isfinite(ds.features.values).all() and ds.features.values.std() > 0
    assert (ds.group.values == "under").sum() == spec.n_under + spec.data.test_under
    printed = capsys.readouterr().out
    assert f"{m}/{m} shadows done" in printed
    for row in ("lira-online", "lira-offline", "lira-fixed-variance"):
        assert row in printed
    tables = out / "analysis" / "tables"
    assert (tables / "attacks.csv").is_file() and (tables / "attacks.md").is_file()
    # the run's last line is the report's real path; a complete store gets no "k of M shadows done" warning
    report = out / "analysis" / "report" / "index.html"
    assert printed.strip().splitlines()[-1] == f"report: {report}" and report.is_file()
    assert "shadows done:" not in printed


def _resume_spec(tmp_path) -> Path:
    # batch 1: every shadow is written on its own, so a kill can land between two shadows of a shard
    p = tmp_path / "resume.toml"
    p.write_text(SMOKE.read_text().replace("batch = 4", "batch = 1"))
    return p


def test_resume_after_sigkill_equals_uninterrupted(tmp_path):
    spec_path = _resume_spec(tmp_path)
    spec = load_spec(spec_path)
    full = api.run(spec_path, tmp_path / "a", executor="debug", analyze=False, progress=False)
    assert full["trained"] == list(range(spec.shadows.count))

    from mia_hpc.pipeline.experiment import prepare_store

    store = tmp_path / "b" / "store.zarr"
    prepare_store(spec, store)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "mia_hpc.cli", "train-shard", str(store), "--shard", "1", "--of", "2",
           "--threads", "1"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    root = open_store(store)
    deadline = time.time() + 120
    while done_mask(root)[4:].sum() < 1 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = done_mask(root)
    assert not before[:4].any()  # shard 0 never ran
    assert 1 <= before[4:].sum() < 4, before  # killed mid-shard
    ds = xr.open_zarr(store)
    assert np.isfinite(ds.logits.values[before]).all()  # done means fully written

    again = api.run(spec_path, tmp_path / "b", executor="local", analyze=False, progress=False)
    assert again["trained"] == sorted(np.flatnonzero(~before).tolist())  # only the missing shadows
    a = xr.open_zarr(tmp_path / "a" / "store.zarr")
    b = xr.open_zarr(store)
    assert b.done.values.all()
    np.testing.assert_allclose(a.logits.values, b.logits.values, rtol=0, atol=RESUME_ATOL)
    np.testing.assert_array_equal(a.keep.values, b.keep.values)
    np.testing.assert_allclose(a.accuracy.values, b.accuracy.values, atol=1e-6)
    # nothing left to do: a third run trains nothing
    assert api.run(spec_path, tmp_path / "b", executor="debug", analyze=False, progress=False)["trained"] == []


def test_rerun_with_other_spec_refused(tmp_path, capsys):
    spec_path = _resume_spec(tmp_path)
    spec = load_spec(spec_path)
    from mia_hpc.pipeline.experiment import prepare_store

    prepare_store(spec, tmp_path / "r" / "store.zarr")
    other = tmp_path / "other.toml"
    other.write_text(spec_path.read_text().replace("epochs = 2", "epochs = 3"))
    assert main(["run", str(other), "--out", str(tmp_path / "r"), "--executor", "debug"]) == 2
    err = capsys.readouterr().err
    assert "different spec" in err and len(err.strip().splitlines()) == 1


def test_status_lists_shards(tmp_path, capsys):
    spec = spec_from_dict({"data": {"size": 100, "alpha": 0.8, "test_under": 10},
                           "shadows": {"count": 6, "shards": 3}})
    from mia_hpc.pipeline.experiment import prepare_store

    prepare_store(spec, tmp_path / "s.zarr")
    assert main(["status", str(tmp_path / "s.zarr")]) == 0
    out = capsys.readouterr().out
    assert "0/6 shadows done" in out and out.count("pending") == 3


def test_status_rate_and_eta():
    from mia_hpc.api import Status, finish_rate

    assert finish_rate(np.array([np.nan, 100.0])) is None
    assert finish_rate(np.array([0.0, 1800.0, 3600.0, np.nan])) == 2.0  # 2 intervals in one hour
    st = Status(Path("s"), 3, 7, [], 2.0, 2.0)
    assert "2.0 shadows/h, ETA 2.0 h" in st.lines()[0]

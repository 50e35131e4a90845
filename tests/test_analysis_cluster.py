"""``mia-hpc analyze --cluster PROFILE``: the analysis on a dask-jobqueue SLURMCluster of Slurm worker jobs.

On the real single-node test cluster (the ``slurm_cluster`` fixture of tests/test_slurm.py: skips
locally without Slurm, FAILS under ``CI=true``): the tables of ``analyze --cluster`` with 2 worker
jobs are bit-identical to the local analysis' and no worker job is left in the queue, also when the
analysis fails. The profile -> SLURMCluster translation is checked without a cluster.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mia_hpc.launch.profile import profile_from_dict
from test_slurm import _unavailable, slurm_cluster, wait_gone  # noqa: F401 (the cluster fixture: skip locally, fail under CI)

REPO = Path(__file__).resolve().parents[1]
LOCAL = REPO / "slurm" / "profiles" / "local-test.toml"


@pytest.fixture(scope="module")
def jobqueue():
    try:
        import dask_jobqueue  # noqa: F401
    except ImportError:
        _unavailable("dask-jobqueue not installed (pip install -r requirements.lock)")


@pytest.fixture(scope="module")
def small_store(tmp_path_factory) -> Path:
    from analysis.tools.synthetic_store import write_synthetic_store

    path = tmp_path_factory.mktemp("cluster") / "store.zarr"
    write_synthetic_store(path, n_shadows=8, n_samples=200, n_test=40, seed=3)
    return path


def test_profile_to_cluster_arguments(jobqueue):
    """Every resource of the profile reaches the worker job script; the container prefixes the worker command."""
    from dask_jobqueue import SLURMCluster

    from mia_hpc.launch.dask_slurm import cluster_kwargs

    prof = profile_from_dict({"partition": "cpu", "account": "proj1", "cpus_per_task": 3, "mem_gb": 2.5,
                              "time_min": 90, "sbatch_options": ["--qos=low"], "gpus_per_task": 1,
                              "container": "apptainer exec --bind /scratch /img/mia.sif",
                              "setup": ["module load x"]})
    kw = cluster_kwargs(prof, log_dir="/tmp/logs here")
    cluster = SLURMCluster(**kw)
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    for line in ("#SBATCH -p cpu", "#SBATCH -A proj1", "#SBATCH --cpus-per-task=3", "#SBATCH --mem=2560M",
                 "#SBATCH -t 01:30:00", "#SBATCH --qos=low", "module load x"):
        assert line in script, (line, script)
    assert "gpu" not in script.lower()  # the analysis holds no GPU
    worker = next(ln for ln in script.splitlines() if "distributed.cli.dask_worker" in ln)
    assert worker.startswith("apptainer exec --bind /scratch /img/mia.sif python -m distributed.cli.dask_worker")
    assert "--nthreads 3" in worker


def test_analyze_on_slurm_cluster_matches_local(slurm_cluster, jobqueue, small_store, tmp_path):  # noqa: F811
    """2 worker jobs: every table (csv/md) bit-identical to the local run; no worker job left afterwards."""
    from analysis import analyze

    local = tmp_path / "local"
    analyze(small_store, local, progress=False)
    env = {**os.environ, "SLURM_CONF": slurm_cluster}
    out = tmp_path / "cluster"
    p = subprocess.run([sys.executable, "-m", "mia_hpc.cli", "analyze", str(small_store), "--out", str(out),
                        "--cluster", str(LOCAL), "--workers", "2"], capture_output=True, text=True, env=env,
                       cwd=tmp_path, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    m = re.search(r"worker job\(s\) ([0-9, ]+) cancelled", p.stderr)
    assert m, p.stderr[-3000:]
    jobs = [j.strip() for j in m.group(1).split(",")]
    assert len(jobs) == 2, p.stderr[-3000:]
    wait_gone(jobs, timeout=60)  # scancel'ed: gone once Slurm has finished them (fails otherwise)
    assert not (tmp_path / "cluster.dask-workers").exists()  # logs removed after a clean run
    assert not list(tmp_path.glob("slurm-*.out"))

    names = sorted(f.relative_to(local) for f in local.rglob("*") if f.suffix in (".csv", ".md"))
    assert any(str(n).startswith("tables/") for n in names)
    assert names == sorted(f.relative_to(out) for f in out.rglob("*") if f.suffix in (".csv", ".md"))
    for n in names:
        assert (out / n).read_bytes() == (local / n).read_bytes(), n


def test_cluster_closed_on_error(slurm_cluster, jobqueue, tmp_path):  # noqa: F811
    """An error inside the block cancels every worker job and keeps the worker logs."""
    from mia_hpc.launch.dask_slurm import slurm_dask_client
    from mia_hpc.launch.profile import load_profile

    logs = tmp_path / "logs"
    with pytest.raises(RuntimeError, match="boom"):
        with slurm_dask_client(load_profile(LOCAL), workers=2, log_dir=logs, wait_s=120, verbose=False) as client:
            cluster = client.cluster
            jobs = [str(j.job_id) for j in cluster.workers.values()]
            assert len(jobs) == 2 and all(jobs)
            assert client.submit(sum, [1, 2]).result() == 3
            raise RuntimeError("boom")
    wait_gone(jobs, timeout=60)
    assert logs.is_dir()

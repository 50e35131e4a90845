"""Specs that validate but cannot run here are refused by the real CLI before anything is written.

The estimates are checked against reality: the keep masks' measured peak memory and a trained
store's size on disk stay below them.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tracemalloc
from pathlib import Path

import psutil
from shard_helpers import REPO, make_store, tiny_spec, worker_env

from mia_hpc.contract.keep import make_keep
from mia_hpc.launch.worker import train_shard
from mia_hpc.pipeline.resources import estimate, estimate_samples
from mia_hpc.contract.store import open_store


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mia_hpc.cli", *args], env=worker_env(), cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def test_run_refuses_a_million_shadows_before_writing(tmp_path):
    spec = tmp_path / "huge.toml"
    spec.write_text('name = "huge"\n[shadows]\ncount = 1000000\n')
    out = tmp_path / "out"
    p = _cli("run", str(spec), "--out", str(out), "--no-analyze")
    assert p.returncode == 2, p.stderr
    line = p.stderr.strip()
    assert "\n" not in line and line.startswith("mia-hpc: error: shadows.count = 1000000 x ")
    need = float(re.search(r"([\d.]+) GiB of memory to create the store's keep masks", line)[1])
    assert need > 40  # 1e6 x 1850 samples x 24 bytes of rank arrays, with the margin
    have = float(re.search(r"this machine has ([\d.]+) GiB available", line)[1])
    assert abs(have - psutil.virtual_memory().available / 2**30) < 2
    assert "nothing was written" in line
    assert not out.exists()  # not even the output folder


def test_submission_checks_the_store_filesystem(tmp_path):
    free = shutil.disk_usage(tmp_path).free
    size, q_bytes = 10_000, 33 * 10 * 4  # queries.shift = 8: 33 queries of 10 float32 logits
    n = size + 450 + 200
    count = 2 * (-(-2 * free // (q_bytes * n * 2)))  # even; about twice the free space in logits
    assert count <= 1_000_000, "the store filesystem is too large for this test's spec"
    spec = tmp_path / "wide.toml"
    spec.write_text(f'name = "wide"\n[data]\nsize = {size}\n[queries]\nshift = 8\n'
                    f'[shadows]\ncount = {count}\nkeep_block = 2\n')
    out = tmp_path / "out"
    p = _cli("render-sbatch", str(spec), "--profile", "slurm/profiles/local-test.toml", "--out", str(out))
    assert p.returncode == 2, p.stderr
    line = p.stderr.strip()
    assert "\n" not in line and "of disk for the store (" in line and "GiB free)" in line, line
    need = float(re.search(r"([\d.]+) GiB of disk for the store", line)[1])
    assert need * 2**30 > free
    assert "for the analysis" not in line  # a cluster's analysis does not run here
    assert not out.exists()


def test_estimates_bound_the_keep_masks_memory_and_the_store_on_disk(tmp_path):
    spec = tiny_spec(count=4, shards=1, batch=2)
    n = estimate_samples(spec)
    tracemalloc.start()
    make_keep(spec.shadows.count * 64, [True] * n, 0)  # numpy reports its buffers to tracemalloc
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    big = estimate(tiny_spec(count=4 * 64, shards=1, batch=2))
    assert peak <= big.create_memory <= 2 * peak

    store = make_store(spec, tmp_path / "store.zarr")
    train_shard(store, 0, 1, device="cpu", progress=False)
    on_disk = sum(f.stat().st_size for f in Path(store).rglob("*") if f.is_file())
    need = estimate(spec)
    assert need.samples >= open_store(store)["label"].shape[0]
    assert on_disk <= need.disk


def test_the_analysis_needs_its_budget_at_most():
    """The analysis streams what grows with the store within ``analyze --memory-gb`` (issue 18): the
    paper's CIFAR-10 spec (73 GB of logits) needs the budget, a small spec less."""
    from mia_hpc.contract.settings import ANALYSIS_MEMORY_GB
    from mia_hpc.contract.spec import load_spec
    from mia_hpc.pipeline.resources import GIB, MEMORY_MARGIN, estimate

    budget = int(int(ANALYSIS_MEMORY_GB * GIB) * MEMORY_MARGIN)
    assert estimate(load_spec(REPO / "jobs/paper/cifar10.toml")).analysis_memory == budget
    assert 0 < estimate(load_spec(REPO / "jobs/demo.toml")).analysis_memory < budget

"""Helpers of the worker-reliability tests: tiny real stores and real worker processes.

Shared by test_leases.py, test_bitexact.py, test_kill_resume.py and test_resources.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from mia_hpc.pipeline.experiment import prepare_store
from mia_hpc.contract.spec import Spec, spec_from_dict
from mia_hpc.contract.store import PER_SHADOW, open_store

REPO = Path(__file__).resolve().parents[1]


def tiny_spec(count: int = 4, shards: int = 2, batch: int = 2, **train) -> Spec:
    """The smallest spec the validator takes that still trains a CNN: seconds per shadow on one core."""
    return spec_from_dict({
        "name": "reliability", "seed": 5,
        "data": {"size": 100, "alpha": 0.8, "test_under": 10},
        "model": {"arch": "cnn32", "width": 4},
        "train": {"epochs": 1, "batch_size": 25, **train},
        "shadows": {"count": count, "batch": batch, "shards": shards},
        "queries": {"shift": 0},
        "analysis": {"targets": 0},
    })


def make_store(spec: Spec, path: Path) -> Path:
    """A fresh store of ``spec`` at ``path`` (nothing trained)."""
    prepare_store(spec, path)
    return path


def worker_cmd(store: Path, shard: int, n_shards: int) -> list[str]:
    """The real CLI command one array task runs."""
    return [sys.executable, "-m", "mia_hpc.cli", "train-shard", str(store), "--shard", str(shard), "--of",
            str(n_shards), "--device", "cpu"]


def worker_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIA_HPC_")}
    env["PYTHONPATH"] = str(REPO)
    env.update(extra)
    return env


def start_worker(store: Path, shard: int, n_shards: int, **env: str) -> subprocess.Popen:
    return subprocess.Popen(worker_cmd(store, shard, n_shards), env=worker_env(**env), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run_worker(store: Path, shard: int, n_shards: int, timeout: float = 180, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(worker_cmd(store, shard, n_shards), env=worker_env(**env), cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def shadow_arrays(store: Path) -> dict[str, np.ndarray]:
    """Every array a worker writes, except the wall-clock ``finished_at`` and the digest that covers it."""
    root = open_store(store)
    names = [n for n in PER_SHADOW if n not in ("finished_at", "digest")]
    names += ["features"] if "features" in root else []
    return {n: np.asarray(root[n][...]) for n in names}


def assert_stores_equal(store: Path, ref: Path) -> None:
    """Bit for bit (NaN where NaN), array by array."""
    a, b = shadow_arrays(store), shadow_arrays(ref)
    for name in b:
        x, y = a[name], b[name]
        assert x.dtype == y.dtype and x.shape == y.shape, name
        assert np.array_equal(x.view(np.uint8), y.view(np.uint8)), f"{name} differs from the reference"


# --- workers forked from a warm server ------------------------------------------------------------
# Each worker is a real process running the real CLI (and can really be SIGKILLed), forked from a
# forkserver that imported torch once: tests start dozens of workers without paying torch's import
# (seconds on a loaded two-core machine) each time.

def _cli_child(args: list[str], env: dict[str, str], log: str) -> None:
    os.environ.update(env)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    from mia_hpc.cli import main

    code = main(args)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def forked_worker(store: Path, shard: int, n_shards: int, log: Path, threads: int = 0, **env: str):
    """Start ``mia-hpc train-shard`` (``--threads``, if given) in a process forked from the warm server."""
    import multiprocessing as mp

    ctx = mp.get_context("forkserver")
    # torch._dynamo: the first optimizer built imports it (seconds), so the server imports it once
    ctx.set_forkserver_preload(["torch", "torch._dynamo", "torch.optim", "mia_hpc.cli", "mia_hpc.launch.worker",
                                "mia_hpc.train.batched"])
    args = ["train-shard", str(store), "--shard", str(shard), "--of", str(n_shards), "--device", "cpu"]
    args += ["--threads", str(threads)] if threads else []
    p = ctx.Process(target=_cli_child, args=(args, env, str(log)))
    p.start()
    return p


def run_forked(store: Path, shard: int, n_shards: int, log: Path, timeout: float = 180, **env: str) -> int:
    """Run one forked worker to its end; its exit code (-9: SIGKILLed)."""
    p = forked_worker(store, shard, n_shards, log, **env)
    p.join(timeout)
    if p.exitcode is None:
        p.kill()
        raise TimeoutError(f"worker for shard {shard} still running after {timeout} s; log {log}")
    return p.exitcode

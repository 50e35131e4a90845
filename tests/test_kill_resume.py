"""Real SIGKILLs of real workers at every point of a shadow's life, and of the driver of local workers.

After each kill the shard is re-run and the store must equal an uninterrupted run's bit for bit
(a half-written shadow is redone, a finished one is kept, the dead worker's lease is taken over at
once). Killing ``mia-hpc run`` with SIGKILL must take its local workers down with it, so a re-run
never trains a shard twice at once.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from shard_helpers import REPO, assert_stores_equal, make_store, run_forked, tiny_spec, worker_env

from mia_hpc.launch.leases import lease_dir, pid_alive, read_lease
from mia_hpc.contract.store import done_mask, open_store

# shadow 0 also writes the features; batch 1: each shadow is written before the next one trains
ARRAYS = ("logits", "accuracy", "train_loss", "finished_at", "features", "done")
WRITES = [f"write:{name}@{s}" for s in (0, 1) for name in ARRAYS if s == 0 or name != "features"]
NAMED = ["load", "train", *WRITES, "done@0", "done@1"]
TIMED = 10  # SIGKILLs at random times during training


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """(pristine store, the same store trained without interruption, seconds that training took)."""
    base = tmp_path_factory.mktemp("kill")
    pristine = make_store(tiny_spec(count=2, shards=1, batch=1), base / "pristine" / "store.zarr")
    ref = base / "ref" / "store.zarr"
    shutil.copytree(pristine, ref)
    assert run_forked(ref, 0, 1, base / "ref.log") == 0, (base / "ref.log").read_text()
    timed = base / "timed" / "store.zarr"  # a second run, the server warm: how long a worker lives
    shutil.copytree(pristine, timed)
    t0 = time.perf_counter()
    assert run_forked(timed, 0, 1, base / "ref.log") == 0, (base / "ref.log").read_text()
    return pristine, ref, time.perf_counter() - t0


def test_sigkill_anywhere_then_rerun_equals_an_uninterrupted_run(stores, tmp_path):
    pristine, ref, seconds = stores
    rng = np.random.default_rng(0)
    points = NAMED + [f"train+{d:.3f}" for d in rng.uniform(0, 0.5 * seconds, TIMED)]
    killed = []
    for i, point in enumerate(points):
        store = tmp_path / f"run{i}" / "store.zarr"
        shutil.copytree(pristine, store)
        log = tmp_path / f"run{i}.log"
        code = run_forked(store, 0, 1, log, MIA_HPC_KILL_AT=point)
        if "+" not in point:  # every named point is reached: the worker must have died there
            assert code == -signal.SIGKILL, f"{point}: exit {code}; log:\n{log.read_text()}"
        if code == -signal.SIGKILL:
            killed.append(point)
            assert point == "done@1" or not done_mask(open_store(store)).all(), point
        assert run_forked(store, 0, 1, log) == 0, f"re-run after {point}: {log.read_text()}"
        assert done_mask(open_store(store)).all(), point
        assert_stores_equal(store, ref)
        assert not list(lease_dir(store).iterdir()), f"{point}: a lease was left behind"
        shutil.rmtree(store.parent)
    assert len(killed) >= 20, f"only {len(killed)} kills happened: {killed}"


def _write_spec(path: Path, epochs: int) -> Path:
    """The tiny spec of :func:`shard_helpers.tiny_spec` as a TOML file, for the CLI."""
    path.write_text(f"""name = "driver-kill"
seed = 5
[data]
size = 100
alpha = 0.8
test_under = 10
[model]
arch = "cnn32"
width = 4
[train]
epochs = {epochs}
batch_size = 25
[shadows]
count = 4
batch = 2
shards = 2
[queries]
shift = 0
[analysis]
targets = 0
""")
    return path


def _live_leases(store: Path) -> list:
    d = lease_dir(store)
    recs = [read_lease(p) for p in d.glob("shard-*.json")] if d.exists() else []
    return [r[0] for r in recs if r is not None]


def test_sigkill_of_the_driver_ends_its_local_workers(tmp_path):
    spec = _write_spec(tmp_path / "spec.toml", epochs=1)
    out = tmp_path / "run"
    store = out / "store.zarr"
    cmd = [sys.executable, "-m", "mia_hpc.cli", "run", str(spec), "--out", str(out), "--no-analyze",
           "--parallel", "2", "--device", "cpu"]
    # the workers hang in training (a slow node): alive, leases held, when the driver is killed
    driver = subprocess.Popen(cmd, env=worker_env(MIA_HPC_STALL_AT="train+600"), cwd=REPO,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while len(workers := _live_leases(store)) < 2:  # both shards leased: both workers run
        assert driver.poll() is None, f"driver ended early: {driver.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, "workers did not start"
        time.sleep(0.2)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    deadline = time.monotonic() + 20
    while alive := [w.pid for w in workers if pid_alive(w.pid, w.pid_start)]:
        assert time.monotonic() < deadline, f"workers {alive} still training 20 s after their driver was killed"
        time.sleep(0.2)
    assert not done_mask(open_store(store)).any()  # they died, they did not just finish

    before = set((out / "logs").rglob("*.err"))
    p = subprocess.run(cmd, env=worker_env(), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert done_mask(open_store(store)).all()
    logs = "".join(f.read_text() for f in set((out / "logs").rglob("*.err")) - before)
    trained = [s for line in logs.splitlines() if "trains shadows" in line
               for s in map(int, line.split("[", 1)[1].rstrip("]").split(", "))]
    assert sorted(trained) == [0, 1, 2, 3], logs  # the re-run trained each shadow once, alone

    ref = tmp_path / "ref" / "store.zarr"  # the same shadows trained serially, shard after shard
    shutil.copytree(store, ref)
    open_store(ref)["done"][...] = np.zeros(4, dtype=bool)
    for shard in (0, 1):
        assert run_forked(ref, shard, 2, tmp_path / "ref.log") == 0
    assert_stores_equal(store, ref)

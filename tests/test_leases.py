"""Shard leases against real files and real processes: one live owner per shard, stale ones taken over.

A second worker for a shard whose owner lives refuses with one line naming it (same host, or
another host whose heartbeat is fresh); a dead owner on this host is taken over at once, one on
another host after the staleness window; many processes racing for one lease (free or stale) leave
exactly one owner.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from shard_helpers import (REPO, assert_stores_equal, forked_worker, make_store, run_forked, run_worker,
                           tiny_spec)

from mia_hpc.contract.errors import LeaseHeld, LeaseLost
from mia_hpc.launch.leases import ShardLease, boot_id, lease_dir, read_lease
from mia_hpc.contract.store import done_mask, open_store


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return make_store(tiny_spec(count=4, shards=2), tmp_path_factory.mktemp("leases") / "store.zarr")


def _write_lease(store: Path, shard: int, n: int, *, host: str, pid: int, age: float = 0.0,
                 boot: str = "") -> Path:
    """A lease file as another worker would have left it, with its heartbeat ``age`` seconds old."""
    path = lease_dir(store) / f"shard-{shard}-of-{n}.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps({"token": "other", "host": host, "pid": pid, "pid_start": "", "taken": time.time(),
                                "shard": shard, "n_shards": n, "shadows": [0, 2], "boot": boot}))
    t = time.time() - age
    os.utime(path, (t, t))
    return path


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_worker_refuses_a_shard_leased_by_a_live_process(store):
    with ShardLease(store, 0, 2, range(0, 2)):
        p = run_worker(store, 0, 2, timeout=120)
    assert p.returncode == 1, p.stderr
    line = p.stderr.strip()
    assert "\n" not in line and line.startswith("mia-hpc: error: shard 0 of 2 of ")
    assert f"pid {os.getpid()} on {socket.gethostname()}" in line
    assert not done_mask(open_store(store)).any()  # nothing trained, nothing written
    assert not list(lease_dir(store).glob("shard-0-*"))  # and our lease is gone after release


def test_fresh_lease_of_another_host_is_respected(store):
    path = _write_lease(store, 1, 2, host="node-b", pid=4242, age=5)
    try:
        with pytest.raises(LeaseHeld, match="pid 4242 on node-b .*heartbeat 5 s ago"):
            ShardLease(store, 1, 2, range(2, 4)).acquire()
        assert json.loads(path.read_text())["token"] == "other"  # not touched
    finally:
        path.unlink()


def test_stale_lease_of_another_host_is_taken_over(store, monkeypatch):
    monkeypatch.setenv("MIA_HPC_LEASE_STALE_S", "30")
    path = _write_lease(store, 1, 2, host="node-b", pid=4242, age=31)
    lease = ShardLease(store, 1, 2, range(2, 4))
    lease.acquire()
    try:
        assert json.loads(path.read_text())["token"] == lease.record.token
    finally:
        lease.release()
    assert not path.exists()


def test_silent_owner_of_another_host_is_waited_out_then_taken_over(store, monkeypatch):
    """A node lost mid-shard: its requeued task must not fail on the lease, it waits until it is stale."""
    monkeypatch.setenv("MIA_HPC_LEASE_HEARTBEAT_S", "0.2")
    monkeypatch.setenv("MIA_HPC_LEASE_STALE_S", "2")
    path = _write_lease(store, 1, 2, host="node-b", pid=4242, age=1)  # five heartbeats missed, not stale yet
    t0 = time.monotonic()
    with ShardLease(store, 1, 2, range(2, 4)) as lease:
        waited = time.monotonic() - t0
        assert json.loads(path.read_text())["token"] == lease.record.token
    assert 0.7 < waited < 10


def test_dead_owner_on_this_host_is_taken_over_at_once(store):
    path = _write_lease(store, 1, 2, host=socket.gethostname(), pid=_dead_pid(), boot=boot_id())  # fresh, owner gone
    with ShardLease(store, 1, 2, range(2, 4)) as lease:
        assert json.loads(path.read_text())["token"] == lease.record.token


def test_same_hostname_on_another_machine_is_not_judged_by_our_process_table(store):
    """Two nodes misconfigured with one hostname: the other's pid means nothing here (boot ids differ)."""
    path = _write_lease(store, 1, 2, host=socket.gethostname(), pid=_dead_pid(), boot="another-machine")
    try:
        with pytest.raises(LeaseHeld):
            ShardLease(store, 1, 2, range(2, 4)).acquire()
    finally:
        path.unlink()


def test_heartbeat_advances_and_a_taken_over_lease_is_lost(store, monkeypatch):
    monkeypatch.setenv("MIA_HPC_LEASE_HEARTBEAT_S", "0.1")
    lease = ShardLease(store, 0, 2, range(0, 2))
    lease.acquire()
    try:
        first = lease.path.stat().st_mtime_ns
        time.sleep(0.5)
        assert lease.path.stat().st_mtime_ns > first
        lease.check()  # still ours
        rec = json.loads(lease.path.read_text())
        rec["token"] = "thief"
        lease.path.write_text(json.dumps(rec))  # what a take-over by another worker leaves
        time.sleep(0.5)
        with pytest.raises(LeaseLost, match="was taken over"):
            lease.check()
    finally:
        lease.release()
    assert lease.path.exists()  # the thief's lease is not removed by the loser
    lease.path.unlink()


def test_a_late_taker_with_an_old_view_leaves_the_new_owner_alone(store, monkeypatch):
    """The interleaving CI met (two racers both won): B judged lease S stale, A took S over first;
    B's take-over must not move A's lease, not even to put it back (its name would be free meanwhile,
    and a third racer would link it while A believes it owns the shard)."""
    monkeypatch.setenv("MIA_HPC_LEASE_STALE_S", "30")
    _write_lease(store, 1, 2, host="node-b", pid=4242, age=31)
    old_view, _ = read_lease(lease_dir(store) / "shard-1-of-2.json")
    a, b = ShardLease(store, 1, 2, range(2, 4)), ShardLease(store, 1, 2, range(2, 4))
    a.acquire()
    try:
        before = os.stat(a.path)
        time.sleep(0.05)  # so that a rename or link would show in the inode's ctime
        b._take_over(old_view)
        after = os.stat(a.path)
        assert (after.st_ino, after.st_ctime_ns) == (before.st_ino, before.st_ctime_ns)
        assert json.loads(a.path.read_text())["token"] == a.record.token
        with pytest.raises(LeaseHeld):
            b.acquire()
        a.check()
    finally:
        a.release()
    assert not list(lease_dir(store).glob(".*"))  # no marker or grave left behind


def test_a_taker_that_died_mid_take_over_does_not_block_the_shard(store, monkeypatch):
    monkeypatch.setenv("MIA_HPC_LEASE_STALE_S", "30")
    path = _write_lease(store, 1, 2, host="node-b", pid=4242, age=31)
    dead = _write_lease(store, 1, 2, host=socket.gethostname(), pid=_dead_pid(), boot=boot_id())
    marker = path.with_name(f".{path.name}.after-other")  # the take-over marker of the stale lease "other"
    dead.rename(marker)
    path = _write_lease(store, 1, 2, host="node-b", pid=4242, age=31)
    with ShardLease(store, 1, 2, range(2, 4)) as lease:
        assert json.loads(path.read_text())["token"] == lease.record.token
    assert not list(lease_dir(store).glob(".*"))


def test_a_live_take_over_marker_is_respected(store, monkeypatch):
    """Another host's worker is inside the take-over of the stale lease: we wait for it rather than race it."""
    monkeypatch.setenv("MIA_HPC_LEASE_STALE_S", "30")
    path = _write_lease(store, 1, 2, host="node-b", pid=4242, age=31)
    marker = path.with_name(f".{path.name}.after-other")
    path.rename(marker)
    os.utime(marker)  # its holder (node-b, pid 4242) is fresh
    path = _write_lease(store, 1, 2, host="node-b", pid=4242, age=31)
    lease = ShardLease(store, 1, 2, range(2, 4))
    try:
        lease._take_over(read_lease(path)[0])
        assert json.loads(path.read_text())["token"] == "other" and marker.exists()  # neither touched
    finally:
        path.unlink()
        marker.unlink()


#: Its ``--racer`` mode is one racer: spin until the gun, take shard 0's lease, print won/held, hold it.
RACER = REPO / "benchmarks" / "lease_race.py"


@pytest.mark.parametrize("stale", [False, True], ids=["free", "stale"])
def test_eight_processes_racing_for_one_lease_leave_one_owner(store, stale):
    if stale:
        _write_lease(store, 0, 2, host="node-b", pid=4242, age=10_000)
    start = time.time() + 8  # every racer imported and spinning when the gun goes off
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, str(RACER), "--racer", str(store), str(start), "6"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(8)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outs]
    said = sorted(o[0].strip() for o in outs)
    assert said == ["held"] * 7 + ["won"], said
    assert not list(lease_dir(store).glob("shard-0-*")) and not list(lease_dir(store).glob(".*"))


def test_eight_workers_racing_for_two_shards_train_each_shadow_once(store, tmp_path):
    """8 real workers, 4 per shard, on a two-core machine: each shadow trained by exactly one of them."""
    race, ref = tmp_path / "race" / "store.zarr", tmp_path / "ref" / "store.zarr"
    shutil.copytree(store, race)
    shutil.copytree(store, ref)
    for shard in (0, 1):  # the serial run
        assert run_forked(ref, shard, 2, tmp_path / "ref.log") == 0
    logs = [tmp_path / f"worker{i}.log" for i in range(8)]
    # each winner dawdles 2 s before training, so the other racers meet its live lease
    procs = [forked_worker(race, i % 2, 2, logs[i], MIA_HPC_STALL_AT="train+2") for i in range(8)]
    for p in procs:
        p.join(300)
    texts = [log.read_text() if log.exists() else "" for log in logs]
    for p, text in zip(procs, texts):
        assert p.exitcode == 0 or (p.exitcode == 1 and "is being trained by pid" in text), text
    starts = [int(s) for text in texts for line in text.splitlines() if "trains shadows" in line
              for s in line.split("[", 1)[1].rstrip("]").split(", ")]
    assert sorted(starts) == [0, 1, 2, 3], "\n".join(texts)
    assert sum(p.exitcode == 1 for p in procs) >= 4, "the racers did not meet"
    assert done_mask(open_store(race)).all()
    assert_stores_equal(race, ref)


def test_sigterm_gives_the_lease_back(store, tmp_path):
    """scancel / a requeue sends SIGTERM: the worker exits through its cleanup, its lease removed at once."""
    work = tmp_path / "store.zarr"
    shutil.copytree(store, work)
    log = tmp_path / "worker.log"
    p = forked_worker(work, 0, 2, log, MIA_HPC_STALL_AT="train+120")
    deadline = time.monotonic() + 120
    while "trains shadows" not in (log.read_text() if log.exists() else ""):
        assert time.monotonic() < deadline and p.is_alive(), log.read_text() if log.exists() else "no log"
        time.sleep(0.1)
    assert list(lease_dir(work).glob("shard-0-*"))
    p.terminate()  # SIGTERM
    p.join(60)
    assert p.exitcode == 128 + 15, log.read_text()
    assert not list(lease_dir(work).glob("shard-0-*"))
    assert not done_mask(open_store(work)).any()

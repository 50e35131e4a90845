"""Stress the shard lease: rounds of N processes racing for one lease, free or left stale by another host.

Each round writes (``--stale``) a lease of a dead owner on another host, starts N bare processes that
spin until one start time and then call ``ShardLease.acquire``; a winner holds the lease for
``--hold`` seconds and releases it. A round is bad if the number of winners is not one or anything is
left in the lease folder afterwards. ``tests/test_leases.py`` runs one round of each case; this runs
many, to put a number on a race that shows once in tens of rounds (run it against an older checkout
with ``--repo`` to compare).

    python benchmarks/lease_race.py --rounds 40 --stale
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

def race(store: str, gun: float, hold: float) -> int:
    """One racer: spin until ``gun``, take shard 0 of 2's lease, print won/held, hold it ``hold`` s."""
    from mia_hpc.contract.errors import LeaseHeld
    from mia_hpc.launch.leases import ShardLease

    lease = ShardLease(store, 0, 2, range(0, 2))
    while time.time() < gun:
        pass
    try:
        lease.acquire()
    except LeaseHeld:
        print("held")
        return 0
    print("won", flush=True)
    time.sleep(hold)
    lease.release()
    return 0


def racers(store: Path, n: int, hold: float, repo: str = str(ROOT)) -> list[subprocess.Popen]:
    """``n`` racer processes for ``store``'s lease, their start gun 2.5 s away (all imported and spinning by then)."""
    gun = time.time() + 2.5
    env = {**os.environ, "PYTHONPATH": repo}
    return [subprocess.Popen([sys.executable, __file__, "--racer", str(store), str(gun), str(hold)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(n)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--racers", type=int, default=8)
    p.add_argument("--hold", type=float, default=1.5, help="seconds a winner holds the lease")
    p.add_argument("--stale", action="store_true", help="each round starts from a stale lease of another host")
    p.add_argument("--repo", default=str(ROOT), help="the checkout whose mia_hpc is raced")
    p.add_argument("--racer", nargs=3, metavar=("STORE", "GUN", "HOLD"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.racer:
        return race(args.racer[0], float(args.racer[1]), float(args.racer[2]))
    leases = Path(tempfile.mkdtemp()) / "store.zarr.leases"
    leases.mkdir()
    bad = 0
    t0 = time.time()
    for r in range(args.rounds):
        if args.stale:
            lease = leases / "shard-0-of-2.json"
            lease.write_text(json.dumps({"token": f"dead{r}", "host": "node-b", "pid": 4242, "pid_start": "",
                                         "taken": time.time(), "shard": 0, "n_shards": 2, "shadows": [0, 2],
                                         "boot": ""}))
            os.utime(lease, (time.time() - 10_000,) * 2)
        procs = racers(leases.with_suffix(""), args.racers, args.hold, args.repo)
        outs = [q.communicate() for q in procs]
        won = sum(o[0].strip() == "won" for o in outs)
        errors = [o[1].strip().splitlines()[-1] for o in outs if o[1].strip()]
        left = sorted(f.name for f in leases.iterdir())
        if won != 1 or left or errors:
            bad += 1
            print(f"round {r}: {won} winners, left {left}, errors {errors}", flush=True)
    print(f"{bad} bad rounds of {args.rounds} ({args.racers} racers, {'stale' if args.stale else 'free'} lease, "
          f"{time.time() - t0:.0f} s)")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())

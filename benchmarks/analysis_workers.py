"""How much sooner each analysis phase ends with more dask workers: 1 against 2 single-threaded workers.

A synthetic store (``mia-hpc synth-store``, written once under ``--out`` and kept for reruns) is
analysed by ``mia-hpc analyze STORE --scheduler ADDRESS --targets 0`` (its own process, every shadow
a target) against a :class:`dask.distributed.LocalCluster` of 1, then 2 worker processes with one
thread each, started here. The runs go in the order 1, 2, 2, 1 workers, so that a drift of the
machine's load over the runs weighs on both sizes alike; each size's seconds per phase are the
mean of its two runs, from the analysis' own ``analysis.json`` (``timings_s``). The analyze
process itself runs one thread (``MIA_HPC_THREADS=1``), so what speeds up is what runs as dask
tasks: the pass, the scoring attacks, the metrics and the bootstrap tables (see docs/analysis.md).

Prints a markdown table (phase, seconds with 1 and 2 workers, speed-up) and writes it with every
run's timings to ``workers.md`` and ``workers.json`` under ``--out``.

    python benchmarks/analysis_workers.py --out runs/workers --size 256x20000x2
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

from analysis_scaling import parse_size  # the sibling script's: python adds benchmarks/ to the path

ROOT = Path(__file__).resolve().parents[1]
MIA = [sys.executable, "-m", "mia_hpc.cli"]
ORDER = (1, 2, 2, 1)  # workers of each run


def make_store(out: Path, m: int, n: int, q: int) -> Path:
    """The store of this size under ``out/stores`` (written by ``mia-hpc synth-store`` unless there)."""
    store = out / "stores" / f"{m}x{n}x{q}.zarr"
    if not (store / "zarr.json").exists():
        subprocess.run([*MIA, "synth-store", "--out", str(store), "--shadows", str(m), "--samples", str(n),
                        "--test-samples", str(max(20, n // 50)), "--queries", str(q)], check=True, cwd=ROOT)
    return store


def run_once(store: Path, res: Path, workers: int, *, memory_gb: float, quick: bool) -> dict[str, float]:
    """One analysis against a fresh local cluster of ``workers`` single-threaded workers: its ``timings_s``."""
    from analysis.store_io.distributed import client_for

    with client_for(None, n_workers=workers, threads_per_worker=1) as client:
        cmd = [*MIA, "analyze", str(store), "--out", str(res), "--targets", "0", "--memory-gb", str(memory_gb),
               "--scheduler", client.scheduler.address, *(["--quick"] if quick else [])]
        print("$", shlex.join(cmd), flush=True)
        subprocess.run(cmd, check=True, cwd=ROOT, env=dict(os.environ, MIA_HPC_THREADS="1"),
                       stdout=subprocess.DEVNULL)
    return json.loads((res / "analysis.json").read_text())["timings_s"]


def table(runs: list[tuple[int, dict[str, float]]]) -> str:
    """Markdown: per phase, the mean seconds with 1 and 2 workers and their ratio."""
    phases = list(dict.fromkeys(k for _, t in runs for k in t))
    mean = {w: {p: sum(t.get(p, 0.0) for x, t in runs if x == w) / sum(1 for x, _ in runs if x == w)
                for p in phases} for w in sorted({w for w, _ in runs})}
    lines = ["| phase | 1 worker (s) | 2 workers (s) | speed-up |", "|---|---:|---:|---:|"]
    for p in phases:
        a, b = mean[1][p], mean[2][p]
        lines.append(f"| {p} | {a:.2f} | {b:.2f} | {a / b:.2f} |" if b > 0 else f"| {p} | {a:.2f} | {b:.2f} | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "workers", help="store, analyses and the table")
    ap.add_argument("--size", default="256x20000x2", help="SHADOWSxSAMPLESxQUERIES (default 256x20000x2)")
    ap.add_argument("--memory-gb", type=float, default=3.0, help="analyze --memory-gb (default 3)")
    ap.add_argument("--quick", action="store_true", help="analyze --quick (no paper extras, no bootstrap)")
    args = ap.parse_args(argv)
    m, n, q = parse_size(args.size, "--size")
    args.out.mkdir(parents=True, exist_ok=True)
    store = make_store(args.out, m, n, q)
    runs = [(w, run_once(store, args.out / "analyses" / f"run{i}-{w}w", w, memory_gb=args.memory_gb,
                         quick=args.quick)) for i, w in enumerate(ORDER)]
    md = table(runs)
    print(md)
    head = (f"{args.size}, every shadow a target, --memory-gb {args.memory_gb}{', --quick' if args.quick else ''}; "
            f"runs in the order {', '.join(map(str, ORDER))} workers, mean of two runs each; "
            f"{platform.node()}, {os.cpu_count()} CPUs, {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC")
    (args.out / "workers.md").write_text(f"{head}\n\n{md}\n")
    (args.out / "workers.json").write_text(json.dumps({"command": shlex.join(sys.argv), "size": args.size,
                                                       "order": ORDER, "runs": [t for _, t in runs],
                                                       "memory_gb": args.memory_gb, "quick": args.quick}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""How the analysis' time and peak memory grow with the store: a few sizes, one line fit each.

For each size (``SHADOWS x SAMPLES x QUERIES``, 10 classes) a synthetic store is written once under
``--out`` (``mia-hpc synth-store``, kept for reruns) and analysed by ``mia-hpc analyze`` in its own
process with every shadow a target (``--targets 0``). The figures come from the analysis' own
``analysis.json`` (``timings_s`` and ``peak_rss_gib`` per phase, measured inside that run), so one
table holds every size of one run on one machine. Then a least-squares line of wall time and of
peak RSS against the store's logits size (GB, uncompressed) is fitted per series: a slope near zero
for the memory is what "bounded by the budget, not by the store" means.

Writes ``scaling.csv`` (one row per size), ``scaling.md`` (the table and the fits) and
``scaling.json`` (command, date, machine, budget) under ``--out``.

    python benchmarks/analysis_scaling.py --out runs/scaling \\
        --sizes 100x51000x18 200x51000x18 400x51000x18 --memory-gb 3
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

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MIA = [sys.executable, "-m", "mia_hpc.cli"]


def parse_size(text: str, option: str = "--sizes") -> tuple[int, int, int]:
    """``"200x51000x18"`` -> (shadows, train samples, queries); ``option`` names the flag in errors."""
    try:
        m, n, q = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise SystemExit(f"{option}: expected SHADOWSxSAMPLESxQUERIES like 200x51000x18, got {text!r}") from None
    if m < 2 or m % 2 or n < 20 or q < 1:
        raise SystemExit(f"{option}: {text!r}: shadows must be even and >= 2, samples >= 20, queries >= 1")
    return m, n, q


def _complete(store: Path) -> bool:
    """Every shadow of the store is done (a synth-store cut short leaves some not done)."""
    import zarr

    return bool(np.asarray(zarr.open_group(str(store), mode="r")["done"][:]).all())


def run_size(out: Path, m: int, n: int, q: int, *, logits: str, memory_gb: float, quick: bool,
             threads: int | None) -> dict:
    """Write (or reuse) the store of this size and analyse it; the analysis' own figures."""
    tag = f"{m}x{n}x{q}-{logits}"
    store = out / "stores" / f"{tag}.zarr"
    if store.exists() and not _complete(store):
        raise SystemExit(f"{store}: an earlier synth-store did not finish; remove it and run again")
    if not store.exists():
        subprocess.run([*MIA, "synth-store", "--out", str(store), "--shadows", str(m), "--samples", str(n),
                        "--test-samples", str(max(20, n // 50)), "--queries", str(q), "--logits", logits],
                       check=True, cwd=ROOT)
    res = out / "analyses" / f"{tag}{'-quick' if quick else ''}"
    env = dict(os.environ, **({"MIA_HPC_THREADS": str(threads)} if threads else {}))
    cmd = [*MIA, "analyze", str(store), "--out", str(res), "--targets", "0", "--memory-gb", str(memory_gb),
           *(["--quick"] if quick else [])]
    print("$", shlex.join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT, env=env)
    summary = json.loads((res / "analysis.json").read_text())
    logits_gb = m * (n + max(20, n // 50)) * q * 10 * 4 / 1e9
    t, p = summary["timings_s"], summary["peak_rss_gib"]
    return {"size": tag, "shadows": m, "samples": n, "queries": q, "logits_gb": logits_gb,
            "wall_s": t["total"], "peak_rss_gib": p["total"],
            "worst_phase": max((k for k in p if k != "total"), key=lambda k: p[k], default=""),
            **{f"s_{k}": v for k, v in t.items() if k != "total"},
            **{f"gib_{k}": v for k, v in p.items() if k != "total"}}


def fit(x: list[float], y: list[float]) -> tuple[float, float]:
    """Least-squares line ``y = a + b x``: (a, b)."""
    if len(x) < 2:
        return float("nan"), float("nan")
    b, a = np.polyfit(np.asarray(x, dtype=float), np.asarray(y, dtype=float), 1)
    return float(a), float(b)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "scaling", help="stores, analyses and the tables")
    ap.add_argument("--sizes", nargs="+", required=True, help="SHADOWSxSAMPLESxQUERIES, e.g. 200x51000x18")
    ap.add_argument("--logits", choices=("realistic", "compressible"), default="compressible",
                    help="synthetic logits (compressible: ~8x smaller on disk; the analysis' memory is the same)")
    ap.add_argument("--memory-gb", type=float, default=3.0, help="analyze --memory-gb (default 3)")
    ap.add_argument("--quick", action="store_true", help="analyze --quick (no paper extras)")
    ap.add_argument("--threads", type=int, default=None, help="MIA_HPC_THREADS of the analyses (default: all cores)")
    args = ap.parse_args(argv)
    sizes = [parse_size(s) for s in args.sizes]
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for m, n, q in sizes:
        rows.append(run_size(args.out, m, n, q, logits=args.logits, memory_gb=args.memory_gb, quick=args.quick,
                             threads=args.threads))
        import pandas as pd

        pd.DataFrame(rows).to_csv(args.out / "scaling.csv", index=False)  # a run cut short keeps what it measured
    gb = [r["logits_gb"] for r in rows]
    a_t, b_t = fit(gb, [r["wall_s"] for r in rows])
    a_m, b_m = fit(gb, [r["peak_rss_gib"] for r in rows])
    lines = ["| store (shadows x samples x queries x 10) | logits GB | wall s | peak RSS GiB | largest phase |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['shadows']} x {r['samples']} x {r['queries']} | {r['logits_gb']:.3g} | {r['wall_s']:.0f} | "
              f"{r['peak_rss_gib']:.2f} | {r['worst_phase']} |" for r in rows]
    lines += ["", f"Fit over {len(rows)} sizes: wall = {a_t:.1f} s + {b_t:.2f} s/GB x logits GB; "
                  f"peak RSS = {a_m:.2f} GiB + {b_m:.4f} GiB/GB x logits GB (budget {args.memory_gb:g} GiB)."]
    (args.out / "scaling.md").write_text("\n".join(lines) + "\n")
    meta = {"command": shlex.join([sys.executable, *sys.argv]), "date": dt.datetime.now().isoformat(timespec="seconds"),
            "machine": f"{platform.node()} {os.cpu_count()} cores", "memory_gb": args.memory_gb,
            "logits": args.logits, "quick": args.quick,
            "fit": {"wall_s": {"intercept": a_t, "per_gb": b_t}, "peak_rss_gib": {"intercept": a_m, "per_gb": b_m}}}
    (args.out / "scaling.json").write_text(json.dumps(meta, indent=2) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

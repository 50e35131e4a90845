"""``mia-hpc bench analyze``: how much more than one read of the logits does the analysis cost?

On a synthetic store (written here, or reused with ``store=``) of M shadows x N samples x C classes
(default 2000 x 20,000 x 10, one query: the issue's benchmark), measures, each in a fresh
subprocess so that memory figures are the analysis' own:

* ``read_s``: wall time to read the store's logits once the way the analysis reads them (blocks of
  whole shadows, one zarr read each: :meth:`analysis.store_io.load.ShadowData.logits_blocks`, summed with
  dask's threaded scheduler), measured before and after the analysis (the page cache is then as
  warm for the read as for the analysis); the smaller of the two is reported. ``read_xarray_s``:
  the same through xarray's graph (one dask task per store chunk), slower, for reference;
* ``analyze_s``: wall time of the whole :func:`analysis.output.report.analyze` (tables, plots, JSON);
* ``ratio`` = analyze_s / read_s (aim: <= 3); ``ratio_xarray`` = analyze_s / read_xarray_s;
* ``timings_s``: the wall seconds of the analysis' phases, measured inside it (``analysis.json``);
* ``peak_rss_gib``: the analysis process' peak resident memory (``getrusage(RUSAGE_SELF).ru_maxrss``
  reported by the child itself, cross-checked with ``RUSAGE_CHILDREN`` in the parent) (aim: <= 2 GiB).

Also the synthetic store's write time and size, and which logits it holds (``logits``: the
store's ``synthetic`` attribute, ``"realistic"`` by default, compressing like trained logits, or
``"compressible"``; see :mod:`analysis.tools.synthetic_store`) with the logits' compression ratio
(``logits_compression``: uncompressed bytes / the logits array's bytes on disk). Torch-free.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from analysis.kernels.threads import n_threads
from analysis.tools.synthetic_store import LOGITS_KINDS, write_synthetic_store

__all__ = ["bench_analyze", "format_bench_analyze", "AIM_RATIO", "AIM_RSS_GIB"]

AIM_RATIO = 3.0
AIM_RSS_GIB = 2.0

_CHILD_READ = """
import json, resource, sys, time, warnings
warnings.filterwarnings("ignore", message="Consolidated metadata")
t0 = time.perf_counter()
from analysis.store_io.load import open_shadows
from analysis.store_io.passes import shadows_per_task
data = open_shadows(sys.argv[1])
z = data.logits.data
t1 = time.perf_counter()
res = {"open_s": t1 - t0, "nbytes": int(z.nbytes)}
# the analysis' own reader (blocks of whole shadows, one zarr read each), then xarray's graph
for name, arr in (("read_s", data.logits_blocks(shadows_per_task(z.shape))), ("read_xarray_s", z)):
    t = time.perf_counter()
    res["total"] = float(arr.sum(dtype="float64").compute(scheduler="threads"))
    res[name] = time.perf_counter() - t
res["maxrss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
print(json.dumps(res))
"""

_CHILD_ANALYZE = """
import json, resource, sys, time, warnings
warnings.filterwarnings("ignore", message="Consolidated metadata")
t0 = time.perf_counter()
from analysis.output.report import analyze
t1 = time.perf_counter()
targets = None if sys.argv[3] == "spec" else int(sys.argv[3])
extras = sys.argv[5] == "1"
threads = int(sys.argv[6])
if sys.argv[4]:
    from analysis.store_io.distributed import client_for
    with client_for(sys.argv[4]):
        analyze(sys.argv[1], sys.argv[2], targets=targets, progress=False, extras=extras, threads=threads)
else:
    analyze(sys.argv[1], sys.argv[2], targets=targets, progress=False, extras=extras, threads=threads)
t2 = time.perf_counter()
print(json.dumps({"analyze_s": t2 - t1, "import_s": t1 - t0,
                  "maxrss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))
"""


def _child(code: str, *args: str, timeout: float | None = None) -> dict[str, Any]:
    root = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", ""), "MPLBACKEND": "Agg"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env,
                       timeout=timeout, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"bench child failed (exit {r.returncode}):\n{r.stderr[-4000:]}")
    res = json.loads(r.stdout.strip().splitlines()[-1])
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    # RUSAGE_CHILDREN is the max over all children so far: only informative when it grew
    res["children_maxrss_gib"] = after / 2**20 if after > before else None
    return res


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def bench_analyze(store: str | Path | None = None, *, shadows: int = 2000, samples: int = 20000, classes: int = 10,
                  queries: int = 1, targets: int | None = None, workdir: str | Path | None = None,
                  keep: bool = False, scheduler: str | None = None, seed: int = 0, extras: bool = True,
                  threads: int | None = None, log=print, logits: str = "realistic") -> dict[str, Any]:
    """Run the benchmark; return its figures (see the module docstring).

    Parameters
    ----------
    store : path, optional
        An existing store to analyse (its size is read from it); default: write a synthetic one.
    shadows, samples, classes, queries : int
        Size of the synthetic store (ignored with ``store``).
    targets : int, optional
        Target shadows for the LiRA evaluation; default the spec's (0 = all done shadows).
    workdir : path, optional
        Where the synthetic store and the analysis output go (default: a temporary directory,
        removed at the end unless ``keep``).
    keep : bool
        Keep the synthetic store and the analysis output.
    scheduler : str, optional
        Run the analysis on this dask distributed scheduler (``"local"``: a 2-process LocalCluster).
    extras : bool
        Time the whole analysis with the paper extras (default), or ``analyze --quick``.
    threads : int, optional
        The analysis' threads; default :func:`analysis.kernels.threads.n_threads` (read once here).
    log : callable
        Progress lines (``print`` by default; ``None`` for silence).
    logits : {"realistic", "compressible"}
        The synthetic store's kind of logits (ignored with ``store``, whose own kind is reported).
    """
    if logits not in LOGITS_KINDS:
        raise ValueError(f"logits: one of {', '.join(LOGITS_KINDS)}, got {logits!r}")
    log = log or (lambda *_: None)
    threads = n_threads() if threads is None else int(threads)
    own_tmp = workdir is None
    work = Path(tempfile.mkdtemp(prefix="mia-bench-analyze-")) if own_tmp else Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    res: dict[str, Any] = {"aim_ratio": AIM_RATIO, "aim_rss_gib": AIM_RSS_GIB, "cpus": os.cpu_count(),
                           "threads": threads,
                           "scheduler": scheduler or "threads", "extras": bool(extras)}
    try:
        if store is None:
            store = work / f"store_{shadows}x{samples}x{classes}x{queries}_{logits}.zarr"
            if store.exists():
                log(f"reusing {store}")
                res["write_s"] = None
            else:
                log(f"writing a synthetic store {shadows} shadows x {samples} samples x {classes} classes x "
                    f"{queries} queries to {store} ({4 * shadows * samples * classes * queries / 1e9:.2f} GB of "
                    f"{logits} logits)")
                t = time.perf_counter()
                write_synthetic_store(store, n_shadows=shadows, n_samples=samples, n_classes=classes,
                                      n_queries=queries, seed=seed, logits=logits)
                res["write_s"] = time.perf_counter() - t
        store = Path(store)
        import xarray as xr

        ds = xr.open_zarr(store, consolidated=True)
        kind = (ds.attrs.get("synthetic") or {}).get("logits")
        logits_disk = _du(store / "logits")
        res.update({"store": str(store), "store_bytes_on_disk": _du(store),
                    "shape": {k: int(v) for k, v in ds["logits"].sizes.items()},
                    "logits_bytes": int(ds["logits"].nbytes), "logits_bytes_on_disk": logits_disk,
                    "logits_compression": int(ds["logits"].nbytes) / max(logits_disk, 1),
                    # a trained store, or a synthetic one written before the kinds: no 'synthetic' attribute
                    "logits": kind or "not synthetic (or unrecorded)"})
        log(f"logits: {res['logits']}, compression {res['logits_compression']:.2f}x")
        out = work / "analysis"
        shutil.rmtree(out, ignore_errors=True)

        log("reading the logits once (warm-up read) ...")
        r1 = _child(_CHILD_READ, str(store))
        log(f"  {r1['read_s']:.2f} s (xarray's chunk graph: {r1['read_xarray_s']:.2f} s)")
        log(f"running analyze (targets: {'spec' if targets is None else targets}) ...")
        a = _child(_CHILD_ANALYZE, str(store), str(out), "spec" if targets is None else str(int(targets)),
                   "" if scheduler is None else scheduler, "1" if extras else "0", str(threads))
        log(f"  {a['analyze_s']:.2f} s, peak RSS {a['maxrss_gib']:.2f} GiB")
        log("reading the logits once more ...")
        r2 = _child(_CHILD_READ, str(store))
        log(f"  {r2['read_s']:.2f} s (xarray's chunk graph: {r2['read_xarray_s']:.2f} s)")
        summary = json.loads((out / "analysis.json").read_text())
        read_s = min(r1["read_s"], r2["read_s"])
        read_x = min(r1["read_xarray_s"], r2["read_xarray_s"])
        res.update({"read_s": read_s, "read_s_runs": [r1["read_s"], r2["read_s"]],
                    "read_xarray_s": read_x, "ratio_xarray": a["analyze_s"] / read_x,
                    "read_gb_per_s": r1["nbytes"] / read_s / 1e9, "read_peak_rss_gib": max(r1["maxrss_gib"], r2["maxrss_gib"]),
                    "analyze_s": a["analyze_s"], "analyze_import_s": a["import_s"],
                    "ratio": a["analyze_s"] / read_s, "peak_rss_gib": a["maxrss_gib"],
                    "n_targets": summary.get("n_targets"), "n_shadows_done": summary.get("n_shadows_done"),
                    "timings_s": summary.get("timings_s", {}),
                    "phase_rss_gib": summary.get("phase_rss_gib", {}),
                    "analysis_out": str(out) if keep or not own_tmp else None})
        res["meets_ratio"] = res["ratio"] <= AIM_RATIO
        res["meets_rss"] = res["peak_rss_gib"] <= AIM_RSS_GIB
        return res
    finally:
        if own_tmp and not keep:
            shutil.rmtree(work, ignore_errors=True)


def format_bench_analyze(r: dict[str, Any]) -> str:
    """Human-readable report of :func:`bench_analyze`."""
    sh = r["shape"]
    ok = lambda b: "ok" if b else "MISSED"  # noqa: E731
    lines = [f"bench analyze: {sh.get('shadow')} shadows x {sh.get('sample')} samples x {sh.get('query')} queries x "
             f"{sh.get('class')} classes ({r['logits_bytes'] / 1e9:.2f} GB of logits, "
             f"{r['store_bytes_on_disk'] / 1e9:.2f} GB on disk; {r.get('logits', '?')} logits, "
             f"compression {r.get('logits_compression', float('nan')):.2f}x), {r['n_targets']} targets, "
             f"{r['cpus']} CPUs, {r.get('threads', r['cpus'])} analysis threads, scheduler {r['scheduler']}, "
             + ("with the paper extras" if r.get("extras", True) else "analyze --quick (no paper extras)")]
    if r.get("write_s"):
        lines.append(f"  synthetic store written in {r['write_s']:.1f} s")
    lines += [
        f"  read logits once : {r['read_s']:8.2f} s  ({r['read_gb_per_s']:.2f} GB/s; runs "
        + ", ".join(f"{x:.2f}" for x in r["read_s_runs"]) + ")",
        f"  (through xarray  : {r['read_xarray_s']:8.2f} s, one dask task per store chunk)",
        f"  whole analyze    : {r['analyze_s']:8.2f} s",
        f"  ratio            : {r['ratio']:8.2f}    (aim <= {r['aim_ratio']:g}: {ok(r['meets_ratio'])}; "
        f"{r['ratio_xarray']:.2f} against the xarray read)",
        f"  peak RSS analyze : {r['peak_rss_gib']:8.2f} GiB (aim <= {r['aim_rss_gib']:g} GiB: {ok(r['meets_rss'])})",
    ]
    t = r.get("timings_s") or {}
    if t:  # measured inside the analysis (analysis.json: timings_s); "a/b" is a part of phase a
        lines.append("  where the time goes (s): " + ", ".join(f"{k} {v:.1f}" for k, v in t.items() if k != "total"))
    m = r.get("phase_rss_gib") or {}
    if m:  # each phase's own peak RSS (analysis.json: phase_rss_gib)
        lines.append("  each phase's peak RSS (GiB): " + ", ".join(f"{k} {v:.2f}" for k, v in m.items()))
    if r.get("analysis_out"):
        lines.append(f"  analysis kept in {r['analysis_out']}")
    return "\n".join(lines)

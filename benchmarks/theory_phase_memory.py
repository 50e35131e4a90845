"""Peak RSS and time of the theory/sweep phase alone (``theory_suite`` as the report's
``_paper_extras`` calls it) at SHADOWS x 51,000 samples x 18 queries, without writing a store.

Inputs as ``analyze`` hands them over at that shape: the pass' Gaussian fits (here random positive
definite covariances), every shadow's phi on local disk as a ``DiskRows`` file (float32, written
once under /tmp/thy and kept for reruns), each train sample IN for half the shadows, the sweep's
share ``memory_bytes`` = 3 GiB // 4. RSS is sampled every 50 ms during the whole call and during
each of its three parts. With an OUT prefix it writes the sweep, per-sample and summary tables as
``OUT.sweep.csv`` etc., for a byte comparison of two versions of the code (run the other with
``PYTHONPATH`` pointing at an exported ``analysis/``).

    python benchmarks/theory_phase_memory.py SHADOWS [THREADS] [OUT]
"""
import sys, time, threading, types
from pathlib import Path
import numpy as np, xarray as xr
from analysis.store_io.spill import DiskRows, current_rss_bytes, release_freed_memory
from analysis.kernels.stats import GaussFits, MemCounts
from analysis.studies.complexity import theory_suite
import analysis.studies.theory as th_mod, analysis.studies.sweep as sw_mod, analysis.studies.complexity as cx

M = int(sys.argv[1]); N, NTR, Q = 51000, 50000, 18
threads = int(sys.argv[2]) if len(sys.argv) > 2 else 2
budget = 3 << 30
rng = np.random.default_rng(0)  # the inputs do not depend on whether the phi file exists
keep = np.zeros((M, N), bool)
for i in range(0, N, 5000):  # each sample IN for exactly half the shadows, as LiRA's keep masks
    keep[:, i:i+5000] = np.argsort(rng.random((M, min(5000, N - i))), axis=0) < M // 2
path = Path(f"/tmp/thy/phi_{M}.npy")
rng_phi = np.random.default_rng(1)
if not path.exists():
    d = DiskRows(path, (M, N, Q))
    for r in range(0, M, 20):
        d.write(r, (rng_phi.standard_normal((min(20, M - r), N, Q), dtype=np.float32) + 2 * keep[r:r+20, :, None]))
phi = DiskRows.__new__(DiskRows); phi.path, phi.shape, phi.dtype = path, (M, N, Q), np.dtype("float32")
a = rng.standard_normal((N, Q, 4)); cov = np.einsum("nqk,nrk->nqr", a, a) + np.eye(Q)
fits = GaussFits(np.full(N, M / 2), rng.standard_normal((N, Q)), cov, np.full(N, M / 2), rng.standard_normal((N, Q)), cov * 1.1)
del a, cov
n_in = np.where(np.arange(N) < NTR, M // 2, 0); n_out = M - n_in
c_in = rng.binomial(np.maximum(n_in, 0), 0.9); c_out = rng.binomial(n_out, 0.6)
counts = MemCounts(n_in, c_in, n_out, c_out)
train = np.arange(N) < NTR
mem = np.where(train, c_in / np.maximum(n_in, 1) - c_out / n_out, np.nan)
group = np.where(rng.random(N) < 0.1, "under", "over")
ds = xr.Dataset(coords={"shadow": np.arange(M), "sample": np.arange(N)})
data = types.SimpleNamespace(keep=xr.DataArray(keep, dims=("shadow", "sample")), ds=ds, phi=lambda: None,
                             n_shadows=M, logits=types.SimpleNamespace(shape=(M, N, Q, 10)))
release_freed_memory()
peak = [0]; stop = threading.Event()
def sampler():
    while not stop.is_set():
        peak[0] = max(peak[0], current_rss_bytes()); time.sleep(0.05)
parts = {}
def timed(mod, name):
    f = getattr(mod, name)
    def w(*a, **k):
        base = current_rss_bytes(); p0 = peak[0]; peak[0] = base; t0 = time.perf_counter()
        r = f(*a, **k)
        parts[name] = (time.perf_counter() - t0, base / 2**30, peak[0] / 2**30); peak[0] = max(peak[0], p0)
        return r
    setattr(mod, name, w)
timed(cx, "theory_per_sample"); timed(cx, "theory_summary"); timed(cx, "sweep_from_store")
base = current_rss_bytes(); threading.Thread(target=sampler, daemon=True).start()
t0 = time.perf_counter()
res = theory_suite(data, counts, train=train, mem=mem, group=group, threshold=0.5, plots="/tmp/thy/plots",
                   fprs=[0.001, 0.01], n_targets=min(M, 64), fits=fits, phi=phi, threads=threads,
                   memory_bytes=budget // 4)
wall = time.perf_counter() - t0; stop.set()
print(f"M={M} threads={threads}: theory_suite {wall:.1f} s, RSS before {base/2**30:.2f} GiB, peak {peak[0]/2**30:.2f} GiB")
for k, (s, b, p) in parts.items():
    print(f"  {k}: {s:.1f} s, RSS before {b:.2f} GiB, peak {p:.2f} GiB")
out = Path(sys.argv[3]) if len(sys.argv) > 3 else None
if out:
    res["sweep"].to_csv(out.with_suffix(".sweep.csv"), index=False)
    res["theory"].to_csv(out.with_suffix(".theory.csv"), index=False)
    res["theory_summary"].to_csv(out.with_suffix(".summary.csv"))

"""What each difference between our LiRA and the reference code's does to a store's numbers.

Usage: ``python scripts/lira_variants.py STORE [--targets T] [--sweep]`` (prints Markdown tables;
the numbers in docs/lira-variants.md come from it).

Rows: ``ours`` (:func:`analysis.attacks.lira.run_lira`) and ``reference``
(:func:`analysis.attacks.lira_reference.run_lira_reference`), as the analysis runs them, then ``ours`` with
one of the reference's choices at a time, scored by a plain numpy re-implementation here (no floors:
the floors of ``ours`` only matter for zero spreads). Columns: pooled AUROC over every (target,
train sample) pair, the mean per-target AUROC, and the largest per-target AUROC change from ``ours``,
for online, offline and fixed-variance LiRA. Needs LiRA keep masks (every train sample IN for
exactly M/2 shadows), so that every variant's reference lists have one length.

``--sweep``: the shadow-count sweep's online LiRA (mean AUROC over 10 reference orders) with
per-sample variances at every m (``per_sample_min=0``, the estimator before the fixed-variance
switch) and as the analysis runs it now, next to fixed-variance LiRA, per challenge set.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
from scipy.special import log_ndtr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis.attacks.lira import ATTACKS, run_lira  # noqa: E402
from analysis.attacks.lira_reference import run_lira_reference  # noqa: E402
from analysis.store_io.load import open_shadows  # noqa: E402
from analysis.kernels.metrics import auroc  # noqa: E402
from analysis.kernels.stats import gaussian_sums, partners  # noqa: E402
from analysis.kernels.threads import n_threads  # noqa: E402

BASE = {"refs": "pair", "center": "mean", "ddof": 1, "offline": "one-sided", "fixed": "pooled per side"}
ABLATIONS = [("median (not mean)", {"center": "median"}), ("population std (ddof 0)", {"ddof": 0}),
             ("every other shadow, truncated", {"refs": "trunc"}),
             ("offline: two-sided density", {"offline": "two-sided"}),
             ("fixed variance: one IN std, both sides", {"fixed": "global IN"})]


def _refs(keep: np.ndarray, t: int, how: str) -> tuple[np.ndarray, np.ndarray]:
    """(k, N) reference rows of each side for target t: all others less the other side's first
    ("pair", ours) or last ("trunc", the reference's truncation) shadow."""
    out = []
    for side in (keep, ~keep):
        rows = []
        for i in range(keep.shape[1]):
            lst = [s for s in np.flatnonzero(side[:, i]) if s != t]
            if not side[t, i]:  # the target is on the other side: one too many here
                lst = lst[1:] if how == "pair" else lst[:-1]
            rows.append(lst)
        if len({len(r) for r in rows}) != 1:
            raise SystemExit("the keep masks are not LiRA's (every train sample IN for exactly M/2 shadows)")
        out.append(np.array(rows).T)
    return out[0], out[1]


def _scores(phi: np.ndarray, keep: np.ndarray, t: int, o: dict) -> dict[str, np.ndarray]:
    n = phi.shape[1]
    cols = np.arange(n)
    x = phi[t]
    ri, ro = _refs(keep, t, o["refs"])
    din, dout = phi[ri, cols], phi[ro, cols]  # (k, N, Q)
    center = np.median if o["center"] == "median" else np.mean
    mi, mo = center(din, axis=0), center(dout, axis=0)
    si, so = din.std(axis=0, ddof=o["ddof"]), dout.std(axis=0, ddof=o["ddof"])

    def lp(v, mu, sd):
        return -0.5 * ((v - mu) / sd) ** 2 - np.log(sd)

    if o["fixed"] == "global IN":
        gi = go = np.std(din, ddof=o["ddof"])
    else:  # per query, each side over every sample and reference (ours)
        gi = din.reshape(-1, din.shape[-1]).std(axis=0, ddof=o["ddof"])
        go = dout.reshape(-1, dout.shape[-1]).std(axis=0, ddof=o["ddof"])
    z = (x - mo) / so
    off = log_ndtr(z).mean(-1) if o["offline"] == "one-sided" else -(lp(x, mo, so) - 0.5 * math.log(2 * math.pi)).mean(-1)
    return {"lira-online": (lp(x, mi, si) - lp(x, mo, so)).sum(-1), "lira-offline": off,
            "lira-fixed-variance": (lp(x, mi, gi) - lp(x, mo, go)).sum(-1)}


def _metrics(member: np.ndarray, s: np.ndarray, base: np.ndarray | None) -> tuple[float, float, float]:
    per = np.array([auroc(member[t], s[t]) for t in range(member.shape[0])])
    delta = float(np.abs(per - base).max()) if base is not None else 0.0
    return auroc(member.ravel(), s.ravel()), float(per.mean()), delta


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("store")
    ap.add_argument("--targets", type=int, default=16, help="first T done shadows as targets")
    ap.add_argument("--sweep", action="store_true", help="also the sweep's online LiRA with and without the switch")
    args = ap.parse_args(argv)
    data = open_shadows(args.store)
    train = data.split == "train"
    # the pass keeps phi as float32: the same values here
    phi_all = np.asarray(data.phi().values, dtype=np.float32).astype(np.float64)
    keep_all = np.asarray(data.keep.values, dtype=bool)
    t_n = min(args.targets, keep_all.shape[0])
    phi, keep = phi_all[:, train], keep_all[:, train]
    member = keep[:t_n]
    rows: dict[str, dict[str, np.ndarray]] = {}
    ours = run_lira(lambda sl: phi_all[sl], keep_all, gaussian_sums(phi_all, keep_all),
                    partners(phi_all, keep_all), train, t_n, threads=n_threads())
    rows["ours (analysis.attacks.lira)"] = {a: np.asarray(ours.scores[a], dtype=np.float64) for a in ATTACKS}
    ref = run_lira_reference(phi_all, keep_all, train, t_n, threads=n_threads())
    rows["reference (analysis.attacks.lira_reference)"] = {a: np.asarray(ref.scores[a], dtype=np.float64) for a in ATTACKS}
    for name, change in [("ours, re-implemented here", {})] + [("ours + " + n, c) for n, c in ABLATIONS]:
        per_t = [_scores(phi, keep, t, {**BASE, **change}) for t in range(t_n)]
        rows[name] = {a: np.stack([p[a] for p in per_t]) for a in ATTACKS}
    base = {a: np.array([auroc(member[t], rows["ours (analysis.attacks.lira)"][a][t]) for t in range(t_n)]) for a in ATTACKS}
    print(f"{args.store}: {keep_all.shape[0]} done shadows, {int(train.sum())} train samples, "
          f"{phi.shape[2]} queries, {t_n} targets\n")
    head = ["variant"] + [f"{a.removeprefix('lira-')} {c}" for a in ATTACKS
                          for c in ("AUROC", "mean per-target", "max |d per-target|")]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for name, sc in rows.items():
        cells = [name]
        for a in ATTACKS:
            pooled, mean, delta = _metrics(member, sc[a], base[a])
            cells += [f"{pooled:.4f}", f"{mean:.4f}", f"{delta:.4f}"]
        print("| " + " | ".join(cells) + " |")
    if args.sweep:
        _sweep(data, train, t_n)
    return 0


def _sweep(data, train: np.ndarray, t_n: int) -> None:
    from analysis.attacks.lira import PER_SAMPLE_VARIANCE_MIN
    from analysis.studies.memorization import memorization_from_counts
    from analysis.store_io.passes import reduce_over_shadows
    from analysis.studies.sweep import summarize_sweep, sweep_from_store

    threads = n_threads()
    _, _, counts = reduce_over_shadows(data, threads=threads)
    mem, _ = memorization_from_counts(counts.n_in, counts.c_in, counts.n_out, counts.c_out)
    thr = float(data.spec.get("analysis", {}).get("singleton_threshold", 0.8))
    masks = {"highly memorized": train & (mem > thr), "All": train, "random": train & (data.group == "under")}
    masks = {k: v for k, v in masks.items() if v.any()}
    curves = {}
    for psm, name in ((0, "before (per-sample at every m)"), (PER_SAMPLE_VARIANCE_MIN, "now")):
        sw, _ = sweep_from_store(data, masks, n_targets=t_n, repeats=10, seed=0, per_sample_min=psm,
                                 attacks=("lira-online", "lira-fixed-variance"), threads=threads)
        s = summarize_sweep(sw)
        for (st, a), d in s.groupby(["set", "attack"], sort=False):
            label = name if a == "lira-online" else "lira-fixed-variance"
            curves[(st, label)] = d.sort_values("n_shadows")
    xs = next(iter(curves.values()))["n_shadows"].tolist()
    print(f"\n| set | lira-online | " + " | ".join(map(str, xs)) + " reference shadows |")
    print("|" + "---|" * (len(xs) + 2))
    order = {"before (per-sample at every m)": 0, "now": 1, "lira-fixed-variance": 2}
    for (st, label), d in sorted(curves.items(), key=lambda kv: (list(masks).index(kv[0][0]), order[kv[0][1]])):
        print(f"| {st} | {label} | " + " | ".join(f"{v:.3f}" for v in d["auroc mean"]) + " |")


if __name__ == "__main__":
    raise SystemExit(main())

"""Learning-rate range test of the paper recipes on real digits: how far below breaking is each peak lr?

Smith's range test (Cyclical Learning Rates, 2017, §3.3): train with the learning rate growing
exponentially from ``--lr-min`` to ``--lr-max`` over ``--steps`` steps and watch the loss. Every
other setting is the recipe's (batch, optimizer, momentum, weight decay, clipping, augmentation);
only the schedule is replaced, with no warm-up. Per seed it reports

* ``lr_best``: the lr at the smoothed loss's minimum (an exponential moving average, beta 0.9, with
  the bias correction of Smith / fastai);
* ``lr_break``: the first lr after that minimum where the smoothed loss exceeds ``BREAK`` times
  its minimum or a loss is non-finite (``inf`` if the ramp never breaks);
* ``lr_undone``: the first lr after the minimum where the smoothed loss is back at its value at the
  start of the ramp (all progress lost), stricter than ``lr_break`` when the minimum is still high;
* ``margin = lr_break / peak``: how many times the recipe's peak lr can grow before training breaks.

The ramp reaches the peak lr within tens of steps, a far shorter warm-up than the recipes' (5% or
20% of thousands of steps), so it is a pessimistic test: a recipe whose peak sits near ``lr_undone``
here may still train, and one far below both has margin to spare.

Cases (``--cases``): a paper spec's ``[model]`` and ``[train]``, trained on real MNIST digits shaped
as that spec's D_O inputs. SVHN, CIFAR-10 and CIFAR-100 cannot be read here, so the recipes of the
CIFAR specs are measured on the digits resized to 32x32 and copied to 3 channels (CIFAR's input
shape), which tests the architecture and the optimizer settings, not the data:

* ``cnn32``: ``mnist-augmnist-random`` (also ``mnist``, ``mnist-svhn``: CNN32 on 28x28 grayscale,
  SVHN is grayscaled and resized to 28), recipe ``mnist-cnn``;
* ``cnn64``: ``mnist-cifar10-random`` (CNN64 on 28x28 grayscale), recipe ``mnist-cnn``;
* ``resnet9``: ``cifar10`` and ``cifar10-cifar100-*`` (ResNet-9 on 32x32 RGB), recipe ``cifar10-resnet``;
* ``resnet18``: ``cifar10-augcifar10-*`` (ResNet-18 on 32x32 RGB), recipe ``cifar10-resnet``.

Writes to ``--out`` (default ``docs/reproduction/lr-range``): ``curves.csv`` (case, seed, step, lr,
loss, smoothed, grad_norm), ``summary.csv`` (a row per case and seed), ``lr_range.png`` (smoothed
loss against lr per case, the recipe's peak marked) and ``meta.json`` (command, date, machine,
scale); all are rewritten after every case, so a run cut short keeps what it measured.

    python benchmarks/lr_range.py --cases cnn32,cnn64 --seeds 0-1
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

#: case -> (the paper spec whose [model] and [train] are tested, D_O image side, 3 channels?)
CASES = {
    "cnn32": ("mnist-augmnist-random", 28, False),
    "cnn64": ("mnist-cifar10-random", 28, False),
    "resnet9": ("cifar10", 32, True),
    "resnet18": ("cifar10-augcifar10-random", 32, True),
}
#: The smoothed loss this many times its minimum counts as broken.
BREAK = 4.0
#: Smoothing of the loss (exponential moving average).
BETA = 0.9


def smooth(loss: np.ndarray, beta: float = BETA) -> np.ndarray:
    """Bias-corrected exponential moving average along axis 0; NaN from the first non-finite value on."""
    out = np.full(loss.shape, np.nan)
    avg = np.zeros(loss.shape[1:])
    alive = np.ones(loss.shape[1:], bool)
    for t in range(len(loss)):
        alive &= np.isfinite(loss[t])
        avg = beta * avg + (1 - beta) * np.where(alive, loss[t], 0.0)
        out[t] = np.where(alive, avg / (1 - beta ** (t + 1)), np.nan)
    return out


def find_break(lrs: np.ndarray, smoothed: np.ndarray, ratio: float = BREAK) -> tuple[float, float, float]:
    """(lr_best, lr_break, lr_undone) of one seed's smoothed curve.

    After the minimum: ``lr_break``, the first lr where the smoothed loss exceeds ``ratio`` times the
    minimum; ``lr_undone``, the first where it is back at its value at the ramp's start (all progress
    lost; stricter when the minimum is still high, as in a short ramp). Either is the first
    non-finite loss if that comes earlier, and ``inf`` if the ramp ends first.
    """
    finite = np.isfinite(smoothed)
    if not finite.any():
        return float("nan"), float(lrs[0]), float(lrs[0])
    best = int(np.nanargmin(smoothed))
    after = np.arange(len(lrs)) > best

    def first(mask: np.ndarray) -> float:
        return float(lrs[np.argmax(mask)]) if mask.any() else float("inf")

    return (float(lrs[best]), first(after & (~finite | (smoothed > ratio * smoothed[best]))),
            first(after & (~finite | (smoothed >= smoothed[0]))))


def summarize(curves, args: argparse.Namespace):
    """One row per case and seed from the curves (so ``--summary-only`` can redo it without training)."""
    import pandas as pd

    rows = []
    for case, g in curves.groupby("case", sort=False):
        spec = case_spec(case, args)  # once per case: a spec load and validation
        t = spec.train
        _, side, rgb = CASES[case]
        for seed, gs in g.groupby("seed"):
            best, brk, undone = find_break(gs["lr"].to_numpy(), gs["smoothed"].to_numpy(dtype=float))
            rows.append({"case": case, "spec": CASES[case][0], "arch": spec.model.arch,
                         "input": f"{3 if rgb else 1}x{side}x{side}", "batch": t.batch_size,
                         "clip_grad_norm": t.clip_grad_norm, "peak_lr": t.lr, "seed": seed, "lr_best": best,
                         "lr_break": brk, "lr_undone": undone, "margin": brk / t.lr})
    return pd.DataFrame(rows)


def case_spec(case: str, args: argparse.Namespace):
    """The case's paper spec, its data replaced by ``args.over`` real digits at the case's input shape."""
    from mia_hpc.contract.spec import load_spec, spec_from_dict

    name, side, _ = CASES[case]
    target = load_spec(ROOT / "jobs" / "paper" / f"{name}.toml").to_dict()
    d = load_spec(ROOT / "jobs" / "paper" / "mnist.toml").to_dict()
    d["data"].update(root=str(args.data_root), size=args.over, alpha=1.0, test_over=args.test_over, test_under=0)
    d["model"], d["train"], d["name"] = target["model"], target["train"], f"lr-range-{case}"
    d["shadows"].update(count=max(2, 2 * ((max(args.seed_list) + 2) // 2)), batch=0, shards=1)
    return spec_from_dict(d)


def digits_for(case: str, spec):
    """Real 28x28 digits, resized (bilinear, as the data layer resizes D_U) to the case's side and
    copied to 3 channels where the case's data is RGB."""
    from mia_hpc.data import build_dataset
    from mia_hpc.data.digits import resize_images

    data = build_dataset(spec)
    _, side, rgb = CASES[case]
    image = data.image
    if image.shape[-1] != side:
        image = resize_images(image[:, 0], side)[:, None]
    if rgb:
        image = np.repeat(image, 3, axis=1)
    return dataclasses.replace(data, image=np.ascontiguousarray(image, dtype=np.float32))


def plot(curves, summary, out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = list(dict.fromkeys(curves["case"]))
    fig, axes = plt.subplots(1, len(cases), figsize=(4.2 * len(cases), 3.6), squeeze=False)
    for ax, case in zip(axes[0], cases):
        rows = summary[summary["case"] == case]
        for seed, g in curves[curves["case"] == case].groupby("seed"):
            ax.plot(g["lr"], g["smoothed"], alpha=0.7, label=f"seed {seed}")
        peak = float(rows["peak_lr"].iloc[0])
        ax.axvline(peak, color="black", ls="--", lw=1, label=f"recipe peak {peak:g}")
        brk = rows["lr_break"].replace(np.inf, np.nan).min()
        if np.isfinite(brk):
            ax.axvline(brk, color="tab:red", ls=":", lw=1, label=f"first break {brk:.3g}")
        und = rows["lr_undone"].replace(np.inf, np.nan).min()
        if np.isfinite(und):
            ax.axvline(und, color="tab:orange", ls="-.", lw=1, label=f"first undone {und:.3g}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("learning rate (exponential ramp, one step each)")
        ax.set_title(f"{case}: {rows['spec'].iloc[0]}", fontsize=9)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("training loss (smoothed)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    import pandas as pd
    import torch

    from recipe_stability import date_span, parse_seeds, run_variant

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cases", default="cnn32,cnn64,resnet9,resnet18", help=f"some of {','.join(CASES)}")
    p.add_argument("--data-root", default="/work/shared/data/mnist-10k")
    p.add_argument("--out", default=str(ROOT / "docs" / "reproduction" / "lr-range"))
    p.add_argument("--seeds", default="0-1", help="e.g. 0-3 or 0,2")
    p.add_argument("--over", type=int, default=8000, help="real train digits in the pool")
    p.add_argument("--test-over", type=int, default=100, help="test digits built (not used: no evaluation)")
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--lr-min", type=float, default=1e-4)
    p.add_argument("--lr-max", type=float, default=3.0)
    p.add_argument("--width", type=int, default=-1, help="-1: the spec's model width (tests shrink it)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--append", action="store_true", help="keep the cases already in --out")
    p.add_argument("--summary-only", action="store_true",
                   help="rebuild summary.csv and the plot from --out's curves.csv (no training)")
    args = p.parse_args(argv)
    out = Path(args.out)
    if args.summary_only:
        if not (out / "curves.csv").is_file():
            print(f"--summary-only: {out} has no curves.csv; run the range test there first", file=sys.stderr)
            return 2
        args.seed_list = [0]
        cdf = pd.read_csv(out / "curves.csv")
        sdf = summarize(cdf, args)
        sdf.to_csv(out / "summary.csv", index=False)
        plot(cdf, sdf, out / "lr_range.png")
        if (out / "meta.json").is_file():  # the summary's provenance: this command made it
            meta = json.loads((out / "meta.json").read_text())
            meta["summary_command"] = " ".join(shlex.quote(a) for a in ["python", *sys.argv])
            (out / "meta.json").write_text(json.dumps(meta, indent=1))
        print(sdf.to_string())
        return 0
    if not (Path(args.data_root) / "MNIST" / "raw").is_dir():
        print(f"--data-root: {args.data_root} has no MNIST/raw folder; point it at real MNIST in torchvision's layout",
              file=sys.stderr)
        return 2
    cases = args.cases.split(",")
    if bad := [c for c in cases if c not in CASES]:
        print(f"--cases: unknown {bad}; use some of {','.join(CASES)}", file=sys.stderr)
        return 2
    if not (0 < args.lr_min < args.lr_max) or args.steps < 2:
        print("--lr-min/--lr-max/--steps: need 0 < lr-min < lr-max and at least 2 steps", file=sys.stderr)
        return 2
    args.seed_list = parse_seeds(args.seeds)
    torch.set_num_threads(max(1, args.threads))
    out.mkdir(parents=True, exist_ok=True)
    meta = {"command": " ".join(shlex.quote(a) for a in ["python", *sys.argv]),
            "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{os.cpu_count()} CPU cores, shared (load average {os.getloadavg()[0]:.1f} at start)",
            "ramp": {"lr_min": args.lr_min, "lr_max": args.lr_max, "steps": args.steps, "over": args.over,
                     "break_ratio": BREAK, "beta": BETA}, "seconds": {}}
    curves = []
    if args.append and (out / "curves.csv").is_file():
        old = json.loads((out / "meta.json").read_text())
        if old["ramp"] != meta["ramp"]:
            print(f"--append: {out} holds another ramp ({old['ramp']}); use the same flags or another --out",
                  file=sys.stderr)
            return 2
        kept = pd.read_csv(out / "curves.csv")
        curves.append(kept[~kept["case"].isin(cases)])
        meta["command"] = old["command"] + " ; " + meta["command"]
        meta["date"] = date_span(old["date"], meta["date"])
        meta["seconds"] = {k: v for k, v in old["seconds"].items() if k not in cases}
    ratio = (args.lr_max / args.lr_min) ** (1 / (args.steps - 1))

    def ramp(step: int, steps: int) -> float:
        return args.lr_min * ratio ** step

    for case in cases:
        spec = case_spec(case, args)
        if args.width >= 0:
            spec = dataclasses.replace(spec, model=dataclasses.replace(spec.model, width=args.width))
        data = digits_for(case, spec)
        t0 = time.time()
        loss, gnorm, lrs, _ = run_variant(spec, data, args.seed_list, args.steps, args.device, lr_of=ramp,
                                          evaluate=False)
        meta["seconds"][case] = round(time.time() - t0, 1)
        sm = smooth(loss)
        for i, s in enumerate(args.seed_list):
            curves.append(pd.DataFrame({"case": case, "seed": s, "step": np.arange(len(lrs)), "lr": lrs,
                                        "loss": loss[:, i], "smoothed": sm[:, i], "grad_norm": gnorm[:, i]}))
        cdf = pd.concat(curves, ignore_index=True)
        sdf = summarize(cdf, args)
        cdf.to_csv(out / "curves.csv", index=False)
        sdf.to_csv(out / "summary.csv", index=False)
        (out / "meta.json").write_text(json.dumps(meta, indent=1))
        plot(cdf, sdf, out / "lr_range.png")
        print(sdf.to_string(), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

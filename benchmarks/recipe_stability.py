"""Does a paper recipe train stably on real digits? Loss curves and test accuracy per seed.

Trains K shadows (seeds = shadow indices) of a paper spec, shrunk to ``--over`` real MNIST digits
plus ``--under`` augMNIST samples, once per recipe variant:

* ``old``: the recipe before the fix (lr 0.04, no warm-up, no clipping), which diverged;
* ``clip``: the old recipe with the gradient clipping only (lr 0.04, no warm-up, clip 1.0): the
  diagnosis (does bounding the step alone stop the divergence?);
* ``spec``: the spec's own ``[train]`` table as committed;
* any name given with ``--try NAME KEY=VALUE ...``: the spec's ``[train]`` with those values changed
  (a candidate recipe, e.g. ``--try clip10 clip_grad_norm=10``).

Each step records every seed's loss, the L2 norm of its whole gradient before clipping and the
learning rate; at the end each seed's test accuracy (D_O and D_U test splits) is measured in eval
mode. The step loop is :func:`mia_hpc.train.batched._train_plain`'s, written out so the per-step
values can be read (same index streams, augmentation, schedule, optimizer and per-shadow clipping).

Writes to ``--out`` (default ``docs/reproduction``): ``stability_curves.csv`` (variant, seed, step,
lr, loss, grad_norm), ``stability_summary.csv`` (one row per variant and seed), ``stability.png``
and ``stability_meta.json`` (command, date, machine, scale); each is rewritten after every variant,
so a run cut short keeps what it measured.

    python benchmarks/recipe_stability.py --seeds 0-3 --variants old,spec
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

#: The mnist-cnn recipe before the fix (the one the issue measured diverging).
OLD = {"lr": 0.04, "warmup": 0.0, "clip_grad_norm": 0.0}
#: The old recipe with clipping only (the diagnosis: is the unbounded step the cause?).
CLIP_ONLY = {**OLD, "clip_grad_norm": 1.0}
#: A loss above this (or a non-finite one) counts as diverged: ln(10) = 2.3 is chance.
DIVERGED_LOSS = 10.0


def parse_tries(tries: list[list[str]] | None) -> dict[str, dict]:
    """``--try NAME KEY=VALUE ...`` -> {NAME: {KEY: value}}, values parsed as TOML scalars."""
    import tomllib

    out: dict[str, dict] = {}
    for name, *pairs in tries or []:
        if name in ("old", "clip", "spec") or not pairs:
            raise SystemExit(f"--try {name}: give a new variant name and at least one KEY=VALUE of [train]")
        out[name] = {}
        for pair in pairs:
            key, eq, value = pair.partition("=")
            if not eq:
                raise SystemExit(f"--try {name}: {pair!r} is not KEY=VALUE (e.g. clip_grad_norm=10)")
            try:
                out[name][key] = tomllib.loads(f"v = {value}")["v"]
            except tomllib.TOMLDecodeError:
                raise SystemExit(f"--try {name}: {key}={value!r} is not a TOML value (numbers, true/false, "
                                 "\"quoted\" strings)") from None
    return out


def scaled_spec(path: Path, args: argparse.Namespace, variant: str):
    from mia_hpc.contract.spec import load_spec, spec_from_dict

    d = load_spec(path).to_dict()
    size = args.over + args.under
    d["data"].update(root=str(args.data_root), size=size, alpha=args.over / size, test_over=args.test_over,
                     test_under=args.test_under if args.under else 0)
    d["data"]["under"]["n_fractals"] = min(d["data"]["under"]["n_fractals"], 256)
    d["model"]["width"] = args.width
    d["train"]["epochs"] = args.epochs
    known = {"old": OLD, "clip": CLIP_ONLY, "spec": {}, **args.tries}
    if variant not in known:
        raise SystemExit(f"--variants: unknown variant {variant!r}; use old, clip, spec or a name given by --try")
    unknown = set(known[variant]) - set(d["train"])
    if unknown:
        raise SystemExit(f"--try {variant}: {sorted(unknown)} not in [train]; use one of {sorted(d['train'])}")
    d["train"].update(known[variant])
    d["shadows"].update(count=max(2, 2 * ((max(args.seed_list) + 2) // 2)), batch=0, shards=1)
    return spec_from_dict(d)


def run_variant(spec, data, seeds: list[int], max_steps: int | None, device: str = "cpu", lr_of=None,
                evaluate: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """Train ``seeds`` batched; (loss, grad_norm, lr) per step and seed, and per-seed test accuracy.

    ``lr_of(step, steps)`` replaces the spec's schedule (``benchmarks/lr_range.py``'s exponential
    ramp); ``evaluate=False`` skips the test accuracy (``acc`` is then empty).
    """
    import torch
    from torch.nn import functional as F

    from mia_hpc.contract.keep import make_keep
    from mia_hpc.train.batched import (ShadowStack, TrainData, clip_per_shadow, index_stream, lr_at,
                                       make_optimizer, shifted)
    from mia_hpc.contract.queries import make_queries

    split = data.split.astype(str)
    keep = make_keep(spec.shadows.count, split == "train", spec.seed, spec.shadows.keep_block)
    td = TrainData(image=data.image, label=data.label, group=data.group.astype(str), split=split, keep=keep,
                   queries=make_queries(0, False), n_classes=data.n_classes)
    n_pool = int((split == "train").sum())
    stack = ShadowStack(spec, seeds, data.image.shape[1], data.n_classes, device=device)
    images = torch.as_tensor(data.image, device=device)
    labels = torch.as_tensor(data.label.astype(np.int64), device=device)
    streams = [index_stream(spec, s, np.flatnonzero(keep[s]), n_pool) for s in seeds]
    idx = np.stack([st[0] for st in streams], 1)
    shifts = np.stack([st[1] for st in streams], 1)
    total = idx.shape[0]
    steps = total if max_steps is None else min(total, max_steps)
    params = list(stack.params.values())
    opt = make_optimizer(spec, params)
    k = len(seeds)
    loss, gnorm, lrs = np.full((steps, k), np.nan), np.full((steps, k), np.nan), np.zeros(steps)
    for step in range(steps):
        lrs[step] = lr_at(spec, step, total) if lr_of is None else lr_of(step, steps)
        for g in opt.param_groups:
            g["lr"] = lrs[step]
        bi = torch.as_tensor(idx[step], device=device).long()
        sh = torch.as_tensor(shifts[step], device=device).long()
        x = shifted(images[bi], sh[..., 0], sh[..., 1], spec.train.augment_shift)
        out = stack.forward(stack.params, stack.buffers, x)
        per = F.cross_entropy(out.flatten(0, 1), labels[bi].flatten(), reduction="none").view(k, -1).mean(1)
        opt.zero_grad(set_to_none=True)
        per.sum().backward()
        with torch.no_grad():  # the norm before clipping, what clipping acts on
            gnorm[step] = torch.sqrt(sum(p.grad.flatten(1).pow(2).sum(1) for p in params)).cpu().numpy()
        if spec.train.clip_grad_norm > 0:
            clip_per_shadow(params, spec.train.clip_grad_norm)
        opt.step()
        loss[step] = per.detach().cpu().numpy()
    if not evaluate:
        return loss, gnorm, lrs, {"total_steps": total, "acc": {}}
    test = np.flatnonzero(split == "test")  # accuracy on the test split only: no need to query the pool
    logits = stack.query_logits(images[test], td.queries)
    group = td.group[test]
    correct = logits[:, :, 0].argmax(-1) == data.label[test]
    acc = {s: {f"test/{g}": float(correct[i][group == g].mean()) if (group == g).any() else float("nan")
               for g in ("over", "under")} for i, s in enumerate(seeds)}
    return loss, gnorm, lrs, {"total_steps": total, "acc": acc}


def parse_seeds(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        a, _, b = part.partition("-")
        out += list(range(int(a), int(b or a) + 1))
    return out


def date_span(old: str, now: str) -> str:
    """An appended run's date: first start to latest start (the latest alone hid when the seeds began)."""
    return f"{old.split(' to ')[0]} to {now}"


def plot(curves, summary, out: Path) -> None:
    """Loss and gradient norm against step, per variant: every seed as a faint line, the median over
    seeds on top, the min-max band behind (32 overlaid seeds are a blur without them); a third panel
    of each seed's D_O test accuracy after the run, from the ``summary``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4), gridspec_kw={"width_ratios": [3, 3, 1.4]})
    colors = {"old": "tab:red", "clip": "tab:orange", "spec": "tab:blue"}
    others = iter(["tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan"])
    variants = list(curves["variant"].unique())
    for variant in variants:
        colors.setdefault(variant, next(others, "gray"))
    for variant, g in curves.groupby("variant", sort=False):
        c = colors[variant]
        for ax, col, cap in ((axes[0], "loss", 1e3), (axes[1], "grad_norm", 1e6)):
            wide = g.pivot(index="step", columns="seed", values=col).astype(float)
            wide = wide.where(np.isfinite(wide), cap).clip(upper=cap)  # non-finite drawn at the cap
            for seed in wide:
                ax.plot(wide.index, wide[seed], color=c, alpha=0.12, lw=0.5)
            if wide.shape[1] > 1:
                ax.fill_between(wide.index, wide.min(axis=1), wide.max(axis=1), color=c, alpha=0.15, lw=0)
            ax.plot(wide.index, wide.median(axis=1), color=c, lw=1.4,
                    label=f"{variant}: median of {wide.shape[1]} seeds, band min-max" if ax is axes[0] else None)
    axes[0].set_yscale("log")
    axes[0].set_title("training loss (non-finite drawn at 1e3)")
    axes[1].set_yscale("log")
    axes[1].set_title("gradient L2 norm before clipping")
    for ax in axes[:2]:
        ax.set_xlabel("step")
    axes[0].legend(fontsize=8)
    ax = axes[2]
    for i, variant in enumerate(variants):
        acc = summary.loc[summary["variant"] == variant, "test_acc_over"].astype(float).to_numpy()
        jitter = np.linspace(-0.2, 0.2, len(acc)) if len(acc) > 1 else np.zeros(1)
        ax.scatter(i + jitter, acc, s=12, color=colors[variant], alpha=0.8)
        ax.hlines(np.median(acc), i - 0.3, i + 0.3, color="black", lw=1.2)
    ax.set_xticks(range(len(variants)), variants)
    ax.set_ylabel("D_O test accuracy after the run (%)")
    ax.set_title("per seed (bar: median)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    import pandas as pd
    import torch

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--spec", default=str(ROOT / "jobs/paper/mnist-augmnist-random.toml"))
    p.add_argument("--data-root", default="/work/shared/data/mnist-10k")
    p.add_argument("--out", default=str(ROOT / "docs" / "reproduction"))
    p.add_argument("--variants", default="old,spec")
    p.add_argument("--seeds", default="0-1", help="e.g. 0-31 or 0,1,3")
    p.add_argument("--over", type=int, default=2000)
    p.add_argument("--under", type=int, default=200)
    p.add_argument("--test-over", type=int, default=500)
    p.add_argument("--test-under", type=int, default=100)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--width", type=int, default=0, help="0: CNN32's own 32")
    p.add_argument("--max-steps", type=int, default=0, help="stop each seed after this many steps (0: all)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (all seeds of a variant in one batch)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="torch CPU threads (default: every core)")
    p.add_argument("--try", dest="try_", nargs="+", action="append", metavar="NAME KEY=VALUE",
                   help="define a variant NAME: the spec's [train] with these values (repeatable)")
    p.add_argument("--append", action="store_true",
                   help="add to the curves and summary already in --out (more seeds at the same scale)")
    args = p.parse_args(argv)
    if not (Path(args.data_root) / "MNIST" / "raw").is_dir():
        print(f"--data-root: {args.data_root} has no MNIST/raw folder; point it at real MNIST in torchvision's layout",
              file=sys.stderr)
        return 2
    args.seed_list = parse_seeds(args.seeds)
    args.tries = parse_tries(args.try_)
    torch.set_num_threads(max(1, args.threads))
    from mia_hpc.data import build_dataset

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"command": " ".join(shlex.quote(a) for a in ["python", *sys.argv]),
            "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{os.cpu_count()} CPU cores, shared (load average {os.getloadavg()[0]:.1f} at start)",
            "scale": {k: getattr(args, k) for k in ("over", "under", "test_over", "test_under", "epochs", "width",
                                                    "max_steps", "seeds")}, "seconds": {},
            "tries": args.tries}
    curves, summary = [], []
    if args.append and (out / "stability_summary.csv").is_file():
        old_meta = json.loads((out / "stability_meta.json").read_text())
        if old_meta["scale"] | {"seeds": ""} != meta["scale"] | {"seeds": ""}:
            print(f"--append: {out} holds another scale ({old_meta['scale']}); use the same flags or another --out",
                  file=sys.stderr)
            return 2
        curves.append(pd.read_csv(out / "stability_curves.csv"))
        summary = pd.read_csv(out / "stability_summary.csv").to_dict(orient="records")
        meta["command"] = old_meta["command"] + " ; " + meta["command"]
        meta["date"] = date_span(old_meta["date"], meta["date"])
        meta["seconds"] = old_meta.get("seconds", {})
        meta["tries"] = {**old_meta.get("tries", {}), **args.tries}
        meta["scale"]["seeds"] = f"{old_meta['scale']['seeds']},{args.seeds}"
    data = None
    for variant in args.variants.split(","):
        spec = scaled_spec(Path(args.spec), args, variant)
        if data is None:
            data = build_dataset(spec)  # the same digits for every variant (data does not depend on [train])
        t0 = time.time()
        loss, gnorm, lrs, info = run_variant(spec, data, args.seed_list, args.max_steps or None, args.device)
        meta["seconds"][f"{variant} {args.seeds}"] = round(time.time() - t0, 1)
        t = spec.train
        for i, s in enumerate(args.seed_list):
            bad = ~np.isfinite(loss[:, i]) | (loss[:, i] > DIVERGED_LOSS)
            curves.append(pd.DataFrame({"variant": variant, "seed": s, "step": np.arange(len(lrs)), "lr": lrs,
                                        "loss": loss[:, i], "grad_norm": gnorm[:, i]}))
            acc = info["acc"][s]
            summary.append({"variant": variant, "lr": t.lr, "warmup": t.warmup, "clip_grad_norm": t.clip_grad_norm,
                            "seed": s, "steps": len(lrs), "of_steps": info["total_steps"],
                            "diverged": bool(bad.any()), "first_bad_step": int(np.argmax(bad)) if bad.any() else -1,
                            "max_grad_norm": float(np.nanmax(gnorm[:, i])) if np.isfinite(gnorm[:, i]).any()
                            else float("inf"),
                            "last_loss": float(loss[-1, i]), "test_acc_over": 100 * acc["test/over"],
                            "test_acc_under": 100 * acc["test/under"]})
        cdf = pd.concat(curves, ignore_index=True)
        cdf.to_csv(out / "stability_curves.csv", index=False)
        sdf = pd.DataFrame(summary)
        sdf.to_csv(out / "stability_summary.csv", index=False)
        (out / "stability_meta.json").write_text(json.dumps(meta, indent=1))
        plot(cdf, sdf, out / "stability.png")
        print(sdf.to_string(), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

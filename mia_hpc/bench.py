"""``mia-hpc bench train``: the batched trainer against a plain loop, in one run.

Reports shadows per minute for each, their ratio, both accuracies, how far the two trainers'
logits differ, and the achieved training FLOP/s as a fraction of this machine's dense-matmul
FLOP/s measured in the same run (how close to the hardware limit the trainer is).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np

from mia_hpc.spec import Spec


def matmul_flops(device: str, n: int = 2048, seconds: float = 2.0) -> float:
    """Dense float32 matmul FLOP/s on ``device`` (the practical peak for this trainer's dtype)."""
    import torch

    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    (a @ b).sum().item()  # warm-up
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        (a @ b).sum().item()
        reps += 1
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def bench_train(spec: Spec, *, shadows: int = 0, epochs: int = 0, device: str = "auto") -> dict[str, Any]:
    """Train the same shadows batched and one at a time; return the measurements."""
    import torch

    from mia_hpc.data import build_dataset
    from mia_hpc.keep import make_keep
    from mia_hpc.models import build_model, forward_flops
    from mia_hpc.queries import make_queries
    from mia_hpc.train.batched import TrainData, resolve_backend, steps_per_epoch, train_shadows
    from mia_hpc.train.loop import train_loop

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    k = shadows or spec.shadows.batch
    if epochs:
        spec = dataclasses.replace(spec, train=dataclasses.replace(spec.train, epochs=epochs))
    data = build_dataset(spec)
    keep = make_keep(spec.shadows.count, data.split == "train", spec.seed, spec.shadows.keep_block)
    td = TrainData(image=data.image, label=data.label, group=data.group.astype(str), split=data.split.astype(str),
                   keep=keep, queries=make_queries(spec.queries.shift, spec.queries.mirror),
                   n_classes=data.n_classes)
    ids = list(range(min(k, spec.shadows.count)))
    peak = matmul_flops(device)

    def timed(fn):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        res = fn()
        if device == "cuda":
            torch.cuda.synchronize()
        return res, time.perf_counter() - t0

    train_shadows(spec, td, ids[:1], device=device, progress=False)  # warm-up (allocator, kernels)
    runs = {
        "vmap": lambda: train_shadows(spec, td, ids, device=device, progress=False, backend="vmap"),
        "sequential": lambda: train_shadows(spec, td, ids, device=device, progress=False, backend="sequential"),
        "loop": lambda: train_loop(spec, td, ids, device=device),
    }
    results, seconds = {}, {}
    for name, fn in runs.items():
        results[name], seconds[name] = timed(fn)

    model = build_model(spec.model.arch, data.image.shape[1], data.n_classes, spec.data.image_size, spec.model.width)
    fwd = forward_flops(model, data.image.shape[1:])
    n_pool = int((td.split == "train").sum())
    steps = spec.train.epochs * steps_per_epoch(spec, n_pool)
    # backward costs about twice the forward; evaluation is one forward per sample and query
    work = len(ids) * (3 * fwd * steps * spec.train.batch_size + fwd * len(td.label) * len(td.queries))

    def acc(res, subset):
        from mia_hpc.store import SUBSETS
        return float(np.nanmean([r.accuracy[SUBSETS.index(subset)] for r in res]))

    trainers = {}
    for name in runs:
        t = seconds[name]
        trainers[name] = {
            "shadows_per_min": 60 * len(ids) / t, "seconds_per_shadow": t / len(ids),
            "test_acc_over": acc(results[name], "test/over"), "test_acc_under": acc(results[name], "test/under"),
            "flops": work / t, "fraction_of_peak": work / t / peak,
            "max_abs_logit_diff_vs_loop": max(float(np.abs(a.logits - b.logits).max())
                                              for a, b in zip(results[name], results["loop"])),
        }
    auto = resolve_backend("auto", torch.device(device))
    return {
        "device": device, "arch": spec.model.arch, "shadows": len(ids), "epochs": spec.train.epochs,
        "threads": torch.get_num_threads(), "matmul_flops": peak, "auto_backend": auto,
        "trainers": trainers, "speedup_auto_vs_loop": seconds["loop"] / seconds[auto],
        "speedup_vmap_vs_loop": seconds["loop"] / seconds["vmap"],
        "projected_hours_for_spec": spec.shadows.count * seconds[auto] / len(ids) / 3600,
        "spec_shadows": spec.shadows.count,
    }


def format_bench(r: dict[str, Any]) -> str:
    """Human-readable bench report."""
    g = 1e9
    lines = [f"bench train: {r['shadows']} x {r['arch']} shadows, {r['epochs']} epochs, device {r['device']}, "
             f"{r['threads']} threads; dense matmul peak {r['matmul_flops'] / g:.1f} GFLOP/s"]
    for name, t in r["trainers"].items():
        lines.append(f"  {name:10}: {t['shadows_per_min']:8.2f} shadows/min ({t['seconds_per_shadow']:.2f} s/shadow)  "
                     f"{t['flops'] / g:6.1f} GFLOP/s = {100 * t['fraction_of_peak']:3.0f}% of peak  "
                     f"test acc over {t['test_acc_over']:.3f} under {t['test_acc_under']:.3f}  "
                     f"max|logit - loop| {t['max_abs_logit_diff_vs_loop']:.1e}")
    lines.append(f"  batched ({r['auto_backend']}, the default here) vs loop: {r['speedup_auto_vs_loop']:.2f}x;  "
                 f"vmap vs loop: {r['speedup_vmap_vs_loop']:.2f}x")
    lines.append(f"  projected for the spec's {r['spec_shadows']} shadows on this device: "
                 f"{r['projected_hours_for_spec']:.3f} h")
    return "\n".join(lines)

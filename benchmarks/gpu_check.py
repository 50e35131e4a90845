"""One-GPU check of the batched trainer: throughput and accuracy parity, in under 8 minutes.

Run through ``benchmarks/gpu_check.sh`` (or ``python benchmarks/gpu_check.py``). For two paper
shapes -- MNIST-shaped CNN32 (1x28x28, the ``mnist-cnn`` recipe, 61,000 + 11,000 samples, 5
queries) and CIFAR-shaped ResNet-9 (3x32x32, the ``cifar10-resnet`` recipe, 51,000 + 11,000
samples, 18 queries), on synthetic data of those shapes -- it prints:

* the K that ``shadows.batch = 0`` picks on this device (the memory probe);
* shadows per device-hour projected for the paper spec (its steps per shadow and queries) for the
  batched trainer (``vmap`` and ``sequential``, fp32 and bf16) and one model at a time (the plain
  loop), from timed steps and a timed slice of the queries (``mia_hpc.pipeline.train_bench``);
* accuracy parity: K shadows trained batched and the same shadows trained one at a time on a
  learnable synthetic task of the same shapes -- per-shadow test accuracy and the largest logit
  difference. Parity is judged on accuracy: over many steps even fp32 logits drift apart, because
  the training dynamics amplify float-order differences (measured on CPU: a 1e-6 relative
  perturbation of the loop's own initialisation grows to 0.57 relative in the weights in 20
  steps), while a leak between shadows would show as an accuracy gap;
* whether bf16 autocast reaches the convolutions inside ``vmap`` on this device, and how many
  host-device synchronisations a run of training steps makes (CUDA's sync debug mode; 1 is the
  final read of the losses).

Everything goes to stdout and, if ``$OUT`` is set (or ``--out``), to ``OUT/gpu_check.json``
(rewritten after every case, so a run cut short still leaves what it measured).
``--quick`` shrinks every size (tiny widths, a few hundred samples, two timed steps) so the
script can be checked on a CPU in about a minute; its numbers mean nothing for a GPU.
A time budget (``--budget``, default 420 s) skips the remaining sections, recording that, rather
than overrun.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from mia_hpc.pipeline.train_bench import (shadow_steps, spec_shapes, synthetic_train_data, time_queries, time_steps,  # noqa: E402
                           with_keep_rows)
from mia_hpc.contract.spec import Spec, load_spec, spec_from_dict  # noqa: E402

CASES = {
    "mnist-cnn32": REPO / "jobs" / "paper" / "mnist-augmnist-random.toml",
    "cifar-resnet9": REPO / "jobs" / "paper" / "cifar10-cifar100-random.toml",
}


def with_changes(spec: Spec, **tables: dict[str, Any]) -> Spec:
    d = spec.to_dict()
    for table, values in tables.items():
        d[table].update(values)
    return spec_from_dict(d)


class Budget:
    """Wall-clock budget: sections that would start after it are skipped (and say so)."""

    def __init__(self, seconds: float):
        self.t0 = time.perf_counter()
        self.seconds = seconds

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def left(self) -> bool:
        return self.elapsed() < self.seconds


def section(report: dict, key: str, budget: Budget, fn: Callable[[], Any]) -> Any:
    """Run one section into ``report[key]``; a failure or the budget is recorded, not raised."""
    if not budget.left():
        report[key] = {"skipped": f"time budget of {budget.seconds:.0f} s spent"}
        print(f"  {key}: skipped (budget)", flush=True)
        return None
    t0 = time.perf_counter()
    try:
        out = fn()
    except Exception as err:  # a failing section must not hide the others' results
        report[key] = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc(limit=3)}
        print(f"  {key}: ERROR {type(err).__name__}: {err}", flush=True)
        return None
    report[key] = out
    if isinstance(out, dict):
        out["seconds"] = round(time.perf_counter() - t0, 2)
    return out


def bf16_inside_vmap(device: str) -> dict[str, Any]:
    """Does autocast(bf16) reach a convolution inside vmap(functional_call) on this device?"""
    import copy

    from torch.func import functional_call, stack_module_state, vmap

    convs = [torch.nn.Conv2d(3, 8, 3, padding=1).to(device) for _ in range(2)]
    params, buffers = stack_module_state(convs)
    base = copy.deepcopy(convs[0]).to("meta")
    x = torch.rand(2, 4, 3, 8, 8, device=device)
    with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16):
        vm = vmap(lambda p, b, xx: functional_call(base, (p, b), (xx,)))(params, buffers, x).dtype
        plain = convs[0](x[0]).dtype
    return {"vmap_output_dtype": str(vm), "plain_output_dtype": str(plain), "effective": vm == torch.bfloat16}


def sync_count(spec: Spec, data, k: int, device: str, steps: int) -> dict[str, Any]:
    """Host-device synchronisations during ``steps`` training steps (CUDA sync debug mode)."""
    from mia_hpc.train.batched import ShadowStack

    if not str(device).startswith("cuda"):
        return {"skipped": "CUDA only (tests/test_gpu_speed.py counts host reads on CPU)"}
    stack = ShadowStack(spec, list(range(k)), data.image.shape[1], data.n_classes, device=device)
    images = torch.as_tensor(data.image, device=device)
    labels = torch.as_tensor(data.label.astype(np.int64), device=device)
    stack.train(data, images, labels, max_steps=2)  # warm-up outside the count
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            stack.train(data, images, labels, max_steps=steps)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message).lower()]
    return {"steps": steps, "syncs": len(syncs), "first": syncs[:3],
            "ok": len(syncs) <= 2}  # the final read of the losses (and at most one stray)


def throughput(spec: Spec, data, device: str, k: int, steps: int, eval_samples: int, quick: bool) -> dict[str, Any]:
    """Projected shadows per device-hour for the spec, per trainer configuration."""
    sh = spec_shapes(spec)
    steps_per_shadow = shadow_steps(spec, sh["n_pool"])
    cuda = device.startswith("cuda")
    configs = [("batched vmap fp32", "vmap", "fp32", False), ("batched sequential fp32", "sequential", "fp32", False),
               ("one at a time fp32", "auto", "fp32", True)]
    if cuda:
        configs += [("batched vmap bf16", "vmap", "bf16", False),
                    ("batched sequential bf16", "sequential", "bf16", False),
                    ("one at a time bf16", "auto", "bf16", True)]
    elif quick:
        configs += [("batched sequential bf16", "sequential", "bf16", False)]
    out: dict[str, Any] = {"k": k, "steps_per_shadow": steps_per_shadow, "queries": len(data.queries),
                           "shapes": sh, "configs": {}}
    for name, backend, precision, loop in configs:
        s = with_changes(spec, train={"precision": precision})
        kk = 1 if loop else k
        try:
            t_step = time_steps(s, data, kk, device, steps=steps, backend=backend, loop=loop)
            t_eval = time_queries(s, data, kk, device, samples=eval_samples, backend=backend, loop=loop)
        except Exception as err:
            out["configs"][name] = {"error": f"{type(err).__name__}: {err}"}
            print(f"    {name:26}: ERROR {type(err).__name__}: {err}", flush=True)
            continue
        per_shadow = (steps_per_shadow * t_step + t_eval) / kk
        row = {"k": kk, "ms_per_step": 1000 * t_step, "query_s_per_shadow": t_eval / kk,
               "s_per_shadow": per_shadow, "shadows_per_hour": 3600 / per_shadow}
        out["configs"][name] = row
        print(f"    {name:26}: {row['shadows_per_hour']:10.1f} shadows/hour  (K={kk}, "
              f"{row['ms_per_step']:.1f} ms/step, "
              f"queries {row['query_s_per_shadow']:.2f} s/shadow)", flush=True)
    rates = {n: r["shadows_per_hour"] for n, r in out["configs"].items() if "shadows_per_hour" in r}
    best_batched = max((v for n, v in rates.items() if n.startswith("batched")), default=float("nan"))
    loop_fp32 = rates.get("one at a time fp32", float("nan"))
    out["best_batched_vs_loop_fp32"] = best_batched / loop_fp32
    print(f"    best batched vs one at a time (fp32): {out['best_batched_vs_loop_fp32']:.2f}x", flush=True)
    return out


def parity(spec: Spec, device: str, k: int, n_pool: int, n_test: int, epochs: int, backend: str,
           precision: str) -> dict[str, Any]:
    """Train K shadows batched and one at a time on a learnable task; compare accuracies and logits."""
    from mia_hpc.contract.store import SUBSETS
    from mia_hpc.train.batched import train_shadows
    from mia_hpc.train.loop import train_loop

    s = with_changes(spec, train={"epochs": epochs, "precision": precision},
                     shadows={"count": max(2, k + k % 2), "batch": k, "shards": 1})
    data = synthetic_train_data(s, n_shadows=k, learnable=True, n_pool=n_pool, n_test=n_test, seed=1)
    ids = list(range(k))
    batched = train_shadows(s, data, ids, device=device, progress=False, backend=backend)
    looped = train_loop(s, data, ids, device=device)
    ti = SUBSETS.index("test/over")
    acc_b = [float(r.accuracy[ti]) for r in batched]
    acc_l = [float(r.accuracy[ti]) for r in looped]
    diff = max(float(np.abs(a.logits - b.logits).max()) for a, b in zip(batched, looped))
    out = {"precision": precision, "backend": backend, "k": k, "epochs": epochs, "n_pool": n_pool,
           "test_acc_batched": acc_b, "test_acc_loop": acc_l,
           "max_abs_acc_diff": max(abs(a - b) for a, b in zip(acc_b, acc_l)), "max_abs_logit_diff": diff,
           "chance": 0.1}
    # fp32: the same shadows up to float order (tiny logit differences, equal accuracy within a few
    # samples); bf16: rounding diverges trajectories, so only accuracy is compared
    out["ok"] = (out["max_abs_acc_diff"] <= (0.03 if precision == "fp32" else 0.06)
                 and min(acc_b) > 0.3)
    print(f"    parity {precision} {backend}: test acc batched {np.mean(acc_b):.3f} vs one at a time "
          f"{np.mean(acc_l):.3f} (max |diff| {out['max_abs_acc_diff']:.3f}), max |logit diff| {diff:.2e} "
          f"-> {'OK' if out['ok'] else 'CHECK'}", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes: check the script itself on a CPU")
    ap.add_argument("--device", default="auto", help="auto (cuda if available), cuda, cpu")
    ap.add_argument("--budget", type=float, default=420.0, help="seconds after which sections are skipped")
    ap.add_argument("--out", default=os.environ.get("OUT", ""), help="folder for gpu_check.json (default: $OUT)")
    ap.add_argument("--max-k", type=int, default=64, help="cap on the probed K (bounds the time of a step)")
    args = ap.parse_args(argv)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    cuda = device.startswith("cuda")
    if not cuda and not args.quick:
        print("gpu_check: no CUDA device; run with --quick to check the script on CPU", file=sys.stderr)
        return 2
    if args.quick and not cuda:
        torch.set_num_threads(1)  # tiny kernels: threads only contend (and dev machines are shared)
    budget = Budget(args.budget)
    report: dict[str, Any] = {
        "device": device, "quick": args.quick, "torch": torch.__version__, "python": platform.python_version(),
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "gpu_memory_gib": torch.cuda.get_device_properties(0).total_memory / 2**30 if cuda else None,
        "cpu_threads": torch.get_num_threads(), "cases": {},
    }
    print(f"gpu_check on {device} ({report['gpu'] or 'cpu'}), torch {torch.__version__}"
          + (" [--quick: tiny sizes, numbers are not GPU figures]" if args.quick else ""), flush=True)
    section(report, "bf16_inside_vmap", budget, lambda: bf16_inside_vmap(device))
    print(f"  bf16 autocast inside vmap: {report['bf16_inside_vmap']}", flush=True)

    def save() -> None:
        if args.out:
            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))

    for case, path in CASES.items():
        spec = load_spec(path)
        rep: dict[str, Any] = {"spec": str(path.relative_to(REPO)), "arch": spec.model.arch}
        report["cases"][case] = rep
        print(f"\n[{case}] {spec.model.arch}, recipe of {path.name}", flush=True)
        if args.quick:  # tiny widths and sizes: minutes become seconds on a CPU
            spec = with_changes(spec, model={"width": 4 if spec.model.arch.startswith("resnet") else 8},
                                data={"size": 200, "alpha": 0.9, "test_over": 100, "test_under": 20},
                                train={"batch_size": 32})
            data = synthetic_train_data(spec, n_shadows=4)
            steps, eval_samples, parity_pool, parity_test, epochs = 2, 32, 320, 100, 8
        else:
            data = synthetic_train_data(spec, n_shadows=2)
            steps, eval_samples, parity_pool, parity_test, epochs = 5, 512, 8000, 1000, 4

        def probe() -> dict[str, Any]:
            from mia_hpc.train.batched import resolve_shadow_batch

            auto = resolve_shadow_batch(with_changes(spec, shadows={"batch": 0}), data, device, 10_000)
            return {"auto_k": auto, "used_k": min(auto, args.max_k if not args.quick else 2)}

        pr = section(rep, "shadow_batch_probe", budget, probe) or {"used_k": 4}
        k = pr["used_k"]
        print(f"  shadows.batch = 0 -> K = {pr.get('auto_k')} (used here: {k})", flush=True)
        data = with_keep_rows(data, k)
        print("  throughput (projected for the paper spec):", flush=True)
        section(rep, "throughput", budget, lambda: throughput(spec, data, device, k, steps, eval_samples, args.quick))
        section(rep, "sync", budget, lambda: sync_count(spec, data, min(k, 4), device, 20))
        if cuda:
            print(f"  host syncs in 20 training steps: {rep['sync']}", flush=True)
        kp = 2 if args.quick else 4
        section(rep, "parity_fp32", budget,
                lambda: parity(spec, device, kp, parity_pool, parity_test, epochs, "vmap", "fp32"))
        if cuda or args.quick:
            be = "vmap" if cuda else "sequential"
            section(rep, "parity_bf16", budget,
                    lambda: parity(spec, device, kp, parity_pool, parity_test, epochs, be, "bf16"))
        save()

    report["seconds"] = round(budget.elapsed(), 1)
    problems = [f"{c}/{k}" for c, r in report["cases"].items() for k, v in r.items()
                if isinstance(v, dict) and ("error" in v or v.get("ok") is False)]
    report["problems"] = problems
    print(f"\ngpu_check done in {report['seconds']} s; "
          + (f"CHECK: {', '.join(problems)}" if problems else "all sections OK"), flush=True)
    save()
    if args.out:
        print(f"wrote {Path(args.out) / 'gpu_check.json'}")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())

"""``mia-hpc bench train``: what a spec's shadows cost on this device, and the batched trainer
against a plain loop.

Two measurements, both on the device at hand (CUDA if available, else CPU):

* **Projection** (:func:`bench_projection`, every spec): synthetic data of the spec's real shapes
  (pool and test sizes, channels, image side, classes) and the spec's model, recipe and precision.
  It times a few training steps of K stacked shadows (after warm-up steps) and the queries on a
  slice of the samples, and extrapolates to the spec: seconds per shadow = (steps per shadow x
  seconds per step + query time for all samples and queries) / K. From that: shadows per
  device-hour, and device-hours and wall time for the spec's M shadows (plus the oracle's, for a
  staged spec), on one device and with ``shadows.shards`` array tasks each on its own device. The
  same for a plain one-model loop (the one-at-a-time baseline). Synthetic data is fine here: a
  step's cost depends on shapes, not on pixel values. Staged specs use ``data.size`` as the pool
  of both stages (the attack pool is D_O plus the *selected* D_U, at most that): an upper bound.
* **Comparison** (:func:`bench_train`, the default for specs on the embedded digits, else
  ``--compare``): trains the same shadows to the end batched (vmap, sequential) and one at a time,
  and reports shadows per minute, accuracies, how far the trainers' logits differ, and the
  achieved FLOP/s as a fraction of this machine's dense-matmul FLOP/s measured in the same run.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import numpy as np

from mia_hpc.contract.spec import Spec
from mia_hpc.contract.settings import EVAL_BATCH

#: Test-split sizes of the real datasets (their whole test split is the default test D_O).
REAL_TEST_SIZE = {"mnist": 10_000, "cifar10": 10_000}
CHANNELS = {"digits": 1, "mnist": 1, "cifar10": 3}


def matmul_flops(device: str, n: int = 2048, seconds: float = 2.0, dtype: str = "fp32") -> float:
    """Dense matmul FLOP/s on ``device`` (the practical peak for this trainer's dtype)."""
    import torch

    dt = torch.bfloat16 if dtype == "bf16" else torch.float32
    a = torch.randn(n, n, device=device, dtype=dt)
    b = torch.randn(n, n, device=device, dtype=dt)
    (a @ b).sum().item()  # warm-up
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        (a @ b).sum().item()
        reps += 1
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def _sync(device: str) -> None:
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def _resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


# --- synthetic data of a spec's shapes --------------------------------------------------------------

def spec_shapes(spec: Spec) -> dict[str, int]:
    """Pool size, test size, channels, image side and classes of a spec's store (no data read)."""
    d = spec.data
    if d.source == "digits":
        n_test_over = int(round(1797 * d.test_fraction))  # the digits test split, about
    else:
        n_test_over = d.test_over or REAL_TEST_SIZE[d.source]
    n_test = n_test_over + (d.test_under if d.under.kind != "none" else 0)
    return {"n_pool": d.size, "n_test": n_test, "channels": CHANNELS[d.source], "side": d.image_size,
            "n_classes": 10}


def synthetic_train_data(spec: Spec, *, n_shadows: int = 2, seed: int = 0, learnable: bool = False,
                         n_pool: int | None = None, n_test: int | None = None):
    """A :class:`~mia_hpc.train.batched.TrainData` of the spec's shapes with random images.

    ``learnable``: each image is 0.6 x its class's pattern + 0.4 x noise, so a model can learn the
    labels (for accuracy-parity checks); else pure noise (for timing). A class's pattern is a
    stripe grating of period 4 pixels at its own orientation (class c: c x 180/10 degrees) with a
    random phase per image: a local texture, which convolutions see and global pooling keeps
    (position-coded prototypes average out under the CNNs' global pooling).
    """
    from mia_hpc.contract.keep import make_keep
    from mia_hpc.contract.queries import make_queries
    from mia_hpc.train.batched import TrainData

    sh = spec_shapes(spec)
    n_pool = sh["n_pool"] if n_pool is None else n_pool
    n_test = sh["n_test"] if n_test is None else n_test
    n = n_pool + n_test
    rng = np.random.default_rng(seed)
    shape = (n, sh["channels"], sh["side"], sh["side"])
    label = rng.integers(0, sh["n_classes"], n)
    image = rng.random(shape, dtype=np.float32)
    if learnable:
        side = sh["side"]
        theta = np.pi * label / sh["n_classes"]
        phase = rng.uniform(0, 2 * np.pi, n)
        yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
        arg = (np.cos(theta)[:, None, None] * xx + np.sin(theta)[:, None, None] * yy) * (2 * np.pi / 4)
        pattern = (0.5 + 0.5 * np.sin(arg + phase[:, None, None])).astype(np.float32)
        image = 0.6 * pattern[:, None] + 0.4 * image
    n_under_pool = n_pool - int(round(spec.data.alpha * n_pool))
    group = np.array(["over"] * (n_pool - n_under_pool) + ["under"] * n_under_pool
                     + ["over"] * (n_test - n_test // 10) + ["under"] * (n_test // 10))
    split = np.array(["train"] * n_pool + ["test"] * n_test)
    m = max(2, n_shadows + n_shadows % 2)
    return TrainData(image=image.astype(np.float32), label=label, group=group, split=split,
                     keep=make_keep(m, split == "train", seed), queries=make_queries(spec.queries.shift,
                                                                                    spec.queries.mirror),
                     n_classes=sh["n_classes"])


def with_keep_rows(data, k: int):
    """``data`` with keep masks for at least ``k`` shadows (synthetic data is made before K is known)."""
    from mia_hpc.contract.keep import make_keep

    if data.keep.shape[0] >= k:
        return data
    return dataclasses.replace(data, keep=make_keep(k + k % 2, data.split == "train", 0))


# --- projection -------------------------------------------------------------------------------------

def shadow_steps(spec: Spec, n_pool: int, epochs: int | None = None) -> int:
    """Optimizer steps one shadow of ``spec`` takes (DP: the Poisson schedule's)."""
    from mia_hpc.train.batched import steps_per_epoch

    if epochs:
        spec = dataclasses.replace(spec, train=dataclasses.replace(spec.train, epochs=epochs))
    if spec.dp.noise_multiplier > 0:
        from mia_hpc.train.dp_budget import dp_schedule

        return dp_schedule(spec, n_pool).steps
    return spec.train.epochs * steps_per_epoch(spec, n_pool)


def _timing_spec(spec: Spec, n_pool: int, need_steps: int) -> Spec:
    """``spec`` with just enough epochs for ``need_steps`` steps (streams are drawn for all epochs)."""
    per_epoch = max(1, shadow_steps(spec, n_pool, epochs=1))
    epochs = max(1, math.ceil(need_steps / per_epoch))
    return dataclasses.replace(spec, train=dataclasses.replace(spec.train, epochs=epochs))


def time_steps(spec: Spec, data, k: int, device: str, *, steps: int = 5, warmup: int = 2, backend: str = "auto",
               loop: bool = False) -> float:
    """Seconds per training step of K stacked shadows (``loop``: of one plain module).

    After ``warmup`` untimed steps (kernels, allocator, cuDNN autotuning), times a call that runs
    ``steps`` steps and one that runs none, and divides the difference by ``steps``: the set-up of
    a call (index streams, optimizer) cancels out. The best of two repeats of each is used, which
    keeps the figure usable on a machine shared with other jobs.
    """
    from mia_hpc.train.batched import ShadowStack
    from mia_hpc.train.loop import train_one

    import torch

    n_pool = int((data.split == "train").sum())
    tspec = _timing_spec(spec, n_pool, max(warmup, steps))
    if loop:
        def call(n: int) -> None:
            train_one(tspec, data, 0, device=device, max_steps=n, evaluate=False)
    else:
        stack = ShadowStack(tspec, list(range(k)), data.image.shape[1], data.n_classes, device=device,
                            backend=backend)
        images = torch.as_tensor(data.image, device=device)
        labels = torch.as_tensor(data.label.astype(np.int64), device=device)

        def call(n: int) -> None:
            stack.train(data, images, labels, max_steps=n)

    def run(n: int) -> float:
        _sync(device)
        t0 = time.perf_counter()
        call(n)
        _sync(device)
        return time.perf_counter() - t0

    if warmup:
        run(warmup)
    t_none = min(run(0) for _ in range(2))
    t_steps = min(run(steps) for _ in range(2))
    return max(t_steps - t_none, 1e-6 * steps) / steps


def time_queries(spec: Spec, data, k: int, device: str, *, samples: int = 0, backend: str = "auto",
                 eval_batch: int = EVAL_BATCH, loop: bool = False) -> float:
    """Seconds to compute all queries' logits of *all* samples for K shadows (extrapolated from a slice).

    ``samples`` (default: 2048 on CUDA, 128 on CPU) are timed after a warm-up pass over them (on
    CUDA only: CPU kernels need none) and the time is scaled to all samples.
    """
    import torch

    from mia_hpc.train.batched import ShadowStack, init_model
    from mia_hpc.train.loop import _query_logits

    cuda = str(device).startswith("cuda")
    n = len(data.label)
    s = max(1, min(n, samples or (2048 if cuda else 128)))
    images = torch.as_tensor(data.image[:s], device=device)
    if loop:
        model = init_model(spec, 0, data.image.shape[1], data.n_classes).to(device).eval()

        def run() -> None:
            _query_logits(model, images, data.queries, eval_batch)
    else:
        stack = ShadowStack(spec, list(range(k)), data.image.shape[1], data.n_classes, device=device,
                            backend=backend)

        def run() -> None:
            stack.query_logits(images, data.queries, eval_batch)
    if cuda:
        run()
    _sync(device)
    t0 = time.perf_counter()
    run()
    _sync(device)
    return (time.perf_counter() - t0) * n / s


def bench_projection(spec: Spec, *, device: str = "auto", shadows: int = 0, steps: int = 5, warmup: int = 2,
                     backend: str = "auto", loop: bool = True, eval_samples: int = 0) -> dict[str, Any]:
    """Shadows per device-hour for ``spec`` on this device, and the projected cost of its M shadows."""
    import torch

    from mia_hpc.models import build_model, forward_flops
    from mia_hpc.train.batched import resolve_backend, resolve_shadow_batch

    device = _resolve_device(device)
    dev = torch.device(device)
    sh = spec_shapes(spec)
    data = synthetic_train_data(spec)
    k = shadows or resolve_shadow_batch(spec, data, dev, spec.shadows.count, backend=backend)
    data = with_keep_rows(data, k)
    be = resolve_backend(backend, dev)
    staged = spec.selection.kind != "none"
    steps_attack = shadow_steps(spec, sh["n_pool"])
    m_attack = spec.shadows.count
    m_oracle = (spec.selection.oracle_shadows or spec.shadows.count) if staged else 0
    steps_oracle = shadow_steps(spec, sh["n_pool"], epochs=spec.selection.oracle_epochs or None) if staged else 0

    model = build_model(spec.model.arch, sh["channels"], sh["n_classes"], sh["side"], spec.model.width,
                        spec.model.norm)
    fwd = forward_flops(model, (sh["channels"], sh["side"], sh["side"]))
    n_params = sum(p.numel() for p in model.parameters())

    def trainer(kk: int, as_loop: bool) -> dict[str, Any]:
        t_step = time_steps(spec, data, kk, device, steps=steps, warmup=warmup, backend=backend, loop=as_loop)
        t_eval = time_queries(spec, data, kk, device, samples=eval_samples, backend=backend, loop=as_loop)
        per_attack = (steps_attack * t_step + t_eval) / kk
        per_oracle = (steps_oracle * t_step + t_eval) / kk
        device_hours = (m_attack * per_attack + m_oracle * per_oracle) / 3600
        b = spec.train.batch_size
        return {
            "k": kk, "seconds_per_step": t_step, "query_seconds_per_shadow": t_eval / kk,
            "seconds_per_shadow": per_attack, "shadows_per_device_hour": 3600 / per_attack,
            "train_flops": 3 * fwd * b * kk / t_step,
            "device_hours": device_hours, "wall_hours_one_device": device_hours,
            "wall_hours_parallel": device_hours / max(1, spec.shadows.shards),
        }

    out: dict[str, Any] = {
        "device": device, "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(), "arch": spec.model.arch, "width": spec.model.width,
        "params": n_params, "forward_flops": fwd, "precision": spec.train.precision, "backend": be,
        "shapes": sh, "queries": len(data.queries), "batch_size": spec.train.batch_size,
        "dp": spec.dp.noise_multiplier > 0,
        "steps_per_shadow": steps_attack, "spec_shadows": m_attack, "oracle_shadows": m_oracle,
        "oracle_steps_per_shadow": steps_oracle, "shards": spec.shadows.shards, "timed_steps": steps,
        "batched": trainer(k, False),
    }
    if loop:
        out["loop"] = trainer(1, True)
        rate = "shadows_per_device_hour"
        out["speedup_batched_vs_loop"] = out["batched"][rate] / out["loop"][rate]
    return out


def _hours(h: float) -> str:
    if h < 1 / 60:
        return f"{h * 3600:.0f} s"
    if h < 1:
        return f"{h * 60:.1f} min"
    return f"{h:.1f} h" if h < 48 else f"{h:.0f} h ({h / 24:.1f} days)"


def format_projection(r: dict[str, Any]) -> str:
    """Human-readable projection report."""
    sh = r["shapes"]
    total = r["spec_shadows"] + r["oracle_shadows"]
    what = (f"{r['spec_shadows']} shadows + {r['oracle_shadows']} oracle shadows" if r["oracle_shadows"]
            else f"{r['spec_shadows']} shadows")
    lines = [f"bench train (projection): {r['arch']} ({r['params'] / 1e6:.2f} M params, {r['forward_flops'] / 1e6:.1f} "
             f"MFLOP/sample), {sh['channels']}x{sh['side']}x{sh['side']} synthetic data of the spec's shapes "
             f"({sh['n_pool']} pool + {sh['n_test']} test samples, {r['queries']} queries), batch {r['batch_size']}, "
             f"{r['steps_per_shadow']} steps/shadow{' (DP-SGD)' if r['dp'] else ''}, {r['precision']}",
             f"  device {r['device']} ({r['device_name']}), {r['threads']} threads; backend {r['backend']}; "
             f"{r['timed_steps']} timed steps"]
    for name in ("batched", "loop"):
        if name not in r:
            continue
        t = r[name]
        label = f"batched (K={t['k']})" if name == "batched" else "one at a time"
        lines.append(f"  {label:16}: {t['shadows_per_device_hour']:9.1f} shadows per device-hour "
                     f"({t['seconds_per_shadow']:.2f} s/shadow: {1000 * t['seconds_per_step']:.1f} ms/step, queries "
                     f"{t['query_seconds_per_shadow']:.2f} s/shadow; {t['train_flops'] / 1e9:.1f} GFLOP/s training)")
        lines.append(f"  {'':16}  {what}: {t['device_hours']:.2f} device-hours; wall time "
                     f"{_hours(t['wall_hours_one_device'])} on one device, {_hours(t['wall_hours_parallel'])} with "
                     f"{r['shards']} array tasks on {r['shards']} devices")
    if "speedup_batched_vs_loop" in r:
        lines.append(f"  batched vs one at a time: {r['speedup_batched_vs_loop']:.2f}x  (total {total} shadows)")
    return "\n".join(lines)


# --- comparison on the spec's own data ----------------------------------------------------------------

def bench_train(spec: Spec, *, shadows: int = 0, epochs: int = 0, device: str = "auto") -> dict[str, Any]:
    """Train the same shadows batched and one at a time on the spec's data; return the measurements."""
    import torch

    from mia_hpc.data import build_dataset
    from mia_hpc.contract.keep import make_keep
    from mia_hpc.models import build_model, forward_flops
    from mia_hpc.contract.queries import make_queries
    from mia_hpc.train.batched import TrainData, resolve_backend, resolve_shadow_batch, steps_per_epoch, train_shadows
    from mia_hpc.train.loop import train_loop

    device = _resolve_device(device)
    if epochs:
        spec = dataclasses.replace(spec, train=dataclasses.replace(spec.train, epochs=epochs))
    data = build_dataset(spec)
    keep = make_keep(spec.shadows.count, data.split == "train", spec.seed, spec.shadows.keep_block)
    td = TrainData(image=data.image, label=data.label, group=data.group.astype(str), split=data.split.astype(str),
                   keep=keep, queries=make_queries(spec.queries.shift, spec.queries.mirror),
                   n_classes=data.n_classes)
    k = shadows or resolve_shadow_batch(spec, td, device, spec.shadows.count)
    ids = list(range(min(k, spec.shadows.count)))
    peak = matmul_flops(device, dtype=spec.train.precision)

    def timed(fn):
        _sync(device)
        t0 = time.perf_counter()
        res = fn()
        _sync(device)
        return res, time.perf_counter() - t0

    train_shadows(spec, td, ids[:1], device=device, progress=False)  # warm-up (allocator, kernels)
    runs = {
        "vmap": lambda: train_shadows(spec, td, ids, device=device, progress=False, backend="vmap"),
        "sequential": lambda: train_shadows(spec, td, ids, device=device, progress=False, backend="sequential"),
        "loop": lambda: train_loop(spec, td, ids, device=device),
    }
    if spec.train.precision == "bf16" and device == "cpu":
        del runs["vmap"]  # CPU autocast does not reach inside vmap (see mia_hpc.train.batched)
    results, seconds = {}, {}
    for name, fn in runs.items():
        results[name], seconds[name] = timed(fn)

    model = build_model(spec.model.arch, data.image.shape[1], data.n_classes, spec.data.image_size, spec.model.width,
                        spec.model.norm)
    fwd = forward_flops(model, data.image.shape[1:])
    n_pool = int((td.split == "train").sum())
    steps = spec.train.epochs * steps_per_epoch(spec, n_pool)
    # backward costs about twice the forward; evaluation is one forward per sample and query
    work = len(ids) * (3 * fwd * steps * spec.train.batch_size + fwd * len(td.label) * len(td.queries))

    def acc(res, subset):
        from mia_hpc.contract.store import SUBSETS
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
        "speedup_vmap_vs_loop": seconds["loop"] / seconds["vmap"] if "vmap" in seconds else float("nan"),
        "projected_hours_for_spec": spec.shadows.count * seconds[auto] / len(ids) / 3600,
        "spec_shadows": spec.shadows.count,
    }


def format_bench(r: dict[str, Any]) -> str:
    """Human-readable comparison report."""
    g = 1e9
    lines = [f"bench train (comparison): {r['shadows']} x {r['arch']} shadows, {r['epochs']} epochs, device "
             f"{r['device']}, {r['threads']} threads; dense matmul peak {r['matmul_flops'] / g:.1f} GFLOP/s"]
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

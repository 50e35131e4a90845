"""Batched shadow training: K shadows trained at once in one process with ``torch.func``.

The K models' parameters and buffers are stacked into tensors with a leading shadow axis
(``stack_module_state``); the forward pass is ``vmap(functional_call)`` over that axis, so each
step is one large batched computation instead of K small ones (the GPU's gain: small models leave
it idle). The loss is the sum over shadows of each shadow's mean loss, so the gradient of a
shadow's slice depends on its own loss only, and the optimizers used (SGD with momentum, Adam) are
element-wise: one ``torch.optim`` instance over the stacked tensors is exactly K independent ones.
BatchNorm buffers are stacked too: each shadow normalises with its own batch statistics and
updates its own running statistics, which evaluation then uses (see :mod:`mia_hpc.models`).

What a shadow sees depends only on (spec, shadow index): its initialisation, its IN set, its data
order and its augmentation draws (shifts, flips) all come from seeds derived from the spec seed
and the shadow index; the number of steps is the same for every shadow (``steps_per_epoch`` is
computed from the expected IN-set size, half the pool). Grouping shadows differently changes only
floating-point summation order inside batched kernels.

Speed (the GPU path):

* the images and labels stay on the device for the whole run; each epoch's minibatch indices and
  augmentation draws are copied to it once per epoch (from pinned memory, asynchronously), so the
  step loop never waits for the host and never reads a value back (no ``.item()``; the last
  epoch's loss is accumulated on the device and read once at the end);
* ``train.precision = "bf16"`` runs forward and backward under ``torch.autocast`` in bfloat16
  (parameters, gradients and optimizer state stay fp32; bf16 needs no loss scaling). Queries
  (the logits the attacks read) are always computed in fp32. On CPU bf16 runs too, with CPU
  autocast, but only with the ``sequential`` backend: PyTorch's CPU autocast does not reach ops
  inside ``vmap`` (pytorch/functorch#305), so ``vmap`` + bf16 on CPU is refused rather than
  silently run in fp32;
* ``channels_last`` (NHWC) inputs for convolutional models on CUDA with the ``sequential``
  backend and in the plain loop (cuDNN's fastest bf16 convolutions are NHWC); under ``vmap`` the
  convolutions become grouped kernels of PyTorch's batching rule, whose layout it chooses itself;
* ``shadows.batch = 0`` picks K by a memory probe on CUDA (:func:`resolve_shadow_batch`); on CPU
  it is :data:`CPU_AUTO_SHADOWS`, since there the per-model convolutions are compute-bound and K
  only bounds memory.
"""

from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap
from torch.nn import functional as F
from tqdm.auto import tqdm

from mia_hpc.models import build_model
from mia_hpc.contract.seeding import PURPOSE_FLIP, PURPOSE_INIT, PURPOSE_ORDER, int_seed, rng_for
from mia_hpc.contract.settings import EVAL_BATCH
from mia_hpc.contract.spec import Spec
from mia_hpc.contract.store import SUBSETS
from mia_hpc.train.guard import DivergenceGuard

# The reference model whose penultimate features the store keeps (for subpopulation selection).
FEATURE_SHADOW = 0

#: ``shadows.batch = 0`` on CPU: K shadows per process (CPU kernels gain nothing from larger K).
CPU_AUTO_SHADOWS = 8
#: ``shadows.batch = 0`` on CUDA: the share of free device memory the probe plans to use.
AUTO_MEMORY_FRACTION = 0.85
#: ``shadows.batch = 0`` on CUDA: upper bound on K (beyond it the step is long enough to fill any GPU).
MAX_AUTO_SHADOWS = 512
#: ``shadows.batch = 0``: the K shadows' logits (K x N x Q x C float32) are held on the host until
#: written; K is capped so they stay below this (CIFAR-sized paper specs: 44 MB per shadow -> K <= 195).
MAX_HOST_LOGITS_BYTES = 8 * 2**30


@dataclass(frozen=True)
class TrainData:
    """What training needs of the store, as in-memory arrays."""

    image: np.ndarray  # (N, C, H, W) float32
    label: np.ndarray  # (N,) int
    group: np.ndarray  # (N,) "over" | "under"
    split: np.ndarray  # (N,) "train" | "test"
    keep: np.ndarray  # (M, N) bool
    queries: list[tuple[str, int, int, bool]]
    n_classes: int


@dataclass(frozen=True)
class ShadowResult:
    """One trained shadow's outputs, ready for ``store.write_shadow``."""

    shadow: int
    logits: np.ndarray  # (N, Q, C) float32
    accuracy: np.ndarray  # (len(SUBSETS),) float32
    train_loss: float
    features: np.ndarray | None = None  # (N, F) penultimate features; only for FEATURE_SHADOW
    state: dict[str, torch.Tensor] | None = None  # final parameters and buffers (``keep_state=True`` only)


def steps_per_epoch(spec: Spec, n_pool: int) -> int:
    """Steps per epoch, the same for every shadow: the expected IN-set size over the batch size."""
    return max(1, math.ceil((n_pool // 2) / spec.train.batch_size))


def index_stream(spec: Spec, shadow: int, in_idx: np.ndarray, n_pool: int) -> tuple[np.ndarray, np.ndarray]:
    """The shadow's minibatch indices (steps, B) and augmentation shifts (steps, B, 2).

    Successive epochs are fresh permutations of the IN set, concatenated and cut into batches.
    """
    rng = rng_for(spec.seed, PURPOSE_ORDER, shadow)
    b = spec.train.batch_size
    steps = spec.train.epochs * steps_per_epoch(spec, n_pool)
    need = steps * b
    reps = math.ceil(need / max(1, len(in_idx)))
    stream = np.concatenate([rng.permutation(in_idx) for _ in range(reps)])[:need]
    s = spec.train.augment_shift
    shifts = rng.integers(-s, s + 1, size=(steps, b, 2)) if s else np.zeros((steps, b, 2), dtype=np.int64)
    return stream.reshape(steps, b), shifts


def flip_stream(spec: Spec, shadow: int, shape: tuple[int, ...]) -> np.ndarray | None:
    """The shadow's horizontal-flip draws (bool, ``shape``), or None without ``train.augment_flip``."""
    if not spec.train.augment_flip:
        return None
    return rng_for(spec.seed, PURPOSE_FLIP, shadow).random(shape) < 0.5


def init_model(spec: Spec, shadow: int, in_channels: int, n_classes: int) -> nn.Module:
    """The shadow's freshly initialised model, seeded by (spec seed, shadow)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int_seed(spec.seed, PURPOSE_INIT, shadow))
        return build_model(spec.model.arch, in_channels, n_classes, spec.data.image_size, spec.model.width,
                           spec.model.norm)


def shifted(images: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor, pad: int,
            mirror: torch.Tensor | None = None) -> torch.Tensor:
    """Translate each image by its own (dx, dy) with reflect padding (and optionally mirror it).

    ``images`` (..., C, H, W); ``dx``, ``dy`` integer tensors broadcastable to the leading dims.
    A translation by up to ``pad`` pixels with reflect padding is the "random crop of the padded
    image" augmentation of the CIFAR recipes.
    """
    if pad == 0 and mirror is None:
        return images
    lead = images.shape[:-3]
    c, h, w = images.shape[-3:]
    flat = images.reshape(-1, c, h, w)
    if mirror is not None:
        m = mirror.expand(lead).reshape(-1)
        flat = torch.where(m[:, None, None, None], flat.flip(-1), flat)
    if pad:
        padded = F.pad(flat, (pad, pad, pad, pad), mode="reflect")
        dxf = dx.expand(lead).reshape(-1)
        dyf = dy.expand(lead).reshape(-1)
        rows = (pad - dyf)[:, None] + torch.arange(h, device=images.device)  # (n, H)
        cols = (pad - dxf)[:, None] + torch.arange(w, device=images.device)  # (n, W)
        n = flat.shape[0]
        flat = padded[torch.arange(n, device=images.device)[:, None, None, None],
                      torch.arange(c, device=images.device)[None, :, None, None],
                      rows[:, None, :, None], cols[:, None, None, :]]
    return flat.reshape(*lead, c, h, w)


def lr_at(spec: Spec, step: int, total: int) -> float:
    """Learning rate of ``step`` (0-based) out of ``total``.

    A linear warm-up over the first ``train.warmup`` fraction of the steps (from lr/w_steps up to
    lr), then: ``cosine`` decays to 0 along half a cosine, ``triangular`` linearly to 0 (with
    ``warmup`` its peak: airbench's / one-cycle's triangle), ``constant`` stays at lr. Without
    warm-up ``cosine`` is exactly lr * (1 + cos(pi * step / total)) / 2, as before warm-up existed.
    """
    t = spec.train
    w = t.warmup * total
    if step < w:
        return t.lr * min(1.0, (step + 1) / w)
    if t.schedule == "cosine":  # written as pi * step / total when w = 0: bit-identical to the old schedule
        return t.lr * 0.5 * (1 + math.cos(math.pi * (step - w) / (total - w)))
    if t.schedule == "triangular":
        return t.lr * (1.0 - (step - w) / (total - w))
    return t.lr


def make_optimizer(spec: Spec, params: Sequence[torch.Tensor]) -> torch.optim.Optimizer:
    t = spec.train
    if t.optimizer == "sgd":
        return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay, nesterov=t.momentum > 0)
    return torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay)


def clip_per_shadow(params: Sequence[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Scale each shadow's gradient to L2 norm at most ``max_norm``; return the norms before clipping (K,).

    A shadow's gradient is its slice (leading axis) of every stacked tensor, so each shadow is
    clipped by its own norm only, as ``torch.nn.utils.clip_grad_norm_`` would clip it alone.
    """
    norms = torch.sqrt(sum(p.grad.flatten(1).pow(2).sum(1) for p in params))
    factor = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    for p in params:
        p.grad.mul_(factor.view(-1, *[1] * (p.grad.dim() - 1)))
    return norms


def autocast_for(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The training-step context of a precision: bf16 autocast, or nothing for fp32."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    if precision != "fp32":
        raise ValueError(f"train.precision: must be 'fp32' or 'bf16', got {precision!r}")
    return contextlib.nullcontext()


BACKENDS = ("auto", "vmap", "sequential")


def stacked_forward(base: nn.Module, backend: str, channels_last: bool = False):
    """``f(params, buffers, x)`` mapping stacked parameters and inputs (K, B, ...) to (K, B, C).

    ``vmap`` turns the K models into single batched (grouped) kernels: the GPU path, where small
    models would otherwise leave the device idle. ``sequential`` calls the K models one after the
    other on slices of the same stacked tensors: on CPUs the per-model convolutions are already
    compute-bound and the grouped kernels are slower. Both give the same per-shadow mathematics.
    ``channels_last`` (sequential only) hands each model its input in NHWC layout.

    Whether BatchNorm uses batch or running statistics follows ``base.training``.
    """
    def one(p, b, x):
        return functional_call(base, (p, b), (x,))

    if backend == "vmap":
        return vmap(one)
    if backend == "sequential":
        def run(p, b, x):
            k = x.shape[0]
            outs = []
            for i in range(k):
                xi = x[i].contiguous(memory_format=torch.channels_last) if channels_last else x[i]
                outs.append(one({n: t[i] for n, t in p.items()}, {n: t[i] for n, t in b.items()}, xi))
            return torch.stack(outs)
        return run
    raise ValueError(f"backend: must be one of {', '.join(BACKENDS)}, got {backend!r}")


def resolve_backend(backend: str, device: torch.device) -> str:
    """``auto``: vmap on accelerators, sequential on CPU (see :func:`stacked_forward`)."""
    if backend == "auto":
        return "sequential" if device.type == "cpu" else "vmap"
    if backend not in BACKENDS:
        raise ValueError(f"backend: must be one of {', '.join(BACKENDS)}, got {backend!r}")
    return backend


def _is_conv(arch: str) -> bool:
    return arch != "mlp"


class ShadowStack:
    """K shadows' stacked parameters and buffers on one device, and what can be done with them.

    :func:`train_shadows` is the whole job (train, query, features); the pieces are public so that
    ``mia-hpc bench train`` and the memory probe can time or size single steps of the same code.
    """

    def __init__(self, spec: Spec, shadows: Sequence[int], in_channels: int, n_classes: int, *,
                 device: str | torch.device = "cpu", backend: str = "auto", channels_last: bool | None = None):
        self.spec = spec
        self.shadows = list(shadows)
        self.device = torch.device(device)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # the same shapes every step: let cuDNN pick its fastest kernels
        self.backend = resolve_backend(backend, self.device)
        if spec.train.precision == "bf16" and self.device.type == "cpu" and self.backend == "vmap":
            raise ValueError("train.precision: 'bf16' on CPU needs the sequential backend (CPU autocast does not "
                             "reach inside vmap); use backend 'auto' or 'sequential', or precision 'fp32'")
        if channels_last is None:  # NHWC pays on CUDA for per-model convolutions only
            channels_last = (self.device.type == "cuda" and self.backend == "sequential"
                             and _is_conv(spec.model.arch))
        self.channels_last = bool(channels_last)
        models = [init_model(spec, s, in_channels, n_classes) for s in self.shadows]
        params, buffers = stack_module_state(models)
        self.params = {n: p.detach().to(self.device).requires_grad_() for n, p in params.items()}
        self.buffers = {n: b.to(self.device) for n, b in buffers.items()}
        self.base = copy.deepcopy(models[0]).to("meta")
        self.forward = stacked_forward(self.base, self.backend, self.channels_last and self.backend == "sequential")

    @property
    def k(self) -> int:
        return len(self.shadows)

    # --- training ---------------------------------------------------------------------------
    def train(self, data: TrainData, images: torch.Tensor, labels: torch.Tensor, *, progress: bool = False,
              max_steps: int | None = None) -> np.ndarray:
        """Train all K shadows (``max_steps``: stop early, for timing); each one's last-epoch mean loss."""
        self.base.train()
        n_pool = int((data.split == "train").sum())
        if self.spec.dp.noise_multiplier > 0:
            return _train_dp(self.spec, data, self.shadows, self.base, self.params, self.buffers, images, labels,
                             n_pool, progress, max_steps)
        return _train_plain(self.spec, data, self.shadows, self.forward, self.params, self.buffers, images, labels,
                            n_pool, progress, max_steps)

    # --- evaluation -------------------------------------------------------------------------
    @torch.no_grad()
    def query_logits(self, images: torch.Tensor, queries, eval_batch: int = EVAL_BATCH) -> np.ndarray:
        """Logits (K, N, Q, C) of every sample under every query, in eval mode and fp32."""
        self.base.eval()  # BatchNorm: each shadow's own running statistics
        try:
            return query_logits(self.forward, self.params, self.buffers, images, queries, eval_batch)
        finally:
            self.base.train()

    def model(self, i: int) -> nn.Module:
        """The i-th shadow as an ordinary module (eval mode) holding its trained state."""
        m = copy.deepcopy(self.base).to_empty(device=self.device)
        m.load_state_dict(self.state(i, device=self.device), strict=True)
        return m.eval()

    def state(self, i: int, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
        """The i-th shadow's parameters and buffers (a state dict), copied to ``device``."""
        out = {n: t[i].detach().to(device, copy=True) for n, t in self.params.items()}
        out.update({n: t[i].detach().to(device, copy=True) for n, t in self.buffers.items()})
        return out

    @torch.no_grad()
    def features(self, i: int, images: torch.Tensor, eval_batch: int = EVAL_BATCH) -> np.ndarray:
        """Penultimate features (N, F) of all samples under the i-th shadow (eval mode, fp32)."""
        m = self.model(i)
        return torch.cat([m.embed(xb) for xb in images.split(eval_batch)]).float().cpu().numpy()


def train_shadows(spec: Spec, data: TrainData, shadows: Sequence[int], *, device: str | torch.device = "cpu",
                  progress: bool = True, eval_batch: int = EVAL_BATCH, backend: str = "auto",
                  channels_last: bool | None = None, keep_state: bool = False) -> list[ShadowResult]:
    """Train ``shadows`` as one batch of K models and return their outputs.

    ``keep_state`` also returns each shadow's final parameters and buffers (on the CPU), for tests
    and inspection; the store does not keep them.
    """
    device = torch.device(device)
    stack = ShadowStack(spec, shadows, data.image.shape[1], data.n_classes, device=device, backend=backend,
                        channels_last=channels_last)
    images = torch.as_tensor(data.image, device=device)
    labels = torch.as_tensor(data.label.astype(np.int64), device=device)
    train_loss = stack.train(data, images, labels, progress=progress)
    logits = stack.query_logits(images, data.queries, eval_batch)  # (K, N, Q, C)
    feats = {s: stack.features(i, images, eval_batch) for i, s in enumerate(shadows) if s == FEATURE_SHADOW}
    return [ShadowResult(shadow=s, logits=logits[i], accuracy=subset_accuracy(logits[i], data, s),
                         train_loss=float(train_loss[i]), features=feats.get(s),
                         state=stack.state(i) if keep_state else None) for i, s in enumerate(shadows)]


def _to_device(arrays: Sequence[np.ndarray], device: torch.device) -> list[torch.Tensor]:
    """Host arrays to ``device``: pinned and asynchronous on CUDA, so the step loop does not wait."""
    out = []
    for a in arrays:
        t = torch.from_numpy(np.ascontiguousarray(a))
        if device.type == "cuda":
            t = t.pin_memory()
        out.append(t.to(device, non_blocking=True))
    return out


def _train_plain(spec: Spec, data: TrainData, shadows: Sequence[int], batched, params, buffers,
                 images: torch.Tensor, labels: torch.Tensor, n_pool: int, progress: bool,
                 max_steps: int | None = None) -> np.ndarray:
    """Minibatch training of the K stacked models; returns each shadow's last-epoch mean loss."""
    device = images.device
    k = len(shadows)
    streams = []
    for s in shadows:
        idx_s, shifts_s = index_stream(spec, s, np.flatnonzero(data.keep[s]), n_pool)
        # compact host copies: the whole run's draws for K shadows are held until the end
        streams.append((idx_s.astype(np.int64 if len(data.label) >= 2**31 else np.int32), shifts_s.astype(np.int8),
                        flip_stream(spec, s, idx_s.shape)))
    idx = np.stack([st[0] for st in streams], axis=1)  # (steps, K, B)
    shifts = np.stack([st[1] for st in streams], axis=1)  # (steps, K, B, 2)
    flips = np.stack([st[2] for st in streams], axis=1) if spec.train.augment_flip else None  # (steps, K, B)
    total = idx.shape[0]
    run_steps = total if max_steps is None else max(0, min(total, max_steps))
    pad = spec.train.augment_shift
    opt = make_optimizer(spec, list(params.values()))
    spe = steps_per_epoch(spec, n_pool)
    amp = autocast_for(spec.train.precision, device)
    loss_sum = torch.zeros(k, device=device)
    bar = tqdm(range(run_steps), desc=f"shadows {shadows[0]}..{shadows[-1]}", disable=not progress, leave=False,
               mininterval=1.0)
    guard = DivergenceGuard(shadows, run_steps, device, spec.train.lr, spe)
    chunk_start, chunk = -1, None
    for step in bar:
        if step % spe == 0 or chunk is None:  # one epoch of draws to the device per epoch
            chunk_start = step
            sl = slice(step, min(total, step + spe))
            parts = [idx[sl], shifts[sl]] + ([flips[sl]] if flips is not None else [])
            chunk = _to_device(parts, device)
        for g in opt.param_groups:
            g["lr"] = lr_at(spec, step, total)
        j = step - chunk_start
        bi = chunk[0][j].long()
        sh = chunk[1][j].long()
        x = shifted(images[bi], sh[..., 0], sh[..., 1], pad, chunk[2][j] if flips is not None else None)
        y = labels[bi]
        with amp:
            out = batched(params, buffers, x)  # (K, B, C)
        per_shadow = F.cross_entropy(out.float().flatten(0, 1), y.flatten(), reduction="none").view(k, -1).mean(1)
        opt.zero_grad(set_to_none=True)
        guard.update(step, per_shadow)
        per_shadow.sum().backward()
        if spec.train.clip_grad_norm > 0:
            clip_per_shadow(list(params.values()), spec.train.clip_grad_norm)
        opt.step()
        if step >= total - spe:  # the last epoch's mean loss, without a host sync per step
            loss_sum += per_shadow.detach()
    return (loss_sum / min(spe, total)).cpu().numpy()


def _train_dp(spec: Spec, data: TrainData, shadows: Sequence[int], base, params, buffers, images: torch.Tensor,
              labels: torch.Tensor, n_pool: int, progress: bool, max_steps: int | None = None) -> np.ndarray:
    """DP-SGD of the K stacked models (see :mod:`mia_hpc.train.dp_sgd`); last-epoch mean loss."""
    from mia_hpc.train.dp_budget import dp_schedule
    from mia_hpc.train.dp_sgd import (clipped_sum, expected_batch, noise_generators, noisy_gradient, pad_step,
                                      per_sample_grads, poisson_stream)

    device = images.device
    k = len(shadows)
    streams = [poisson_stream(spec, s, np.flatnonzero(data.keep[s]), n_pool) for s in shadows]
    flip_rngs = [rng_for(spec.seed, PURPOSE_FLIP, s) for s in shadows] if spec.train.augment_flip else None
    total = dp_schedule(spec, n_pool).steps
    run_steps = total if max_steps is None else max(0, min(total, max_steps))
    spe = math.ceil(total / spec.train.epochs)
    gens = noise_generators(spec, shadows, device)
    norm = expected_batch(spec, n_pool)
    opt = make_optimizer(spec, list(params.values()))
    loss_sum = torch.zeros(k, device=device)
    pad = spec.train.augment_shift
    bar = tqdm(range(run_steps), desc=f"DP shadows {shadows[0]}..{shadows[-1]}", disable=not progress, leave=False,
               mininterval=1.0)

    def host_step(step: int) -> list[np.ndarray]:
        arrays = list(pad_step([st[step] for st in streams]))
        if flip_rngs is not None:
            flips = np.zeros(arrays[0].shape, dtype=bool)
            for j, (st, rng) in enumerate(zip(streams, flip_rngs)):
                flips[j, :len(st[step][0])] = rng.random(len(st[step][0])) < 0.5
            arrays.append(flips)
        return arrays

    guard = DivergenceGuard(shadows, run_steps, device, spec.train.lr, spe)
    chunk_start, chunk = -1, None
    for step in bar:
        if step % spe == 0 or chunk is None:  # an epoch of padded Poisson batches to the device at once
            chunk_start = step
            chunk = [_to_device(host_step(t), device) for t in range(step, min(total, step + spe))]
        for g in opt.param_groups:
            g["lr"] = lr_at(spec, step, total)
        cur = chunk[step - chunk_start]
        idx, shifts, weight = cur[0], cur[1], cur[2]
        x = shifted(images[idx], shifts[..., 0], shifts[..., 1], pad, cur[3] if flip_rngs is not None else None)
        grads, losses = per_sample_grads(base, {n: p.detach() for n, p in params.items()}, buffers, x, labels[idx])
        guard.update(step, (losses * weight).sum(1) / weight.sum(1).clamp(min=1))
        noisy = noisy_gradient(clipped_sum(grads, weight, spec.dp.max_grad_norm), gens, spec, norm)
        for name, p in params.items():
            p.grad = noisy[name]
        opt.step()
        if step >= total - spe:
            loss_sum += (losses * weight).sum(1) / weight.sum(1).clamp(min=1)
    return (loss_sum / min(spe, total)).cpu().numpy()


def query_views(images: torch.Tensor, queries, eval_batch: int) -> Iterator[Iterator[torch.Tensor]]:
    """Each query's view of the images, in query order, ``eval_batch`` images at a time.

    A view is made per chunk, when it is asked for, not for all N images at once: at CIFAR-10's
    shape a whole view (padding, mirror, gather) held ~3 GB beside the images; per chunk it is a
    few MB. Every image is shifted on its own, so the views, and the logits, are the same bits.
    """
    pad = max([max(abs(dx), abs(dy)) for _, dx, dy, _ in queries] + [0])
    dev = images.device
    for _, dx, dy, mirror in queries:
        yield (shifted(xb, torch.tensor(dx, device=dev), torch.tensor(dy, device=dev), pad,
                       torch.tensor(mirror, device=dev) if mirror else None) for xb in images.split(eval_batch))


@torch.no_grad()
def query_logits(batched, params, buffers, images: torch.Tensor, queries, eval_batch: int) -> np.ndarray:
    """Logits of every sample under every query for the K stacked models: (K, N, Q, C).

    Each query's logits go to the host as soon as they are complete, so device memory holds one
    query's (K, N, C) at a time, not all Q.
    """
    k = next(iter(params.values())).shape[0]
    out: np.ndarray | None = None
    for q, views in enumerate(query_views(images, queries, eval_batch)):
        chunks = [batched(params, buffers, xb.expand(k, *xb.shape)).float() for xb in views]
        logits = torch.cat(chunks, dim=1).cpu().numpy()  # (K, N, C)
        if out is None:  # filled in place: the host holds one (K, N, Q, C) array, not two
            out = np.empty((k, logits.shape[1], len(queries), logits.shape[2]), dtype=np.float32)
        out[:, :, q] = logits
    assert out is not None, "query_logits: no queries"
    return out


def subset_accuracy(logits: np.ndarray, data: TrainData, shadow: int) -> np.ndarray:
    """Identity-query accuracy on the shadow's own IN samples and on the test split, per group."""
    correct = logits[:, 0].argmax(-1) == data.label
    acc = []
    for subset in SUBSETS:
        split, group = subset.split("/")
        sel = (data.group == group) & ((data.keep[shadow]) if split == "train" else (data.split == "test"))
        acc.append(correct[sel].mean() if sel.any() else np.nan)
    return np.asarray(acc, dtype=np.float32)


def iter_batches(items: Sequence[int], size: int) -> Iterator[list[int]]:
    """Consecutive groups of at most ``size`` shadows."""
    if size < 1:
        raise ValueError(f"iter_batches: size must be >= 1 (resolve shadows.batch = 0 first), got {size}")
    for start in range(0, len(items), size):
        yield list(items[start:start + size])


# --- K = 0: choosing the batch of shadows -----------------------------------------------------------

def resolve_shadow_batch(spec: Spec, data: TrainData, device: str | torch.device, n_todo: int, *,
                         backend: str = "auto", eval_batch: int = EVAL_BATCH) -> int:
    """K for this process: ``shadows.batch`` if set, else CPU_AUTO_SHADOWS on CPU or a CUDA memory probe.

    Never more than ``n_todo`` (the shadows this process has to train), never less than 1, and on
    CUDA never so many that the batch's logits exceed MAX_HOST_LOGITS_BYTES on the host.
    """
    if spec.shadows.batch:
        return max(1, min(spec.shadows.batch, max(1, n_todo)))
    device = torch.device(device)
    if device.type != "cuda":
        return max(1, min(CPU_AUTO_SHADOWS, n_todo))
    host = MAX_HOST_LOGITS_BYTES // max(1, len(data.label) * len(data.queries) * data.n_classes * 4)
    probed = probe_shadow_batch(spec, data, device, backend=backend, eval_batch=eval_batch)
    return max(1, min(n_todo, probed, host))


def _probe_peak(spec: Spec, data: TrainData, k: int, device: torch.device, backend: str, eval_batch: int) -> int:
    """Peak device bytes above the current allocation of one training step and one query chunk of K shadows."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    c, h, w = data.image.shape[1:]
    stack = ShadowStack(spec, list(range(k)), c, data.n_classes, device=device, backend=backend)
    b = spec.train.batch_size
    if spec.dp.noise_multiplier > 0:  # Poisson batches: plan for 30% above the expected size
        from mia_hpc.train.dp_budget import dp_schedule
        from mia_hpc.train.dp_sgd import clipped_sum, per_sample_grads

        n_pool = int((data.split == "train").sum())
        b = max(1, math.ceil(1.3 * dp_schedule(spec, n_pool).sample_rate * (n_pool // 2)))
        x = torch.rand(k, b, c, h, w, device=device)
        y = torch.randint(0, data.n_classes, (k, b), device=device)
        grads, _ = per_sample_grads(stack.base, {n: p.detach() for n, p in stack.params.items()}, stack.buffers, x, y)
        clipped_sum(grads, torch.ones(k, b, device=device), 1.0)
        del grads
    else:
        x = torch.rand(k, b, c, h, w, device=device)
        y = torch.randint(0, data.n_classes, (k, b), device=device)
        opt = make_optimizer(spec, list(stack.params.values()))
        with autocast_for(spec.train.precision, device):
            out = stack.forward(stack.params, stack.buffers, x)
        F.cross_entropy(out.float().flatten(0, 1), y.flatten()).backward()
        opt.step()  # optimizer state (momentum, Adam moments) is allocated here
        del out
    xe = torch.rand(min(eval_batch, len(data.label)), c, h, w, device=device)
    stack.base.eval()
    with torch.no_grad():
        stack.forward(stack.params, stack.buffers, xe.expand(k, *xe.shape))
    torch.cuda.synchronize(device)
    return int(torch.cuda.max_memory_allocated(device) - before)


def probe_shadow_batch(spec: Spec, data: TrainData, device: torch.device, *, backend: str = "auto",
                       eval_batch: int = EVAL_BATCH) -> int:
    """The largest K whose training and queries fit AUTO_MEMORY_FRACTION of the free CUDA memory.

    Peak memory is linear in K (every stacked tensor has a K axis): one step at K = 1 and K = 2
    gives the per-shadow and the fixed part. The data (resident on the device) and each shadow's
    share of one query's logits (kept on the device until the query is complete) are added.
    """
    torch.cuda.empty_cache()
    p1 = _probe_peak(spec, data, 1, device, backend, eval_batch)
    p2 = _probe_peak(spec, data, 2, device, backend, eval_batch)
    torch.cuda.empty_cache()
    free, _total = torch.cuda.mem_get_info(device)
    per = max(p2 - p1, 1) + len(data.label) * data.n_classes * 4 * 2
    fixed = max(p1 - (p2 - p1), 0) + data.image.nbytes + data.label.size * 8
    k = int((free * AUTO_MEMORY_FRACTION - fixed) // per)
    return max(1, min(MAX_AUTO_SHADOWS, k))

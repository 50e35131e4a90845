"""Batched shadow training: K shadows trained at once in one process with ``torch.func``.

The K models' parameters are stacked into tensors with a leading shadow axis
(``stack_module_state``); the forward pass is ``vmap(functional_call)`` over that axis, so each
step is one large batched computation instead of K small ones (the GPU's gain: small models leave
it idle). The loss is the sum over shadows of each shadow's mean loss, so the gradient of a
shadow's slice depends on its own loss only, and the optimizers used (SGD with momentum, Adam) are
element-wise: one ``torch.optim`` instance over the stacked tensors is exactly K independent ones.

What a shadow sees depends only on (spec, shadow index): its initialisation, its IN set, its data
order and its augmentation offsets all come from seeds derived from the spec seed and the shadow
index; the number of steps is the same for every shadow (``steps_per_epoch`` is computed from the
expected IN-set size, half the pool). Grouping shadows differently changes only floating-point
summation order inside batched kernels.
"""

from __future__ import annotations

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
from mia_hpc.seeding import int_seed, rng_for
from mia_hpc.spec import Spec
from mia_hpc.store import SUBSETS

# The reference model whose penultimate features the store keeps (for subpopulation selection).
FEATURE_SHADOW = 0
INIT_PURPOSE = 2
ORDER_PURPOSE = 3


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


def steps_per_epoch(spec: Spec, n_pool: int) -> int:
    """Steps per epoch, the same for every shadow: the expected IN-set size over the batch size."""
    return max(1, math.ceil((n_pool // 2) / spec.train.batch_size))


def index_stream(spec: Spec, shadow: int, in_idx: np.ndarray, n_pool: int) -> tuple[np.ndarray, np.ndarray]:
    """The shadow's minibatch indices (steps, B) and augmentation shifts (steps, B, 2).

    Successive epochs are fresh permutations of the IN set, concatenated and cut into batches.
    """
    rng = rng_for(spec.seed, ORDER_PURPOSE, shadow)
    b = spec.train.batch_size
    steps = spec.train.epochs * steps_per_epoch(spec, n_pool)
    need = steps * b
    reps = math.ceil(need / max(1, len(in_idx)))
    stream = np.concatenate([rng.permutation(in_idx) for _ in range(reps)])[:need]
    s = spec.train.augment_shift
    shifts = rng.integers(-s, s + 1, size=(steps, b, 2)) if s else np.zeros((steps, b, 2), dtype=np.int64)
    return stream.reshape(steps, b), shifts


def init_model(spec: Spec, shadow: int, in_channels: int, n_classes: int) -> nn.Module:
    """The shadow's freshly initialised model, seeded by (spec seed, shadow)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int_seed(spec.seed, INIT_PURPOSE, shadow))
        return build_model(spec.model.arch, in_channels, n_classes, spec.data.image_size, spec.model.width)


def shifted(images: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor, pad: int,
            mirror: torch.Tensor | None = None) -> torch.Tensor:
    """Translate each image by its own (dx, dy) with reflect padding (and optionally mirror it).

    ``images`` (..., C, H, W); ``dx``, ``dy`` integer tensors broadcastable to the leading dims.
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
    if spec.train.schedule == "cosine":
        return spec.train.lr * 0.5 * (1 + math.cos(math.pi * step / total))
    return spec.train.lr


def make_optimizer(spec: Spec, params: Sequence[torch.Tensor]) -> torch.optim.Optimizer:
    t = spec.train
    if t.optimizer == "sgd":
        return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay, nesterov=t.momentum > 0)
    return torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay)


BACKENDS = ("auto", "vmap", "sequential")


def stacked_forward(base: nn.Module, backend: str):
    """``f(params, buffers, x)`` mapping stacked parameters and inputs (K, B, ...) to (K, B, C).

    ``vmap`` turns the K models into single batched (grouped) kernels: the GPU path, where small
    models would otherwise leave the device idle. ``sequential`` calls the K models one after the
    other on slices of the same stacked tensors: on CPUs the per-model convolutions are already
    compute-bound and the grouped kernels are slower. Both give the same per-shadow mathematics.
    """
    def one(p, b, x):
        return functional_call(base, (p, b), (x,))

    if backend == "vmap":
        return vmap(one)
    if backend == "sequential":
        def run(p, b, x):
            k = x.shape[0]
            return torch.stack([one({n: t[i] for n, t in p.items()}, {n: t[i] for n, t in b.items()}, x[i])
                                for i in range(k)])
        return run
    raise ValueError(f"backend: must be one of {', '.join(BACKENDS)}, got {backend!r}")


def resolve_backend(backend: str, device: torch.device) -> str:
    """``auto``: vmap on accelerators, sequential on CPU (see :func:`stacked_forward`)."""
    if backend == "auto":
        return "sequential" if device.type == "cpu" else "vmap"
    return backend


def train_shadows(spec: Spec, data: TrainData, shadows: Sequence[int], *, device: str | torch.device = "cpu",
                  progress: bool = True, eval_batch: int = 1024, backend: str = "auto") -> list[ShadowResult]:
    """Train ``shadows`` as one batch of K models and return their outputs."""
    device = torch.device(device)
    in_ch = data.image.shape[1]
    n_pool = int((data.split == "train").sum())
    models = [init_model(spec, s, in_ch, data.n_classes) for s in shadows]
    params, buffers = stack_module_state(models)
    params = {name: p.detach().to(device).requires_grad_() for name, p in params.items()}
    buffers = {name: b.to(device) for name, b in buffers.items()}
    base = copy.deepcopy(models[0]).to("meta")

    batched = stacked_forward(base, resolve_backend(backend, device))
    images = torch.as_tensor(data.image, device=device)
    labels = torch.as_tensor(data.label.astype(np.int64), device=device)

    if spec.dp.noise_multiplier > 0:
        train_loss = _train_dp(spec, data, shadows, base, params, buffers, images, labels, n_pool, progress)
    else:
        train_loss = _train_plain(spec, data, shadows, batched, params, buffers, images, labels, n_pool, progress)

    logits = query_logits(batched, params, buffers, images, data.queries, eval_batch)  # (K, N, Q, C)
    feats = {s: embed_features(spec, params, i, s, images, data.n_classes, eval_batch) for i, s in enumerate(shadows)
             if s == FEATURE_SHADOW}
    return [ShadowResult(shadow=s, logits=logits[i], accuracy=subset_accuracy(logits[i], data, s),
                         train_loss=float(train_loss[i]), features=feats.get(s)) for i, s in enumerate(shadows)]


def _train_plain(spec: Spec, data: TrainData, shadows: Sequence[int], batched, params, buffers,
                 images: torch.Tensor, labels: torch.Tensor, n_pool: int, progress: bool) -> np.ndarray:
    """Minibatch training of the K stacked models; returns each shadow's last-epoch mean loss."""
    device = images.device
    k = len(shadows)
    streams = [index_stream(spec, s, np.flatnonzero(data.keep[s]), n_pool) for s in shadows]
    idx = torch.as_tensor(np.stack([st[0] for st in streams], axis=1), device=device)  # (steps, K, B)
    shifts = torch.as_tensor(np.stack([st[1] for st in streams], axis=1), device=device)  # (steps, K, B, 2)
    total = idx.shape[0]
    pad = spec.train.augment_shift
    opt = make_optimizer(spec, list(params.values()))
    spe = steps_per_epoch(spec, n_pool)
    loss_sum = torch.zeros(k, device=device)
    bar = tqdm(range(total), desc=f"shadows {shadows[0]}..{shadows[-1]}", disable=not progress, leave=False,
               mininterval=1.0)
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = lr_at(spec, step, total)
        bi = idx[step]
        x = shifted(images[bi], shifts[step, ..., 0], shifts[step, ..., 1], pad)
        y = labels[bi]
        out = batched(params, buffers, x)  # (K, B, C)
        per_shadow = F.cross_entropy(out.flatten(0, 1), y.flatten(), reduction="none").view(k, -1).mean(1)
        opt.zero_grad(set_to_none=True)
        per_shadow.sum().backward()
        opt.step()
        if step >= total - spe:  # the last epoch's mean loss, without a host sync per step
            loss_sum += per_shadow.detach()
    return (loss_sum / min(spe, total)).cpu().numpy()


def _train_dp(spec: Spec, data: TrainData, shadows: Sequence[int], base, params, buffers, images: torch.Tensor,
              labels: torch.Tensor, n_pool: int, progress: bool) -> np.ndarray:
    """DP-SGD of the K stacked models (see :mod:`mia_hpc.train.dp_sgd`); last-epoch mean loss."""
    from mia_hpc.dp import dp_schedule
    from mia_hpc.train.dp_sgd import (clipped_sum, expected_batch, noise_generators, noisy_gradient, pad_step,
                                      per_sample_grads, poisson_stream)

    device = images.device
    k = len(shadows)
    streams = [poisson_stream(spec, s, np.flatnonzero(data.keep[s]), n_pool) for s in shadows]
    total = dp_schedule(spec, n_pool).steps
    spe = math.ceil(total / spec.train.epochs)
    gens = noise_generators(spec, shadows, device)
    norm = expected_batch(spec, n_pool)
    opt = make_optimizer(spec, list(params.values()))
    loss_sum = torch.zeros(k, device=device)
    pad = spec.train.augment_shift
    bar = tqdm(range(total), desc=f"DP shadows {shadows[0]}..{shadows[-1]}", disable=not progress, leave=False,
               mininterval=1.0)
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = lr_at(spec, step, total)
        idx, shifts, weight = (torch.as_tensor(a, device=device) for a in pad_step([st[step] for st in streams]))
        x = shifted(images[idx], shifts[..., 0], shifts[..., 1], pad)
        grads, losses = per_sample_grads(base, {n: p.detach() for n, p in params.items()}, buffers, x, labels[idx])
        noisy = noisy_gradient(clipped_sum(grads, weight, spec.dp.max_grad_norm), gens, spec, norm)
        for name, p in params.items():
            p.grad = noisy[name]
        opt.step()
        if step >= total - spe:
            loss_sum += (losses * weight).sum(1) / weight.sum(1).clamp(min=1)
    return (loss_sum / min(spe, total)).cpu().numpy()


@torch.no_grad()
def embed_features(spec: Spec, params: dict[str, torch.Tensor], i: int, shadow: int, images: torch.Tensor,
                   n_classes: int, eval_batch: int) -> np.ndarray:
    """Penultimate features of all samples under the i-th stacked model: (N, F)."""
    model = init_model(spec, shadow, images.shape[1], n_classes)
    model.load_state_dict({name: t[i] for name, t in params.items()})
    model.to(images.device).eval()
    return torch.cat([model.embed(xb) for xb in images.split(eval_batch)]).float().cpu().numpy()


def query_views(images: torch.Tensor, queries) -> Iterator[torch.Tensor]:
    """Each query's view of all images, in query order."""
    pad = max([max(abs(dx), abs(dy)) for _, dx, dy, _ in queries] + [0])
    dev = images.device
    for _, dx, dy, mirror in queries:
        yield shifted(images, torch.tensor(dx, device=dev), torch.tensor(dy, device=dev), pad,
                      torch.tensor(mirror, device=dev) if mirror else None)


@torch.no_grad()
def query_logits(batched, params, buffers, images: torch.Tensor, queries, eval_batch: int) -> np.ndarray:
    """Logits of every sample under every query for the K stacked models: (K, N, Q, C)."""
    k = next(iter(params.values())).shape[0]
    out = []
    for view in query_views(images, queries):
        chunks = [batched(params, buffers, xb.expand(k, *xb.shape)).float()
                  for xb in view.split(eval_batch)]
        out.append(torch.cat(chunks, dim=1))
    return torch.stack(out, dim=2).cpu().numpy()


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
    for start in range(0, len(items), size):
        yield list(items[start:start + size])


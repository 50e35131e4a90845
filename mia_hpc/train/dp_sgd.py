"""DP-SGD inside the batched trainer: Poisson sampling, per-sample clipping, Gaussian noise.

Per-sample gradients come from ``torch.func`` (``grad_and_value`` vmapped over the samples of a
batch and over the K stacked models). Each sample's gradient (all parameters together) is clipped
to norm C, the clipped gradients are summed, Gaussian noise N(0, sigma^2 C^2) is added, and the
sum is divided by the expected batch size, as Opacus does. Poisson sampling and noise draw from
generators seeded by (spec seed, shadow), so a shadow's DP training still depends only on
(spec, shadow index). Batches have a random size; they are padded to the largest in the step with
zero-weight entries, which contribute exact zeros.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch.func import functional_call, grad_and_value, vmap
from torch.nn import functional as F

from mia_hpc.train.dp_budget import dp_schedule
from mia_hpc.contract.seeding import PURPOSE_NOISE, PURPOSE_POISSON, int_seed, rng_for
from mia_hpc.contract.spec import Spec



def poisson_stream(spec: Spec, shadow: int, in_idx: np.ndarray, n_pool: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per step: the indices Poisson-sampled from the IN set (rate q) and their shifts (n, 2)."""
    sched = dp_schedule(spec, n_pool)
    rng = rng_for(spec.seed, PURPOSE_POISSON, shadow)
    s = spec.train.augment_shift
    out = []
    for _ in range(sched.steps):
        picked = in_idx[rng.random(len(in_idx)) < sched.sample_rate]
        shifts = rng.integers(-s, s + 1, size=(len(picked), 2)) if s else np.zeros((len(picked), 2), np.int64)
        out.append((picked, shifts))
    return out


def pad_step(batches: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stack K variable-size batches into (K, B) indices, (K, B, 2) shifts and (K, B) weights."""
    k = len(batches)
    b = max(1, max(len(i) for i, _ in batches))
    idx = np.zeros((k, b), np.int64)
    shifts = np.zeros((k, b, 2), np.int64)
    weight = np.zeros((k, b), np.float32)
    for j, (i, s) in enumerate(batches):
        idx[j, :len(i)], shifts[j, :len(i)], weight[j, :len(i)] = i, s, 1.0
    return idx, shifts, weight


def per_sample_grads(base: torch.nn.Module, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor],
                     x: torch.Tensor, y: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Gradients of each sample's loss under each model: {name: (K, B, *shape)}, losses (K, B)."""
    def loss(p, b, xi, yi):
        return F.cross_entropy(functional_call(base, (p, b), (xi[None],)), yi[None])

    per_sample = vmap(grad_and_value(loss), in_dims=(None, None, 0, 0))
    return vmap(per_sample, in_dims=(0, 0, 0, 0))(params, buffers, x, y)


def clipped_sum(grads: dict[str, torch.Tensor], weight: torch.Tensor, max_norm: float) -> dict[str, torch.Tensor]:
    """Sum over samples of per-sample gradients clipped to ``max_norm`` (all parameters jointly)."""
    sq = sum(g.flatten(2).pow(2).sum(-1) for g in grads.values())  # (K, B)
    factor = (max_norm / (sq.sqrt() + 1e-6)).clamp(max=1.0) * weight
    return {n: torch.einsum("kb,kb...->k...", factor, g) for n, g in grads.items()}


def noisy_gradient(summed: dict[str, torch.Tensor], generators: Sequence[torch.Generator], spec: Spec,
                   expected_batch: float) -> dict[str, torch.Tensor]:
    """Add N(0, (sigma C)^2) per shadow from its own generator; divide by the expected batch size."""
    std = spec.dp.noise_multiplier * spec.dp.max_grad_norm
    out = {}
    for name, g in summed.items():
        noise = torch.stack([torch.randn(g.shape[1:], generator=gen, device=g.device, dtype=g.dtype)
                             for gen in generators])
        out[name] = (g + std * noise) / expected_batch
    return out


def noise_generators(spec: Spec, shadows: Sequence[int], device: torch.device) -> list[torch.Generator]:
    """One noise generator per shadow, seeded by (spec seed, shadow)."""
    gens = []
    for s in shadows:
        g = torch.Generator(device=device)
        g.manual_seed(int_seed(spec.seed, PURPOSE_NOISE, s))
        gens.append(g)
    return gens


def expected_batch(spec: Spec, n_pool: int) -> float:
    """q times the expected IN-set size: the normaliser of the noisy gradient sum."""
    return dp_schedule(spec, n_pool).sample_rate * max(1, n_pool // 2)



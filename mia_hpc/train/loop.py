"""The plain reference trainer: one shadow at a time, an ordinary ``nn.Module`` and optimizer.

Same recipe, initialisation, data order, augmentation draws, precision and queries as the batched
trainer, so the two agree up to floating-point order; used by ``mia-hpc bench train`` and
``benchmarks/gpu_check.py`` as the one-at-a-time baseline and by the tests as an independent
check of the batched trainer (BatchNorm included: this loop is PyTorch's own ``train()`` /
``eval()`` handling of running statistics).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch.nn import functional as F

from mia_hpc.contract.settings import EVAL_BATCH
from mia_hpc.contract.spec import Spec
from mia_hpc.train.batched import (ShadowResult, TrainData, autocast_for, flip_stream, index_stream, init_model,
                                   lr_at, make_optimizer, query_views, shifted, steps_per_epoch, subset_accuracy)


def train_one(spec: Spec, data: TrainData, shadow: int, *, device: str | torch.device = "cpu",
              eval_batch: int = EVAL_BATCH, channels_last: bool | None = None, keep_state: bool = False,
              max_steps: int | None = None, evaluate: bool = True) -> ShadowResult:
    """Train a single shadow with a plain PyTorch loop.

    ``max_steps`` stops early and ``evaluate = False`` skips the queries (both for timing; the
    result then has empty logits). ``channels_last`` (default: on CUDA for convolutional models)
    feeds NHWC inputs.
    """
    device = torch.device(device)
    if channels_last is None:
        channels_last = device.type == "cuda" and spec.model.arch != "mlp"
    n_pool = int((data.split == "train").sum())
    model = init_model(spec, shadow, data.image.shape[1], data.n_classes).to(device)
    images = torch.as_tensor(data.image, device=device)
    labels = torch.as_tensor(data.label.astype(np.int64), device=device)
    idx, shifts = index_stream(spec, shadow, np.flatnonzero(data.keep[shadow]), n_pool)
    flips = flip_stream(spec, shadow, idx.shape)
    idx, shifts = torch.as_tensor(idx, device=device), torch.as_tensor(shifts, device=device)
    flips = torch.as_tensor(flips, device=device) if flips is not None else None
    opt = make_optimizer(spec, list(model.parameters()))
    total, spe = idx.shape[0], steps_per_epoch(spec, n_pool)
    run_steps = total if max_steps is None else max(0, min(total, max_steps))
    amp = autocast_for(spec.train.precision, device)
    loss_sum = torch.zeros((), device=device)
    model.train()
    for step in range(run_steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(spec, step, total)
        x = shifted(images[idx[step]], shifts[step, :, 0], shifts[step, :, 1], spec.train.augment_shift,
                    flips[step] if flips is not None else None)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with amp:
            out = model(x)
        loss = F.cross_entropy(out.float(), labels[idx[step]])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if spec.train.clip_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), spec.train.clip_grad_norm)
        opt.step()
        if step >= total - spe:
            loss_sum += loss.detach()
    model.eval()  # BatchNorm: running statistics from here on
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()} if keep_state else None
    if not evaluate:
        return ShadowResult(shadow=shadow, logits=np.zeros((0, 0, 0), np.float32),
                            accuracy=np.full(4, np.nan, np.float32), train_loss=float("nan"), state=state)
    logits = _query_logits(model, images, data.queries, eval_batch)
    return ShadowResult(shadow=shadow, logits=logits, accuracy=subset_accuracy(logits, data, shadow),
                        train_loss=float(loss_sum / min(spe, total)), state=state)


@torch.no_grad()
def _query_logits(model, images, queries, eval_batch) -> np.ndarray:
    out = [torch.cat([model(xb) for xb in views]) for views in query_views(images, queries, eval_batch)]
    return torch.stack(out, dim=1).float().cpu().numpy()


def train_loop(spec: Spec, data: TrainData, shadows: Sequence[int], **kw) -> list[ShadowResult]:
    """Train shadows one after the other."""
    return [train_one(spec, data, s, **kw) for s in shadows]

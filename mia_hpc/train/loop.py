"""The plain reference trainer: one shadow at a time, an ordinary ``nn.Module`` and optimizer.

Same recipe, initialisation, data order and queries as the batched trainer, so the two agree up to
floating-point order; used by ``mia-hpc bench train`` as the baseline and by the tests as an
independent check of the batched trainer.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch.nn import functional as F

from mia_hpc.spec import Spec
from mia_hpc.train.batched import (ShadowResult, TrainData, lr_at, make_optimizer, index_stream, init_model,
                                   query_views, shifted, steps_per_epoch, subset_accuracy)


def train_one(spec: Spec, data: TrainData, shadow: int, *, device: str | torch.device = "cpu",
              eval_batch: int = 1024) -> ShadowResult:
    """Train a single shadow with a plain PyTorch loop."""
    device = torch.device(device)
    n_pool = int((data.split == "train").sum())
    model = init_model(spec, shadow, data.image.shape[1], data.n_classes).to(device)
    images = torch.as_tensor(data.image, device=device)
    labels = torch.as_tensor(data.label.astype(np.int64), device=device)
    idx, shifts = index_stream(spec, shadow, np.flatnonzero(data.keep[shadow]), n_pool)
    idx, shifts = torch.as_tensor(idx, device=device), torch.as_tensor(shifts, device=device)
    opt = make_optimizer(spec, list(model.parameters()))
    total, spe = idx.shape[0], steps_per_epoch(spec, n_pool)
    loss_sum = torch.zeros((), device=device)
    for step in range(total):
        for g in opt.param_groups:
            g["lr"] = lr_at(spec, step, total)
        x = shifted(images[idx[step]], shifts[step, :, 0], shifts[step, :, 1], spec.train.augment_shift)
        loss = F.cross_entropy(model(x), labels[idx[step]])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step >= total - spe:
            loss_sum += loss.detach()
    logits = _query_logits(model, images, data.queries, eval_batch)
    return ShadowResult(shadow=shadow, logits=logits, accuracy=subset_accuracy(logits, data, shadow),
                        train_loss=float(loss_sum / min(spe, total)))


@torch.no_grad()
def _query_logits(model, images, queries, eval_batch) -> np.ndarray:
    out = [torch.cat([model(xb) for xb in view.split(eval_batch)]) for view in query_views(images, queries)]
    return torch.stack(out, dim=1).float().cpu().numpy()


def train_loop(spec: Spec, data: TrainData, shadows: Sequence[int], **kw) -> list[ShadowResult]:
    """Train shadows one after the other."""
    return [train_one(spec, data, s, **kw) for s in shadows]

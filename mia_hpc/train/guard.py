"""Stop training at the first non-finite loss: a diverged shadow must never be stored as done.

The guard keeps, on the training device, the first step at which each shadow's loss was NaN or
infinite, and its value, and reads them on the host only once per epoch and at the end, on every
device: the step loop never syncs with the host (a read per step would stall a GPU's queue; on CPU
it is the same code, so the CPU tests count what a GPU would do), yet the step it names is still the
first bad one. A diverged shadow trains on in NaN to the end of its epoch at most. It raises :class:`NonFiniteLoss`, a
:class:`~mia_hpc.contract.errors.ShardFailed`: the worker writes nothing of the batch, the shadow's
``done`` stays false, and the shard's process exits non-zero (Slurm shows the task FAILED).
"""

from __future__ import annotations

from typing import Sequence

import torch

from mia_hpc.contract.errors import NonFiniteLoss


class DivergenceGuard:
    """First non-finite loss of each of K stacked shadows, checked every ``every`` steps."""

    def __init__(self, shadows: Sequence[int], total: int, device: torch.device, lr: float, every: int) -> None:
        self.shadows = list(shadows)
        self.total = total
        self.lr = lr
        self.every = max(1, every)
        self.first = torch.full((len(self.shadows),), -1, dtype=torch.long, device=device)
        self.value = torch.zeros(len(self.shadows), device=device)

    def update(self, step: int, per_shadow: torch.Tensor) -> None:
        """Record step ``step``'s per-shadow losses (K,); raise if a check finds a non-finite one."""
        loss = per_shadow.detach().float()
        new = ~torch.isfinite(loss) & (self.first < 0)
        self.first = torch.where(new, step, self.first)
        self.value = torch.where(new, loss, self.value)
        if (step + 1) % self.every == 0 or step + 1 == self.total:
            self.check()

    def check(self) -> None:
        """Raise :class:`NonFiniteLoss` naming the first diverged shadow, its step and its loss."""
        first = self.first.cpu().numpy()
        bad = [(int(st), i) for i, st in enumerate(first) if st >= 0]
        if not bad:
            return
        step, i = min(bad)
        raise NonFiniteLoss(
            f"shadow {self.shadows[i]} diverged: loss {float(self.value[i]):g} at step {step + 1} of {self.total} "
            f"(train.lr {self.lr:g}); not stored, not marked done; lower train.lr (or add warm-up) and re-run")

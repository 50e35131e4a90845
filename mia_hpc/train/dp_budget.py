"""DP-SGD bookkeeping: the sampling schedule a spec implies, and its privacy cost via Opacus.

The trainer's DP path (``mia_hpc.train.dp_sgd``) samples each shadow's minibatches by Poisson
sampling with rate q = batch_size / (pool/2) (the expected IN-set size, the same for every
shadow), for ``epochs * ceil(1/q)`` steps. Those two numbers and the noise multiplier are all an
accountant needs; epsilon is computed with Opacus's own accountants (RDP or PRV) so that it is
exactly the number Opacus would report for the same training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mia_hpc.contract.spec import Spec


@dataclass(frozen=True)
class DPSchedule:
    """Sampling rate and number of noisy steps of a DP-SGD run."""

    sample_rate: float
    steps: int


def dp_schedule(spec: Spec, n_pool: int) -> DPSchedule:
    """The Poisson sampling rate and step count of every shadow of ``spec``."""
    expected_in = max(1, n_pool // 2)
    q = min(1.0, spec.train.batch_size / expected_in)
    return DPSchedule(sample_rate=q, steps=spec.train.epochs * math.ceil(1 / q))


def epsilon(spec: Spec, n_pool: int) -> float:
    """Epsilon at ``spec.dp.delta`` of one shadow's training, from Opacus's accountant."""
    from opacus.accountants import PRVAccountant, RDPAccountant

    sched = dp_schedule(spec, n_pool)
    acc = RDPAccountant() if spec.dp.accountant == "rdp" else PRVAccountant()
    acc.history = [(spec.dp.noise_multiplier, sched.sample_rate, sched.steps)]
    return float(acc.get_epsilon(delta=spec.dp.delta))

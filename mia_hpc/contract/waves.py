"""Adaptive runs' waves: their sizes and the spec checks every adaptive launcher and replay shares.

The rule itself (why waves double, why changes count only from :data:`MIN_COUNTED` shadows) is
described in :mod:`mia_hpc.pipeline.adaptive`; this module is what the analysis side's replay
(``analysis/output/adaptive_figure.py``) needs of it, torch-free.
"""

from __future__ import annotations

from typing import Any, Callable

from mia_hpc.contract.spec import Spec, SpecError

#: Smallest wave whose values a change may be measured from. Below it, the balanced leave-pair-out
#: leaves fewer than 2 IN and 2 OUT references per (target, sample) (w/2 - 1 < 2), so LiRA falls
#: back to the pooled variance: a different estimator, whose change to the next wave says nothing
#: about convergence (measured on the demo: AUROC 0.948 -> 0.943 from 4 to 8 shadows, then 0.987).
MIN_COUNTED = 6


def wave_sizes(spec: Spec) -> list[int]:
    """Cumulative shadow counts after each wave: first_wave, doubling, capped at M."""
    sizes, w = [], spec.adaptive.first_wave
    while w < spec.shadows.count:
        sizes.append(w)
        w *= 2
    return sizes + [spec.shadows.count]


def check_adaptive(spec: Spec, parse_watch: Callable[[str], Any]) -> None:
    """Refuse specs whose keep masks are not balanced for every wave prefix, or whose watch keys are bad.

    ``parse_watch`` reads one watch key (``analysis.studies.watch.parse_watch``; the key grammar is the
    analysis side's) and raises ``ValueError`` on a bad one.
    """
    if spec.selection.kind != "none":
        raise SpecError("selection.kind: --adaptive runs single-stage specs; a staged spec's attack stage is not "
                        "adaptive (set selection.kind = \"none\", or run without --adaptive)")
    block = spec.shadows.keep_block or spec.shadows.count
    for w in wave_sizes(spec):
        if w % block:
            raise SpecError(f"shadows.keep_block: --adaptive needs keep masks balanced within blocks that divide "
                            f"every wave size ({wave_sizes(spec)}); set shadows.keep_block = "
                            f"{spec.adaptive.first_wave} (or a divisor of it), got {spec.shadows.keep_block}")
    if not spec.adaptive.watch:
        raise SpecError("adaptive.watch: is empty; name at least one quantity, e.g. 'lira-online/AUROC Under'")
    for i, w in enumerate(spec.adaptive.watch):
        try:
            key = parse_watch(w)
        except ValueError as err:
            raise SpecError(f"adaptive.watch[{i}]: {err}") from None
        if key.group == "samples" and not spec.adaptive.samples:
            raise SpecError(f"adaptive.samples: adaptive.watch[{i}] ({w!r}) watches the group 'samples'; list "
                            "their store sample indices in adaptive.samples")
    if spec.adaptive.samples:
        n = spec.data.size  # pool samples come first in every store; the test split follows
        bad = [s for s in spec.adaptive.samples if not 0 <= s < n]
        if bad:
            raise SpecError(f"adaptive.samples: indices must be pool (train-split) samples 0..{n - 1}, got {bad[:5]}")

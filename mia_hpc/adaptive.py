"""Adaptive shadow budget: train only as many shadows as the question needs.

``run_adaptive`` trains shadows in waves whose totals double (``first_wave``, 2x, 4x, ... up to the
spec's M), analyses the store after each wave using only the shadows trained so far, and stops
as soon as every watched cell of the attack table (``adaptive.watch``, e.g. LiRA-online's AUROC on
the under-represented group) moved by at most ``adaptive.tolerance`` over the last doubling.

Why "the last doubling": the attack's error from estimating its reference distributions with m
shadows shrinks roughly like 1/m (the estimation variance of means and variances). If the change
from m/2 to m shadows is d, the remaining change from m to infinity under a 1/m law is about
d as well (d/2 + d/4 + ...), so a last-doubling change within the tolerance bounds how far the
metric still is from what many more shadows would give. The rule is a heuristic with that
justification, not a test with a guaranteed error rate; the report lists every wave's values so
the trend can be checked, and the paper's point (highly memorized samples converge within a few
shadows, random ones need many) shows up as early vs late stops.

Keep masks must be balanced for every wave prefix (each sample IN for exactly half of the shadows
trained so far): the spec's ``shadows.keep_block`` has to divide ``adaptive.first_wave``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mia_hpc.spec import Spec, SpecError, load_spec


@dataclass
class Wave:
    """One wave's outcome."""

    shadows: int
    values: dict[str, float]
    changes: dict[str, float] = field(default_factory=dict)


@dataclass
class AdaptiveResult:
    """What an adaptive run did."""

    store: Path
    waves: list[Wave]
    converged: bool
    total: int  # the spec's M
    full: dict[str, float] | None = None  # the watched values with all M shadows (compare_full)

    @property
    def used(self) -> int:
        return self.waves[-1].shadows if self.waves else 0

    @property
    def saved_fraction(self) -> float:
        """Share of the full run's training compute not spent (training cost is linear in shadows)."""
        return 1 - self.used / self.total

    def lines(self) -> list[str]:
        out = [f"adaptive: {'converged' if self.converged else 'did not converge'} with {self.used} of "
               f"{self.total} shadows ({100 * self.saved_fraction:.0f}% of the training compute saved)"]
        for w in self.waves:
            cells = "  ".join(f"{k} = {v:.4f}" + (f" ({w.changes[k]:+.4f})" if k in w.changes else "")
                              for k, v in w.values.items())
            out.append(f"  {w.shadows:>6} shadows: {cells}")
        if self.full is not None and self.waves:
            diffs = "  ".join(f"{k} = {v:.4f} (stopped run {self.waves[-1].values[k] - v:+.4f})"
                              for k, v in self.full.items())
            out.append(f"  full run, {self.total} shadows: {diffs}")
        return out


def wave_sizes(spec: Spec) -> list[int]:
    """Cumulative shadow counts after each wave: first_wave, doubling, capped at M."""
    sizes, w = [], spec.adaptive.first_wave
    while w < spec.shadows.count:
        sizes.append(w)
        w *= 2
    return sizes + [spec.shadows.count]


def check_adaptive(spec: Spec) -> None:
    """Refuse specs whose keep masks are not balanced for every wave prefix."""
    block = spec.shadows.keep_block or spec.shadows.count
    for w in wave_sizes(spec):
        if w % block:
            raise SpecError(f"shadows.keep_block: --adaptive needs keep masks balanced within blocks that divide "
                            f"every wave size ({wave_sizes(spec)}); set shadows.keep_block = "
                            f"{spec.adaptive.first_wave} (or a divisor of it), got {spec.shadows.keep_block}")


def _cell(attacks, key: str) -> float:
    attack, column = key.split("/")
    if attack not in attacks.index or column not in attacks.columns:
        raise SpecError(f"adaptive.watch: {key!r} is not a cell of the attack table; attacks: "
                        f"{', '.join(attacks.index)}; columns: {', '.join(attacks.columns)}")
    return float(attacks.loc[attack, column])


def run_adaptive(spec: Spec | str | Path, out: str | Path, *, executor: str = "local", parallel: int = 0,
                 device: str = "auto", progress: bool = True, compare_full: bool = False) -> AdaptiveResult:
    """Train in doubling waves until the watched metrics converge; write ``OUT/adaptive.json``.

    With ``compare_full`` the remaining shadows are trained after the stop (which it does not
    change) and the full run's values are reported beside the stopped run's, to validate the rule.
    """
    from analysis.report import analyze
    from mia_hpc.experiment import prepare_store
    from mia_hpc.launch.local import run_shards
    from mia_hpc.launch.shards import shard_shadows
    from mia_hpc.store import done_mask, open_store

    def train_prefix(size: int) -> None:
        done = done_mask(open_store(store))
        shards = [i for i in range(spec.shadows.shards)
                  if any(s < size and not done[s] for s in shard_shadows(spec.shadows.count, spec.shadows.shards, i))]
        run_shards(store, spec.shadows.shards, shards, executor=executor, log_dir=out / "logs", parallel=parallel,
                   device=device, progress=progress, limit=size)

    spec = spec if isinstance(spec, Spec) else load_spec(spec)
    check_adaptive(spec)
    out = Path(out)
    store = out / "store.zarr"
    prepare_store(spec, store)
    waves: list[Wave] = []
    converged = False
    for size in wave_sizes(spec):
        train_prefix(size)
        res = analyze(store, out / "waves" / f"{size:06d}", progress=progress, shadow_limit=size, extras=False)
        values = {k: _cell(res["attacks"], k) for k in spec.adaptive.watch}
        wave = Wave(size, values)
        if waves:
            wave.changes = {k: values[k] - waves[-1].values[k] for k in values}
        waves.append(wave)
        if wave.changes and all(abs(c) <= spec.adaptive.tolerance for c in wave.changes.values()):
            converged = True
            break
    result = AdaptiveResult(store, waves, converged, spec.shadows.count)
    if compare_full:
        m = spec.shadows.count
        if result.used < m:
            train_prefix(m)
            res = analyze(store, out / "waves" / f"{m:06d}", progress=progress, shadow_limit=m, extras=False)
        result.full = {k: _cell(res["attacks"], k) for k in spec.adaptive.watch}
    summary: dict[str, Any] = {"converged": converged, "shadows_used": result.used, "shadows_total": result.total,
                               "compute_saved_fraction": result.saved_fraction,
                               "tolerance": spec.adaptive.tolerance, "waves": [asdict(w) for w in waves],
                               "full_run": result.full}
    tmp = out / ".adaptive.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    tmp.replace(out / "adaptive.json")
    return result

"""The public Python API; the CLI (``mia_hpc.cli``) is a thin wrapper over these functions.

:func:`run` (this machine) and :func:`submit` (Slurm) are the one place that decides how a spec
runs: plain, staged (``[selection]``, :mod:`mia_hpc.pipeline.stages`) or adaptive (``adaptive=True``,
:mod:`mia_hpc.pipeline.adaptive`). The launchers below them (:mod:`mia_hpc.launch`) only launch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mia_hpc.pipeline.experiment import prepare_store
from mia_hpc.launch.local import run_shards
from mia_hpc.pipeline.stages import run_staged, submit_staged
from mia_hpc.contract.shards import ShardState, pending_shards, shard_states
from mia_hpc.contract.spec import Spec, load_spec
from mia_hpc.contract.store import done_mask, open_store, spec_of


@dataclass(frozen=True)
class Status:
    """Progress of a store."""

    store: Path
    done: int
    total: int
    shards: list[ShardState]
    rate_per_hour: float | None = None  # shadows finished per hour, from the finish times
    eta_hours: float | None = None
    running: dict[int, str] = dataclasses.field(default_factory=dict)  # shard -> owner of its live lease

    def lines(self) -> list[str]:
        out = [f"{self.store}: {self.done}/{self.total} shadows done"]
        if self.rate_per_hour and self.done < self.total:
            out[0] += f"; {self.rate_per_hour:.1f} shadows/h, ETA {_hours(self.eta_hours)} at this rate"
        from mia_hpc.launch.slurm import FAILED_STATES

        for s in self.shards:
            mark = "done" if s.complete else ("partial" if s.done else "pending")
            if not s.complete and s.shard in self.running:
                mark = f"running ({self.running[s.shard]})"
            if not s.complete and s.job_state in FAILED_STATES:
                mark = "FAILED: re-run ('mia-hpc submit' again) to finish it"
            job = f"  [slurm {s.job} {s.job_state or 'unknown'}]" if s.job else ""
            out.append(f"  shard {s.shard:>4}: shadows {s.shadows.start}-{s.shadows.stop - 1}  "
                       f"{s.done}/{len(s.shadows)}  {mark}{job}")
        return out

    @property
    def failed(self) -> list[int]:
        """Shards whose latest Slurm task ended in failure and that are not complete."""
        from mia_hpc.launch.slurm import FAILED_STATES

        return [s.shard for s in self.shards if not s.complete and s.job_state in FAILED_STATES]


def _hours(h: float | None) -> str:
    if h is None:
        return "unknown"
    return f"{h * 60:.0f} min" if h < 1 else f"{h:.1f} h"


#: finish times closer than this to the window's first one are one burst (a batch, or shards in step)
BURST_S = 5.0
#: the least span of finish times a rate is given for: a burst alone says nothing about the pace
MIN_SPAN_S = 60.0
#: the rate is the recent one: finish times within this long of the last
WINDOW_S = 3600.0


def finish_rate(finished_at: np.ndarray) -> float | None:
    """Shadows per hour over the last :data:`WINDOW_S` of recorded finish times.

    Shadows are written a batch at a time and shards finish in step, so finish times come in
    bursts: the first burst in the window only marks when the window starts (its training time
    lies before it), and a window shorter than :data:`MIN_SPAN_S` gives no rate (None), where
    dividing a burst by the milliseconds between its writes gave tens of thousands per hour.
    """
    t = np.sort(finished_at[np.isfinite(finished_at)])
    if len(t) < 2:
        return None
    t = t[t >= t[-1] - WINDOW_S]
    span = t[-1] - t[0]
    if span < MIN_SPAN_S:
        return None
    first_burst = int(np.searchsorted(t, t[0] + BURST_S, side="right"))
    return (len(t) - first_burst) / span * 3600


def live_leases(store: str | Path, n_shards: int) -> dict[int, str]:
    """Shards whose worker holds a live lease (:mod:`mia_hpc.launch.leases`): shard -> its owner.

    Live as the leases judge it: the owner is a running process on this machine (same host and
    boot id), or, on another machine, its heartbeat is younger than the lease's stale time.
    """
    import socket
    import time

    from mia_hpc.launch.leases import boot_id, lease_dir, pid_alive, read_lease, stale_s

    out: dict[int, str] = {}
    for i in range(n_shards):
        try:
            held = read_lease(lease_dir(store) / f"shard-{i}-of-{n_shards}.json")
        except (OSError, ValueError, KeyError, TypeError):
            held = None  # unreadable: not running as far as can be told
        if held is None:
            continue
        rec, beat = held
        here = rec.host == socket.gethostname() and rec.boot == boot_id()
        if pid_alive(rec.pid, rec.pid_start) if here else time.time() - beat <= stale_s():
            out[i] = rec.owner()
    return out


def status(store: str | Path) -> Status:
    """Shadows done per shard, the finishing rate and the time left at that rate."""
    root = open_store(store)
    spec = spec_of(root)
    done = done_mask(root)
    rate = finish_rate(np.asarray(root["finished_at"][...])[done]) if "finished_at" in root else None
    eta = (len(done) - int(done.sum())) / rate if rate else None
    shards = shard_states(done, spec.shadows.shards)
    out = Path(store).parent
    if (out / "slurm" / "jobs.json").is_file():
        from mia_hpc.launch.slurm import shard_job_states

        jobs = shard_job_states(out)
        shards = [dataclasses.replace(s, job=jobs.get(s.shard, ("", ""))[0], job_state=jobs.get(s.shard, ("", ""))[1])
                  for s in shards]
    return Status(Path(store), int(done.sum()), len(done), shards, rate, eta,
                  live_leases(store, spec.shadows.shards))


def run(spec: str | Path | Spec, out: str | Path, *, executor: str = "local", analyze: bool = True,
        device: str = "auto", parallel: int = 0, progress: bool = True, extras: bool = True,
        adaptive: bool = False, compare_full: bool = False) -> Any:
    """Run an experiment end to end: store, shadows (resuming), then the analysis (``extras=False``:
    without the paper extras, as ``analyze --quick``).

    Returns ``{"store": Path, "trained": [shadows trained by this call], "analysis": dict | None}``
    (a staged spec's adds ``oracle``, ``oracle_trained`` and ``selection``); with ``adaptive`` the
    :class:`~mia_hpc.pipeline.adaptive.AdaptiveResult` of :func:`~mia_hpc.pipeline.adaptive.run_adaptive`.
    """
    spec = spec if isinstance(spec, Spec) else load_spec(spec)
    if adaptive:
        from mia_hpc.pipeline.adaptive import run_adaptive  # lazy: it imports the Slurm launcher (submitit)

        return run_adaptive(spec, out, executor=executor, parallel=parallel, device=device, progress=progress,
                            compare_full=compare_full, analyze=analyze, extras=extras)
    if spec.selection.kind != "none":  # multi-stage spec: oracle, selection, attack, analysis (mia_hpc.pipeline.stages)
        return run_staged(spec, out, executor=executor, analyze=analyze, device=device, parallel=parallel,
                          progress=progress, extras=extras)
    out = Path(out)
    store = out / "store.zarr"
    prepare_store(spec, store)
    trained = run_shards(store, spec.shadows.shards, pending_shards(store), executor=executor, log_dir=out / "logs",
               parallel=parallel, device=device, progress=progress)
    result: dict[str, Any] = {"store": store, "trained": sorted(trained), "analysis": None}
    if analyze:
        from analysis import analyze as _analyze

        result["analysis"] = _analyze(store, out / "analysis", progress=progress, extras=extras)
    return result


def submit(spec: str | Path | Spec, out: str | Path, profile: Any, *, analyze: bool = True,
           folder: str | Path | None = None, adaptive: bool = False, extras: bool = True) -> Any:
    """Submit an experiment to Slurm and return as soon as ``sbatch`` accepted the jobs.

    A plain spec: :func:`mia_hpc.launch.slurm.submit` (its unfinished shards as one array job, then
    the analysis); a staged spec: :func:`mia_hpc.pipeline.stages.submit_staged` (every stage chained with
    afterok); ``adaptive``: :func:`mia_hpc.pipeline.adaptive.submit_adaptive` (the first or next wave and its
    step job; ``extras`` as in :func:`run`). Each result has ``lines()`` for the terminal.
    """
    from mia_hpc.pipeline.adaptive import submit_adaptive  # lazy, as these import submitit
    from mia_hpc.launch import slurm

    spec = spec if isinstance(spec, Spec) else load_spec(spec)
    if adaptive:
        return submit_adaptive(spec, out, profile, analyze=analyze, extras=extras, folder=folder)
    if spec.selection.kind != "none":
        return submit_staged(spec, out, profile, analyze=analyze, folder=folder)
    return slurm.submit(spec, out, profile, analyze=analyze, folder=folder)

"""Adaptive shadow budget: train only as many shadows as the question needs.

An adaptive run trains shadows in waves whose totals double (``first_wave``, 2x, 4x, ... up to the
spec's M). After every wave it computes the *watched quantities* (``adaptive.watch``) from the
shadows trained so far, and stops as soon as every one of them moved by at most
``adaptive.tolerance`` over the last doubling. A watched quantity is an attack's AUROC or TPR at
some FPR on a chosen group of samples -- the whole train split (``All``), the under-represented
group (``Under``, the paper's "random" challenge set), ``singletons``, the ``subpopulation``, an
explicit ``samples`` list -- or the mean memorization estimate of such a group
(:mod:`analysis.studies.watch`). Each wave costs one pass over the prefix's logits, the watched attacks
and a bootstrap of the watched values (no full report); each value carries its bootstrap interval
over targets and samples.

Why "the last doubling": the attack's error from estimating its reference distributions with m
shadows shrinks roughly like 1/m (the estimation variance of the means and variances its Gaussian
fits use; for memorization, the binomial variance of the IN/OUT correctness rates). If the change
from m/2 to m shadows is d, the remaining change from m to infinitely many shadows under a 1/m
law is about d again (d/2 + d/4 + ...), so a last-doubling change within the tolerance bounds how
far the value still is from what many more shadows would give. The rule is a heuristic with that
justification, not a test with a guaranteed error rate. The bootstrap interval answers a different
question -- how well the value is known from the targets and samples it was computed on -- and does
not shrink to zero with more shadows (the samples' own spread stays), so it cannot be the stop
criterion; it is reported beside every value, and a stop with a tolerance below the interval's
half-width is flagged (the stop then says "more shadows no longer move it", not "it is known to
within the tolerance"). Highly memorized samples converge within a few shadows (Corollary 1: the
shadows needed grow like 1/mem), random ones need many: that shows up as early vs late stops.

Changes are counted only from waves of at least :data:`MIN_COUNTED` (6) shadows: smaller prefixes
leave fewer than 2 IN and 2 OUT references per (target, sample) after the balanced leave-pair-out,
LiRA then uses the pooled variance (another estimator), and the 1/m argument does not apply to the
step from it. With ``first_wave = 4`` the earliest possible stop is therefore at 16 shadows.

Keep masks must be balanced for every wave prefix (each sample IN for exactly half of the shadows
trained so far): the spec's ``shadows.keep_block`` has to divide ``adaptive.first_wave``. Because a
shadow depends only on (spec, index), a wave prefix of a full run *is* what an adaptive run trains,
so :func:`replay_adaptive` replays the rule on a finished store (``mia-hpc adaptive-figure``).

Launchers -- the same waves, values and stop, whoever runs them:

* :func:`run_adaptive` (``mia-hpc run --adaptive``): on this machine, wave after wave.
* :func:`submit_adaptive` (``mia-hpc submit --adaptive``): on Slurm. Each wave is one array job
  (its unfinished shards, each task training its shard's shadows below the wave's total); a small
  *step* job runs ``afterok`` of it (:func:`adaptive_step`): it evaluates the wave, and either
  writes the final report and stops, or submits the next wave's array and the next step job. The
  user can log out after the submit; ``--wait`` keeps the launcher attached until the run ends.
  The step job runs ``sbatch`` itself, so the compute nodes must be allowed to submit jobs (the
  common case; otherwise use ``mia-hpc run --adaptive`` on a login node with ``--executor``).

Outputs under OUT: ``adaptive.json`` (settings, every wave's values, intervals, changes and set
sizes, the stop, the compute saved; identical for both launchers), ``waves/NNNNNN.json`` (one per
wave), ``analysis/`` (the report of the shadows used), and on Slurm ``slurm/adaptive.json`` (job ids).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from analysis.studies.watch import parse_watch
from mia_hpc.contract.jsonfile import read_json_dict, write_json_atomic
from mia_hpc.contract.spec import Spec, SpecError, load_spec, spec_from_dict
from mia_hpc.contract.waves import MIN_COUNTED, check_adaptive, wave_sizes
from mia_hpc.launch.slurm import ShardTask

STATE = "adaptive.json"


@dataclass
class Wave:
    """One wave's outcome: the watched values with the shadows trained so far."""

    shadows: int
    values: dict[str, float | None]
    changes: dict[str, float | None] = field(default_factory=dict)  # value - previous wave's value
    intervals: dict[str, list[float | None]] = field(default_factory=dict)  # bootstrap [lo, hi]
    set_sizes: dict[str, int] = field(default_factory=dict)  # samples per watched group

    def within(self, tolerance: float) -> dict[str, bool]:
        """Per key: did it move by at most ``tolerance`` since the previous wave (False without one)."""
        return {k: c is not None and abs(c) <= tolerance for k, c in
                ((k, self.changes.get(k)) for k in self.values)}


@dataclass
class AdaptiveResult:
    """What an adaptive run did."""

    store: Path
    waves: list[Wave]
    converged: bool
    total: int  # the spec's M
    full: dict[str, float | None] | None = None  # the watched values with all M shadows (compare_full)
    tolerance: float = 0.02
    finished: bool = True

    @property
    def used(self) -> int:
        return self.waves[-1].shadows if self.waves else 0

    @property
    def saved_fraction(self) -> float:
        """Share of the full run's training compute not spent (training cost is linear in shadows)."""
        return 1 - self.used / self.total

    def first_within(self) -> dict[str, int | None]:
        """Per key: the first wave at which it alone moved by at most the tolerance (its own stop point)."""
        keys = list(self.waves[0].values) if self.waves else []
        return {k: next((w.shadows for w in self.waves if w.within(self.tolerance)[k]), None) for k in keys}

    def lines(self) -> list[str]:
        state = "converged" if self.converged else "did not converge"
        out = [f"adaptive: {state} with {self.used} of {self.total} shadows "
               f"({100 * self.saved_fraction:.0f}% of the training compute saved; tolerance {self.tolerance:g})"]
        for w in self.waves:
            cells = []
            for k, v in w.values.items():
                lo, hi = (w.intervals.get(k) or [None, None])
                c = w.changes.get(k)
                cells.append(f"{k} = {_f(v)} [{_f(lo)}, {_f(hi)}]" + (f" ({_diff(c, 0.0)})" if c is not None else ""))
            out.append(f"  {w.shadows:>6} shadows: " + "  ".join(cells))
        if self.waves and self.converged:
            last = self.waves[-1]
            wide = [k for k, (lo, hi) in last.intervals.items()
                    if lo is not None and hi is not None and (hi - lo) / 2 > self.tolerance]
            if wide:
                out.append(f"  note: the bootstrap interval of {', '.join(wide)} is wider than +-{self.tolerance:g}: "
                           "more shadows no longer move it, but these targets and samples pin it down only to "
                           "the interval")
        if self.full is not None and self.waves:
            diffs = "  ".join(f"{k} = {_f(v)} (stopped run {_diff(self.waves[-1].values[k], v)})"
                              for k, v in self.full.items())
            out.append(f"  full run, {self.total} shadows: {diffs}")
        return out


def _f(v: float | None) -> str:
    from analysis.store_io.numfmt import fmt  # the report's one number format

    return fmt(v)


def _diff(a: float | None, b: float | None) -> str:
    return "N/A" if a is None or b is None else ("+" if a - b >= 0 else "") + _f(a - b)


# --- settings -------------------------------------------------------------------------------------

def _settings(spec: Spec) -> dict[str, Any]:
    a = spec.adaptive
    return {"spec_hash": spec.hash(), "first_wave": a.first_wave, "watch": list(a.watch), "tolerance": a.tolerance,
            "samples": list(a.samples), "wave_sizes": wave_sizes(spec)}


# --- one wave (shared by every launcher) ----------------------------------------------------------

def evaluate_wave(spec: Spec, store: str | Path, size: int, previous: Wave | None = None) -> Wave:
    """The watched values of the store's first ``size`` shadows (all done), and their changes."""
    from analysis.studies.watch import watch_values

    res = watch_values(store, spec.adaptive.watch, shadow_limit=size, samples=spec.adaptive.samples)
    if res.n_shadows != size:
        raise SpecError(f"{store}: wave of {size} shadows has only {res.n_shadows} done; train them first")
    wave = Wave(size, {k: v.as_dict()["value"] for k, v in res.values.items()},
                intervals={k: [v.as_dict()["lo"], v.as_dict()["hi"]] for k, v in res.values.items()},
                set_sizes=res.set_sizes)
    if previous is not None and previous.shadows >= MIN_COUNTED:
        wave.changes = {k: (None if v is None or previous.values.get(k) is None else v - previous.values[k])
                        for k, v in wave.values.items()}
    return wave


def read_state(out: str | Path) -> dict[str, Any] | None:
    """``OUT/adaptive.json``, or None when there is none (or it is unreadable)."""
    try:
        d = json.loads((Path(out) / STATE).read_text())
    except (FileNotFoundError, ValueError):
        return None
    return d if isinstance(d, dict) else None


def _waves_of(state: dict[str, Any]) -> list[Wave]:
    return [Wave(**w) for w in state.get("waves", [])]


def _state(spec: Spec, waves: list[Wave], *, status: str, full: dict | None = None) -> dict[str, Any]:
    """The content of ``adaptive.json`` (no paths or times: the same for every launcher)."""
    res = AdaptiveResult(Path("."), waves, status == "converged", spec.shadows.count, full, spec.adaptive.tolerance)
    return {**_settings(spec), "status": status, "finished": status in ("converged", "not converged"),
            "converged": status == "converged", "shadows_used": res.used, "shadows_total": res.total,
            "compute_saved_fraction": res.saved_fraction, "first_within_tolerance": res.first_within(),
            "waves": [asdict(w) for w in waves], "full_run": full}


def advance(spec: Spec, out: str | Path, size: int) -> tuple[list[Wave], bool]:
    """Evaluate the wave of ``size`` shadows, record it in ``adaptive.json``; return (waves, stop).

    Waves recorded for other settings (watch, tolerance, spec) are dropped; a wave recorded for
    ``size`` already is replaced (a requeued step job evaluates the same numbers again).
    """
    out = Path(out)
    state = read_state(out)
    settings = _settings(spec)
    waves = [w for w in _waves_of(state) if w.shadows < size] \
        if state and all(state.get(k) == v for k, v in settings.items()) else []
    wave = evaluate_wave(spec, out / "store.zarr", size, waves[-1] if waves else None)
    waves.append(wave)
    stop = bool(wave.changes) and all(wave.within(spec.adaptive.tolerance).values())
    write_json_atomic(out / "waves" / f"{size:06d}.json", asdict(wave))
    last = stop or size >= spec.shadows.count
    write_json_atomic(out / STATE, _state(spec, waves, status="running" if not last else "reporting"))
    return waves, stop


def finish(spec: Spec, out: str | Path, waves: list[Wave], stop: bool, *, analyze: bool = True,
           extras: bool = True, progress: bool = False, full: dict | None = None) -> AdaptiveResult:
    """Write the report of the shadows used (``OUT/analysis``) and mark ``adaptive.json`` finished."""
    out = Path(out)
    used = waves[-1].shadows
    if analyze:
        from analysis import analyze as _analyze

        _analyze(out / "store.zarr", out / "analysis", progress=progress, shadow_limit=used, extras=extras)
    status = "converged" if stop else "not converged"
    write_json_atomic(out / STATE, _state(spec, waves, status=status, full=full))
    return AdaptiveResult(out / "store.zarr", waves, stop, spec.shadows.count, full, spec.adaptive.tolerance)


def result_of(out: str | Path) -> AdaptiveResult:
    """The :class:`AdaptiveResult` recorded in ``OUT/adaptive.json``."""
    state = read_state(out)
    if state is None:
        raise SpecError(f"{Path(out) / STATE}: no adaptive run recorded here")
    return AdaptiveResult(Path(out) / "store.zarr", _waves_of(state), bool(state.get("converged")),
                          int(state["shadows_total"]), state.get("full_run"), float(state["tolerance"]),
                          bool(state.get("finished")))


# --- local ----------------------------------------------------------------------------------------

def run_adaptive(spec: Spec | str | Path, out: str | Path, *, executor: str = "local", parallel: int = 0,
                 device: str = "auto", progress: bool = True, compare_full: bool = False, analyze: bool = True,
                 extras: bool = True) -> AdaptiveResult:
    """Train in doubling waves until the watched quantities converge; write ``OUT/adaptive.json``.

    ``analyze``: write the report of the shadows used to ``OUT/analysis`` (``extras``: with the
    paper's challenge sets, theory and sweep). With ``compare_full`` the remaining shadows are
    trained after the stop (which it does not change) and the full run's watched values are
    reported beside the stopped run's, to validate the rule.
    """
    from mia_hpc.pipeline.experiment import prepare_store
    from mia_hpc.launch.local import run_shards
    from mia_hpc.contract.shards import shard_shadows
    from mia_hpc.contract.store import done_mask, open_store

    spec = spec if isinstance(spec, Spec) else load_spec(spec)
    check_adaptive(spec, parse_watch)
    out = Path(out)
    store = out / "store.zarr"
    prepare_store(spec, store)

    def train_prefix(size: int) -> None:
        done = done_mask(open_store(store))
        shards = [i for i in range(spec.shadows.shards)
                  if any(s < size and not done[s] for s in shard_shadows(spec.shadows.count, spec.shadows.shards, i))]
        run_shards(store, spec.shadows.shards, shards, executor=executor, log_dir=out / "logs", parallel=parallel,
                   device=device, progress=progress, limit=size)

    waves: list[Wave] = []
    stop = False
    (out / STATE).unlink(missing_ok=True)  # a local run re-evaluates every wave (cheap); training resumes
    for size in wave_sizes(spec):
        train_prefix(size)
        waves, stop = advance(spec, out, size)
        if stop:
            break
    full = None
    if compare_full:
        m = spec.shadows.count
        if waves[-1].shadows < m:
            train_prefix(m)
            full = evaluate_wave(spec, store, m).values
        else:
            full = dict(waves[-1].values)
    return finish(spec, out, waves, stop, analyze=analyze, extras=extras, progress=progress, full=full)


def replay_adaptive(store: str | Path, spec: Spec | None = None, *, sizes: list[int] | None = None
                    ) -> AdaptiveResult:
    """Apply the stop rule to the wave prefixes of a finished store (no training, nothing written).

    Legitimate because shadow s depends only on (spec, s): the first w shadows of a full run are
    exactly what an adaptive run trains by its wave of w. ``spec`` defaults to the store's (its
    ``[adaptive]`` table: watch, tolerance, first_wave); its keep masks must be balanced per wave.
    ``sizes`` overrides the wave sizes (e.g. every block, for a finer curve; the stop is still
    decided between consecutive entries). Evaluates every size (does not stop early): the last,
    if it is the spec's M, gives :attr:`AdaptiveResult.full`; :attr:`AdaptiveResult.waves` ends at the stop.
    """
    from mia_hpc.contract.store import spec_of
    from mia_hpc.contract.store import done_mask, open_store

    root = open_store(store)
    spec = spec or spec_of(root)
    check_adaptive(spec, parse_watch)
    sizes = sizes or wave_sizes(spec)
    done = done_mask(root)
    if not done[:max(sizes)].all():
        raise SpecError(f"{store}: replay needs the first {max(sizes)} shadows done, has "
                        f"{int(done[:max(sizes)].sum())}; finish the run first")
    waves: list[Wave] = []
    for size in sizes:
        waves.append(evaluate_wave(spec, store, size, waves[-1] if waves else None))
    stop_at = next((i for i, w in enumerate(waves) if w.changes and all(w.within(spec.adaptive.tolerance).values())),
                   None)
    res = AdaptiveResult(Path(store), waves if stop_at is None else waves[:stop_at + 1], stop_at is not None,
                         spec.shadows.count, dict(waves[-1].values) if sizes[-1] == spec.shadows.count else None,
                         spec.adaptive.tolerance)
    return res


# --- Slurm ----------------------------------------------------------------------------------------

def _slurm_file(out: Path) -> Path:
    return out / "slurm" / "adaptive.json"


def _read_slurm(out: Path) -> dict[str, Any]:
    return read_json_dict(_slurm_file(out))


def _record_jobs(out: Path, spec: Spec, size: int, array: str | None, step: str, shards: dict[str, str]) -> None:
    from mia_hpc.launch import slurm as S

    rec = _read_slurm(out)
    if rec.get("spec_hash") != spec.hash():
        rec = {"spec_hash": spec.hash(), "waves": {}}
    rec.setdefault("waves", {})[str(size)] = {"array": array, "step": step, "shards": shards}
    write_json_atomic(_slurm_file(out), rec)
    if shards:  # where `mia-hpc status` looks for each shard's latest task
        jobs = S._read_jobs(out)
        jobs.setdefault("shards", {}).update(shards)
        jobs["spec_hash"] = spec.hash()
        S._write_jobs(out, jobs)


class WaveShardTask(ShardTask):
    """One array task of a wave: train the shard's shadows below the wave's total (``limit``).

    Checkpointable like :class:`mia_hpc.launch.slurm.ShardTask`: a requeued task re-runs the shard and
    skips the shadows already done.
    """

    def __init__(self, device: str = "auto", threads: int = 0, limit: int | None = None) -> None:
        super().__init__(device=device, threads=threads)
        self.limit = limit

    def __call__(self, store: str, shard: int, n_shards: int) -> list[int]:
        from mia_hpc.launch.worker import train_shard

        return train_shard(store, shard, n_shards, device=self.device, threads=self.threads, progress=False,
                           limit=self.limit)


def submit_wave(spec: Spec, out: str | Path, prof: Any, size: int, *, analyze: bool = True, extras: bool = True,
                folder: str | Path | None = None) -> tuple[str | None, str]:
    """Submit the training of the first ``size`` shadows (an array of the shards that have any left)
    and the step job that evaluates the wave ``afterok`` of it. Returns (array id or None, step id)."""
    import submitit

    from mia_hpc.launch import slurm as S
    from mia_hpc.contract.shards import shard_shadows
    from mia_hpc.contract.store import done_mask, open_store

    out = Path(out).absolute()
    store = out / "store.zarr"
    folder = Path(folder).absolute() if folder else out / "slurm" / "submitit"
    done = done_mask(open_store(store))
    n = spec.shadows.shards
    todo = [i for i in range(n) if any(s < size and not done[s] for s in shard_shadows(spec.shadows.count, n, i))]
    array_id, shards = None, {}
    try:
        if todo:
            ex = S.slurm_executor(prof, folder, job_name=S.job_name(spec, f"wave{size}"), gpus=True)
            ex.update_parameters(array_parallelism=prof.array_parallelism)
            jobs = ex.map_array(WaveShardTask("auto", prof.cpus_per_task, size), [str(store)] * len(todo), todo,
                                [n] * len(todo))
            array_id = str(jobs[0].job_id).split("_")[0]
            shards = {str(s): str(j.job_id) for s, j in zip(todo, jobs)}
        ex = S.slurm_executor(prof, folder, job_name=S.job_name(spec, f"step{size}"), dependency=array_id)
        step = ex.submit(adaptive_step, spec.to_dict(), str(out), prof, size, analyze, extras, str(folder))
    except submitit.core.utils.FailedJobError as err:
        done_part = f"the wave's array job {array_id} was submitted, but " if array_id else ""
        raise S.SlurmError(f"{done_part}sbatch refused the adaptive wave of {size} shadows: {S._one_line(err)}") \
            from None
    _record_jobs(out, spec, size, array_id, str(step.job_id), shards)
    return array_id, str(step.job_id)


def adaptive_step(spec_dict: dict[str, Any], out: str, prof: Any, size: int, analyze: bool = True,
                  extras: bool = True, folder: str | None = None) -> dict[str, Any]:
    """The Slurm step job after a wave: evaluate it, then stop (final report) or submit the next wave."""
    spec = spec_from_dict(spec_dict)
    waves, stop = advance(spec, out, size)
    sizes = wave_sizes(spec)
    if stop or size >= sizes[-1]:
        res = finish(spec, out, waves, stop, analyze=analyze, extras=extras)
        return {"finished": True, "converged": res.converged, "shadows_used": res.used}
    nxt = sizes[sizes.index(size) + 1]
    array, step = submit_wave(spec, out, prof, nxt, analyze=analyze, extras=extras, folder=folder)
    return {"finished": False, "next_wave": nxt, "array": array, "step": step}


@dataclass(frozen=True)
class AdaptiveSubmitResult:
    """What :func:`submit_adaptive` did."""

    store: Path
    out: Path
    wave: int | None  # the wave submitted (None: the run had finished already)
    array_job: str | None
    step_job: str | None
    evaluated: list[int] = field(default_factory=list)  # waves already evaluated earlier

    def lines(self) -> list[str]:
        if self.wave is None:
            return [f"store: {self.store}", f"adaptive: finished already ({self.out / STATE})"]
        out = [f"store: {self.store}"]
        if self.evaluated:
            out.append(f"adaptive: resuming after the waves {self.evaluated}")
        out.append(f"wave of {self.wave} shadows: " + (f"array job {self.array_job}" if self.array_job
                                                       else "nothing to train"))
        out.append(f"step job {self.step_job} (evaluates the wave, then stops or submits the next one)")
        return out


def _resume_size(spec: Spec, state: dict[str, Any] | None) -> tuple[int | None, list[int]]:
    """The wave to (re)submit given ``adaptive.json``; None if the run finished with these settings."""
    sizes = wave_sizes(spec)
    if not state or any(state.get(k) != v for k, v in _settings(spec).items()):
        return sizes[0], []
    if state.get("finished"):
        return None, [w["shadows"] for w in state.get("waves", [])]
    waves = _waves_of(state)
    have = [w.shadows for w in waves]
    if waves and (waves[-1].shadows >= sizes[-1] or (waves[-1].changes and
                                                       all(waves[-1].within(spec.adaptive.tolerance).values()))):
        return waves[-1].shadows, have[:-1]  # stopped but not reported: the step of the last wave again
    nxt = next(s for s in sizes if s not in have)
    return nxt, have


def submit_adaptive(spec_path: str | Path | Spec, out: str | Path, profile: Any, *, analyze: bool = True,
                    extras: bool = True, folder: str | Path | None = None) -> AdaptiveSubmitResult:
    """Submit an adaptive run to Slurm and return: the first (or next) wave and its step job.

    A re-submit resumes: waves already evaluated with the same settings are kept, trained shadows
    are never retrained; a run that finished submits nothing; while jobs of an earlier submit are
    queued or running, the submit is refused.
    """
    import shutil

    from mia_hpc.pipeline.experiment import prepare_store
    from mia_hpc.launch import slurm as S
    from mia_hpc.launch.profile import Profile, load_profile

    spec = spec_path if isinstance(spec_path, Spec) else load_spec(spec_path)
    prof = profile if isinstance(profile, Profile) else load_profile(profile)
    out = Path(out).absolute()
    S.check_path(out, "--out")
    check_adaptive(spec, parse_watch)
    if shutil.which("sbatch") is None:
        raise S.SlurmError("sbatch not found: submit needs the Slurm client commands "
                           "(for a local test cluster: sudo bash .ci/slurm.sh)")
    alive = S.alive_jobs()
    rec = _read_slurm(out)
    flying = sorted({j for w in rec.get("waves", {}).values() for j in (w.get("array"), w.get("step")) if j
                     and any(t.split("_")[0] == j and s in S._ALIVE for t, s in alive.items())})
    if flying:
        raise S.SlurmError(f"an earlier adaptive submit of this run is still queued/running (jobs {', '.join(flying)});"
                           " wait for it (mia-hpc adaptive-status OUT) or scancel it, then submit again")
    store = out / "store.zarr"
    prepare_store(spec, store)
    size, have = _resume_size(spec, read_state(out))
    if size is None:
        return AdaptiveSubmitResult(store, out, None, None, None, have)
    array, step = submit_wave(spec, out, prof, size, analyze=analyze, extras=extras, folder=folder)
    return AdaptiveSubmitResult(store, out, size, array, step, have)


def wait_adaptive(out: str | Path, *, timeout: float | None = None, poll: float = 2.0,
                  on_wave: Any = None) -> AdaptiveResult:
    """Wait until the adaptive run under ``out`` finished (the launcher stays attached).

    ``on_wave(wave)`` is called for each newly evaluated wave. Raises ``SlurmError`` when no job of
    the run is queued or running any more but the run did not finish (a failed wave or step: its
    log is named), or after ``timeout`` seconds.
    """
    from mia_hpc.launch import slurm as S

    out = Path(out).absolute()
    seen = 0
    deadline = None if timeout is None else time.monotonic() + timeout
    idle = 0
    while True:
        rec = _read_slurm(out)
        ids = {j for w in rec.get("waves", {}).values() for j in (w.get("array"), w.get("step")) if j}
        alive = S.alive_jobs()
        running = any(t.split("_")[0] in ids and s in S._ALIVE for t, s in alive.items())
        state = read_state(out) or {}
        waves = _waves_of(state)
        for w in waves[seen:]:
            if on_wave is not None:
                on_wave(w)
        seen = max(seen, len(waves))
        if state.get("finished"):
            return result_of(out)
        # a step job submits the next wave before it ends: "nothing alive" twice in a row means stopped
        idle = 0 if running else idle + 1
        if idle >= 3:
            last = max(rec.get("waves", {"0": {}}).items(), key=lambda kv: int(kv[0]))[1] if rec.get("waves") else {}
            log = (out / "slurm" / "submitit" / str(last.get("step")) / f"{last.get('step')}_0_log.err"
                   if last.get("step") else out / "slurm")
            raise S.SlurmError(f"the adaptive run stopped without finishing (last step job {last.get('step')}, "
                               f"wave array {last.get('array')}); see {log}; fix it and submit again to resume")
        if deadline is not None and time.monotonic() > deadline:
            raise S.SlurmError(f"adaptive run under {out} not finished after {timeout:g} s; jobs keep running")
        time.sleep(poll)

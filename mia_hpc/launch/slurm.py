"""Submit an experiment to Slurm through submitit, and return at once.

``submit(spec, out, profile)`` creates (or re-opens) ``OUT/store.zarr``, then submits

* the unfinished shards as **one** array job (one task per shard, ``%array_parallelism`` at once),
  each task running :func:`mia_hpc.launch.worker.train_shard` through a submitit
  ``Checkpointable`` (:class:`ShardTask`): at Slurm's timeout/preemption signal the task is
  requeued and simply re-runs the shard, which skips the shadows already ``done`` in the store;
* the analysis (``analysis.output.report.analyze``) as a second job with ``--dependency=afterok:<array>``,
  so the user can log out.

A re-submit of the same spec submits only the shards that are neither complete in the store nor
still queued/running from an earlier submission (``OUT/slurm/jobs.json`` remembers the job ids;
``squeue`` says which are still alive), and no analysis if ``OUT/analysis/analysis.json`` exists
and nothing was left to train. Executor files (pickled calls, logs) live in ``OUT/slurm/submitit``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mia_hpc.contract.jsonfile import read_json_dict, write_json_atomic
from mia_hpc.contract.shards import pending_shards
from mia_hpc.contract.spec import Spec, SpecError, load_spec
from mia_hpc.pipeline.experiment import prepare_store
from mia_hpc.launch.profile import Profile, load_profile

try:  # submitit is a core dependency; the fallback only keeps this module importable without it
    from submitit.helpers import Checkpointable as _Checkpointable
except ImportError:  # pragma: no cover
    _Checkpointable = object  # type: ignore[assignment,misc]

# squeue states of a job that may still run (or is running) a shard
_ALIVE = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
          "RESIZING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT", "RESV_DEL_HOLD"}


class SlurmError(RuntimeError):
    """sbatch/squeue failed, or Slurm is not available on this machine."""


class ShardTask(_Checkpointable):
    """One array task: train one shard. Checkpoint = run the same shard again.

    Finished shadows are already durable in the store (``done`` is written last, after an fsync),
    so a requeued task loses at most the shadow batch that was in flight.
    """

    def __init__(self, device: str = "auto", threads: int = 0) -> None:
        self.device = device
        self.threads = threads

    def __call__(self, store: str, shard: int, n_shards: int) -> list[int]:
        from mia_hpc.launch.worker import train_shard

        return train_shard(store, shard, n_shards, device=self.device, threads=self.threads, progress=False)


def run_analysis(store: str, out: str) -> str:
    """The analysis job: analyse the finished store into ``out``; returns the summary's path."""
    from analysis import analyze  # lazy: the analysis side is imported only in this job

    analyze(store, out, progress=False)
    return str(Path(out) / "analysis.json")


@dataclass(frozen=True)
class SubmitResult:
    """What :func:`submit` did."""

    store: Path
    out: Path
    shards: list[int]  # shards submitted by this call
    shadows_job: str | None  # array job id (None: nothing to train)
    analysis_job: str | None  # dependent analysis job id (None: not submitted)
    skipped_in_flight: list[int] = field(default_factory=list)  # shards still queued/running earlier
    analysis_in_flight: str | None = None  # analysis job of an earlier submit, still queued/running
    jobs: list[Any] = field(default_factory=list, compare=False, repr=False)  # submitit Jobs
    analysis: Any = field(default=None, compare=False, repr=False)  # submitit Job of the analysis

    def lines(self) -> list[str]:
        out = [f"store: {self.store}"]
        if self.shadows_job:
            out.append(f"shadows: array job {self.shadows_job} (shards {_ranges(self.shards)})")
        else:
            out.append("shadows: nothing to submit")
        if self.skipped_in_flight:
            out.append(f"still queued/running from an earlier submit: shards {_ranges(self.skipped_in_flight)}")
        if self.analysis_job:
            out.append(f"analysis: job {self.analysis_job} (after the shadows)")
        elif self.analysis_in_flight:
            out.append(f"analysis: job {self.analysis_in_flight} from an earlier submit is still queued/running")
        else:
            out.append("analysis: not submitted")
        return out


def _ranges(xs: list[int]) -> str:
    parts, xs = [], sorted(xs)
    i = 0
    while i < len(xs):
        j = i
        while j + 1 < len(xs) and xs[j + 1] == xs[j] + 1:
            j += 1
        parts.append(str(xs[i]) if i == j else f"{xs[i]}-{xs[j]}")
        i = j + 1
    return ",".join(parts)


def _one_line(err: BaseException) -> str:
    lines = [ln.strip().removeprefix("sbatch: error: ") for ln in str(err).splitlines() if ln.strip()]
    return "; ".join(lines) or type(err).__name__


def job_name(spec: Spec, what: str) -> str:
    """A Slurm job name from the spec name, reduced to characters that need no quoting."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", f"mia-{spec.name}-{what}")[:64]


def check_path(path: Path, what: str) -> None:
    """Refuse paths that cannot be written into an ``#SBATCH`` line safely."""
    if any(ord(c) < 32 or ord(c) == 127 for c in str(path)) or "%" in str(path):
        raise SpecError(f"{what}: must not contain control characters or '%', got {str(path)!r}")


def alive_jobs() -> dict[str, str]:
    """``{job id: state}`` of every job in ``squeue``, array tasks one by one (``123_4``)."""
    exe = shutil.which("squeue")
    if exe is None:
        raise SlurmError("squeue not found: Slurm client commands are not installed on this machine")
    proc = subprocess.run([exe, "-h", "-r", "-o", "%i|%T"], capture_output=True, text=True, timeout=60)
    if proc.returncode:
        raise SlurmError(f"squeue failed: {proc.stderr.strip() or proc.stdout.strip()}")
    out = {}
    for line in proc.stdout.splitlines():
        jid, _, state = line.strip().partition("|")
        if jid:
            out[jid] = state
    return out


def _jobs_file(out: Path) -> Path:
    return out / "slurm" / "jobs.json"


def _read_jobs(out: Path) -> dict[str, Any]:
    return read_json_dict(_jobs_file(out))


def _write_jobs(out: Path, d: dict[str, Any]) -> None:
    write_json_atomic(_jobs_file(out), d, sort_keys=True)


def in_flight(out: Path, alive: dict[str, str]) -> tuple[dict[int, str], list[str]]:
    """Shards of earlier submissions still queued/running: ``({shard: task id}, [array job ids])``."""
    shards: dict[int, str] = {}
    for shard, tid in _read_jobs(out).get("shards", {}).items():
        if alive.get(str(tid)) in _ALIVE:
            shards[int(shard)] = str(tid)
    return shards, sorted({t.split("_")[0] for t in shards.values()})


def slurm_executor(prof: Profile, folder: Path, *, job_name: str, dependency: str | None = None,
                   gpus: bool = False) -> Any:
    """A submitit SlurmExecutor with the profile's resources, for one job (or array) of a submission.

    ``dependency``: job ids (``a:b``) this job runs ``afterok`` of; a failed dependency cancels it
    (``--kill-on-invalid-dep``) instead of leaving it pending forever. ``gpus``: request the
    profile's GPUs (shard tasks do, the analysis and selection jobs do not).
    """
    import submitit

    ex = submitit.SlurmExecutor(folder=folder / "%j", python=prof.python_command(), max_num_timeout=20)
    params: dict[str, Any] = {"cpus_per_task": prof.cpus_per_task, "time": prof.time_min,
                              "mem": f"{int(round(prof.mem_gb * 1024))}M", "nodes": 1, "ntasks_per_node": 1,
                              "job_name": job_name}
    if prof.partition:
        params["partition"] = prof.partition
    if prof.account:
        params["account"] = prof.account
    if prof.setup:
        params["setup"] = prof.setup_lines()
    flags = dict(prof.sbatch_flags()) if prof.sbatch_options else {}
    if dependency:
        params["dependency"] = f"afterok:{dependency}"
        flags["kill-on-invalid-dep"] = "yes"
    if flags:
        params["additional_parameters"] = flags
    if gpus and prof.gpus_per_task:
        params["gpus_per_task"] = prof.gpus_per_task
    ex.update_parameters(**params)
    return ex


FAILED_STATES = {"FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE",
                 "PREEMPTED"}


def shard_job_states(out: str | Path) -> dict[int, tuple[str, str]]:
    """``{shard: (task id, Slurm state)}`` of the latest submission of each shard under ``out``.

    Reads the task ids recorded by :func:`submit` and asks ``sacct`` (or, without accounting,
    ``squeue``, which knows only live jobs). Empty when nothing was submitted or Slurm's client
    commands are missing: status must work on a laptop too.
    """
    shards = {int(k): str(v) for k, v in _read_jobs(Path(out)).get("shards", {}).items()}
    if not shards:
        return {}
    arrays = sorted({t.split("_")[0] for t in shards.values()})
    states: dict[str, str] = {}
    if shutil.which("sacct"):
        proc = subprocess.run(["sacct", "-n", "-P", "-X", "-o", "JobID,State", "-j", ",".join(arrays)],
                              capture_output=True, text=True, timeout=60)
        if proc.returncode == 0:
            for line in proc.stdout.splitlines():
                jid, _, state = line.partition("|")
                if jid and state:
                    states[jid.strip()] = state.split()[0]
    if not states and shutil.which("squeue"):
        try:
            states = alive_jobs()
        except (SlurmError, subprocess.SubprocessError):
            states = {}
    return {shard: (tid, states.get(tid, "")) for shard, tid in shards.items()}


def ready_to_submit(out: str | Path, profile: str | Path | Profile) -> tuple[Path, Profile]:
    """``OUT`` made absolute and checked, and the profile loaded; SlurmError where sbatch is missing."""
    prof = profile if isinstance(profile, Profile) else load_profile(profile)
    out = Path(out).absolute()
    check_path(out, "--out")
    if shutil.which("sbatch") is None:
        raise SlurmError("sbatch not found: submit needs the Slurm client commands "
                         "(for a local test cluster: sudo bash .ci/slurm.sh)")
    return out, prof


def submit(spec_path: str | Path | Spec, out: str | Path, profile: str | Path | Profile, *,
           analyze: bool = True, folder: str | Path | None = None) -> SubmitResult:
    """Submit the unfinished shards of ``spec`` as one array job, then the dependent analysis.

    Returns as soon as ``sbatch`` accepted the jobs. ``folder``: submitit's files (default
    ``OUT/slurm/submitit``). Plain specs only: :func:`mia_hpc.api.submit` decides (a staged spec
    goes to :func:`mia_hpc.pipeline.stages.submit_staged`, which submits its attack store through here).
    """
    import submitit

    spec = spec_path if isinstance(spec_path, Spec) else load_spec(spec_path)
    out, prof = ready_to_submit(out, profile)
    store = out / "store.zarr"
    prepare_store(spec, store, analysis_here=False)  # the analysis runs on a cluster node
    folder = Path(folder).absolute() if folder else out / "slurm" / "submitit"

    alive = alive_jobs()
    flying, flying_arrays = in_flight(out, alive)
    todo = [s for s in pending_shards(store) if s not in flying]
    n_shards = spec.shadows.shards

    jobs: list[Any] = []
    array_id = None
    if todo:
        ex = slurm_executor(prof, folder, job_name=job_name(spec, "shadows"), gpus=True)
        ex.update_parameters(array_parallelism=prof.array_parallelism)
        try:
            jobs = ex.map_array(ShardTask(device="auto", threads=prof.cpus_per_task),
                                [str(store)] * len(todo), todo, [n_shards] * len(todo))
        except submitit.core.utils.FailedJobError as err:
            raise SlurmError(f"sbatch refused the shadows' array job: {_one_line(err)}") from None
        array_id = str(jobs[0].job_id).split("_")[0]
        record = _read_jobs(out)
        record.setdefault("shards", {}).update({str(s): str(j.job_id) for s, j in zip(todo, jobs)})
        record["spec_hash"] = spec.hash()
        _write_jobs(out, record)

    analysis_job = None
    analysis_dir = out / "analysis"
    deps = ([array_id] if array_id else []) + flying_arrays
    earlier = str(_read_jobs(out).get("analysis", ""))
    if not array_id and alive.get(earlier) in _ALIVE:
        analyze = False  # the analysis of the earlier submission still waits for its shards
        deps = []
    if analyze and (deps or not (analysis_dir / "analysis.json").is_file()):
        ex = slurm_executor(prof, folder, job_name=job_name(spec, "analysis"),
                            dependency=":".join(deps) if deps else None)
        try:
            analysis_job = ex.submit(run_analysis, str(store), str(analysis_dir))
        except submitit.core.utils.FailedJobError as err:
            done = f"the shadows were submitted (array job {array_id}), but " if array_id else ""
            raise SlurmError(f"{done}sbatch refused the analysis job: {_one_line(err)}") from None
        record = _read_jobs(out)
        record["analysis"] = str(analysis_job.job_id)
        _write_jobs(out, record)

    return SubmitResult(store=store, out=out, shards=todo, shadows_job=array_id,
                        analysis_job=str(analysis_job.job_id) if analysis_job else None,
                        skipped_in_flight=sorted(flying), jobs=jobs, analysis=analysis_job,
                        analysis_in_flight=earlier if alive.get(earlier) in _ALIVE and not analysis_job else None)

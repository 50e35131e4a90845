"""A dask cluster whose workers are Slurm jobs, started from a cluster profile (``analyze --cluster``).

:func:`slurm_dask_client` starts a dask-jobqueue :class:`~dask_jobqueue.SLURMCluster` with the
profile's resources (:mod:`mia_hpc.launch.profile`), one Slurm job per dask worker, scales it to
``workers`` jobs and yields a :class:`dask.distributed.Client` installed as the default scheduler;
the analysis runs on it unchanged (it receives a client and knows nothing of Slurm). When the block
ends, normally, on an error, on Ctrl-C or on SIGTERM, the cluster is closed: every worker job is
cancelled. A worker whose scheduler vanished without closing (this process killed with SIGKILL)
exits by itself after dask-jobqueue's ``--death-timeout`` (60 s).

Each worker job gets what one array task of the profile gets: ``partition``, ``account``,
``cpus_per_task`` (the worker's threads: one worker process per job), ``mem_gb``, ``time_min``,
``sbatch_options``, the ``setup`` lines, and the worker command runs as the profile's python
(``container`` prefix included, so the worker runs in the same image as the shadows). The store
must be on a filesystem the worker nodes see at the same path.

``dask-jobqueue`` is imported only here, inside the function: nothing else needs it installed.
"""

from __future__ import annotations

import shutil
import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from mia_hpc.launch.profile import Profile, load_profile

__all__ = ["cluster_kwargs", "slurm_dask_client"]

JOB_NAME = "mia-dask"


def _walltime(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}:00"


def cluster_kwargs(prof: Profile, *, log_dir: str | Path | None = None) -> dict:
    """The :class:`~dask_jobqueue.SLURMCluster` arguments for one profile (one worker process per job)."""
    mib = int(round(prof.mem_gb * 1024))
    kw: dict = {
        "cores": prof.cpus_per_task,
        "processes": 1,
        # the worker's memory limit, and --mem=...M: the same request as the profile's array tasks
        # (launch/sbatch.py; dask-jobqueue alone would round it up to whole GB)
        "memory": f"{mib}MiB",
        "job_mem": f"{mib}M",
        "walltime": _walltime(prof.time_min),
        "job_name": JOB_NAME,
        "job_extra_directives": list(prof.sbatch_options),
        "job_script_prologue": prof.setup_lines(),
        "python": prof.python_command(),
        # the scheduler's web server on a free port: no clash with a second analysis on the same node
        "scheduler_options": {"dashboard_address": ":0"},
    }  # gpus_per_task is left out: the analysis uses no GPU, a worker job holds none
    if prof.partition:
        kw["queue"] = prof.partition
    if prof.account:
        kw["account"] = prof.account
    if log_dir is not None:
        kw["log_directory"] = str(log_dir)
    return kw


@contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    """SIGTERM (scancel of this job, a kill) raises SystemExit here, so the cluster is closed too."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):  # pragma: no cover - exercised by a signal
        raise SystemExit(128 + signum)

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


@contextmanager
def slurm_dask_client(profile: str | Path | Profile, *, workers: int = 2, log_dir: str | Path | None = None,
                      wait_s: float | None = None, verbose: bool = True) -> Iterator[object]:
    """Start a SLURMCluster of ``workers`` worker jobs from ``profile``; yield its client; close both.

    Parameters
    ----------
    profile : str, Path or Profile
        A cluster profile (``slurm/profiles/NAME.toml``) or a loaded one.
    workers : int
        Worker jobs (each one dask worker with ``cpus_per_task`` threads).
    log_dir : str or Path, optional
        Where the worker jobs write their ``.out``/``.err`` logs (created). It is removed when the
        block ends without an error and kept (and named on stderr) when it fails. Default: Slurm's
        own (``slurm-JOBID.out`` in the current folder).
    wait_s : float, optional
        Wait at most this long for the first worker to join before running anything (None: as
        long as the queue takes; the analysis' tasks would wait for a worker anyway).
    verbose : bool
        Say on stderr which jobs were submitted and that they were cancelled.
    """
    if workers < 1:
        raise ValueError(f"workers: must be >= 1, got {workers}")
    try:
        from dask.distributed import Client
        from dask_jobqueue import SLURMCluster
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("--cluster needs dask-jobqueue and distributed (pip install dask-jobqueue; "
                          "versions in requirements.lock)") from err

    prof = profile if isinstance(profile, Profile) else load_profile(profile)
    if log_dir is not None:
        Path(log_dir).mkdir(parents=True, exist_ok=True)

    def say(msg: str) -> None:
        if verbose:
            print(f"mia-hpc: {msg}", file=sys.stderr, flush=True)

    ok = False
    with _sigterm_as_exit():
        cluster = SLURMCluster(**cluster_kwargs(prof, log_dir=log_dir))
        try:
            client = Client(cluster)
            try:
                cluster.scale(jobs=workers)
                say(f"dask cluster at {cluster.scheduler_address}: {workers} worker job(s) submitted "
                    f"(job name {JOB_NAME}{', logs in ' + str(log_dir) if log_dir is not None else ''})")
                client.wait_for_workers(1, timeout=wait_s)
                yield client
                ok = True
            finally:
                client.close()
        finally:
            jobs = sorted(str(j.job_id) for j in list(cluster.workers.values()) if getattr(j, "job_id", None))
            cluster.close()  # cancels every worker job (scancel) it submitted
            say(f"dask cluster closed; worker job(s) {', '.join(jobs) or '(none)'} cancelled")
            if log_dir is not None:
                if ok:
                    shutil.rmtree(log_dir, ignore_errors=True)
                else:
                    say(f"worker logs kept in {log_dir}")

"""How many threads the analysis' parallel steps use, the one pass over the logits included.

The default is the CPUs this process may use (``dask.system.cpu_count``: the CPU affinity and a
cgroup CPU quota, whichever is smaller). Inside a Slurm job that is the job's allocation, not the
node's cores (``os.cpu_count``), so an analysis given 8 CPUs of a 64-core node runs 8 threads
instead of oversubscribing, and one given the whole node uses all of it. ``MIA_HPC_THREADS``
overrides it (the pass then runs on that many dask threads; a dask distributed cluster has its own
workers). Every parallel step splits its work into independent parts (blocks of targets, of
replicates, of sorted pairs, of repeats) whose results do not depend on how many threads run them:
``tests/test_threads.py`` compares whole analyses run with 1 and 3 threads.

:func:`n_threads` is the one place that reads the environment: the entry points
(:func:`analysis.analyze`, :func:`analysis.tools.analyze_bench.bench_analyze`, the planner) call it once
when given no ``threads`` and pass the number down; every function below them takes ``threads: int``
(default 1: serial).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

from mia_hpc.contract.settings import ANALYSIS_THREADS_ENV, analysis_threads_from_env

__all__ = ["ENV", "n_threads", "thread_map"]

ENV = ANALYSIS_THREADS_ENV


def n_threads() -> int:
    """Threads for the analysis' parallel steps: ``MIA_HPC_THREADS``, else the usable CPUs."""
    n = analysis_threads_from_env()
    if n is not None:
        return n
    from dask.system import cpu_count

    return max(1, cpu_count())


def thread_map(fn: Callable[[Any], Any], items: Iterable[Any], workers: int = 1) -> list[Any]:
    """``[fn(x) for x in items]``, on up to ``workers`` threads, in order.

    The callers' work is numpy, sorting and compiled loops that release the GIL; with one worker
    (or one item) it runs inline, without a pool.
    """
    items = list(items)
    workers = min(int(workers), len(items))
    if workers <= 1:
        return [fn(x) for x in items]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=workers) as ex:
        return list(ex.map(fn, items))

"""Run-time settings: how a run uses the machine, never what it computes (that is the spec's).

One home for the numbers that were written at every call site: the evaluation batch of the
trainer's query/feature passes (:data:`EVAL_BATCH`), the default sample chunk of a store's
per-sample arrays (:data:`SAMPLE_CHUNK`, the spec's ``store.sample_chunk`` default), and the
environment variable that sets the analysis' threads (:data:`ANALYSIS_THREADS_ENV`).
:func:`analysis_threads_from_env` reads the environment once, at the analysis' entry point; callers
pass the value down instead of reading it again. Training threads are not an environment setting:
a shadow's torch threads are the spec's ``train.threads``, else what its launcher hands
``mia_hpc.launch.worker.train_shard`` (the local launcher's share of the cores, a Slurm profile's
``cpus_per_task``, ``train-shard --threads``), applied in one place (``train_shadow_list``).
None of these changes a result: a store and its tables are the same for any of them (``tests/test_threads.py``, ``tests/test_bitexact.py``).
"""

from __future__ import annotations

import os
from typing import Mapping

EVAL_BATCH = 1024  # images per forward pass when a shadow's query logits and features are computed
SAMPLE_CHUNK = 8192  # samples per chunk of a store's logits (and other per-sample arrays)
ANALYSIS_THREADS_ENV = "MIA_HPC_THREADS"  # threads of the analysis' parallel steps (default: usable CPUs)


def analysis_threads_from_env(environ: Mapping[str, str] | None = None) -> int | None:
    """Threads the environment asks of the analysis (:data:`ANALYSIS_THREADS_ENV`); None when unset.

    Read once, at an analysis entry point (``analysis.kernels.threads.n_threads``), and passed down
    as an int. ValueError names the variable on a bad value.
    """
    env = os.environ if environ is None else environ
    v = env.get(ANALYSIS_THREADS_ENV, "").strip()
    if not v:
        return None
    try:
        n = int(v)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"{ANALYSIS_THREADS_ENV}: expected a positive integer (threads of the analysis), got {v!r}")
    return n


#: The analysis' memory budget in GiB when none is given (``mia-hpc analyze --memory-gb``).
ANALYSIS_MEMORY_GB = 3.0


def memory_budget_bytes(gb: float | str, option: str = "memory_gb") -> int:
    """The analysis' memory budget ``gb`` (GiB) in bytes; ValueError naming ``option`` on a bad value.

    The analysis derives its block sizes from it (which per-target arrays wait on disk, how many
    targets a batch scores); no result depends on it.
    """
    try:
        v = float(gb)
    except (TypeError, ValueError):
        v = float("nan")
    if not (0 < v < float("inf")):
        raise ValueError(f"{option}: expected a positive number of GiB (the analysis' memory budget), got {gb!r}")
    return int(v * 2**30)

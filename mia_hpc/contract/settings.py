"""Run-time settings: how a run uses the machine, never what it computes (that is the spec's).

One home for the numbers that were written at every call site: the evaluation batch of the
trainer's query/feature passes (:data:`EVAL_BATCH`), the default sample chunk of a store's
per-sample arrays (:data:`SAMPLE_CHUNK`, the spec's ``store.sample_chunk`` default), and the
environment variable that sets the analysis' threads (:data:`ANALYSIS_THREADS_ENV`).
:meth:`RunSettings.from_env` reads the environment once, at the entry point; callers pass the
values down instead of reading it again. None of these changes a result: a store and its tables
are the same for any of them (``tests/test_threads.py``, ``tests/test_bitexact.py``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping

EVAL_BATCH = 1024  # images per forward pass when a shadow's query logits and features are computed
SAMPLE_CHUNK = 8192  # samples per chunk of a store's logits (and other per-sample arrays)
ANALYSIS_THREADS_ENV = "MIA_HPC_THREADS"  # threads of the analysis' parallel steps (default: usable CPUs)


@dataclass(frozen=True)
class RunSettings:
    """How a run uses the machine; 0 threads: the default (training: the spec's ``train.threads``,
    else the launcher's share of the cores; analysis: the CPUs this process may use)."""

    train_threads: int = 0
    analysis_threads: int = 0
    eval_batch: int = EVAL_BATCH
    sample_chunk: int = SAMPLE_CHUNK

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> RunSettings:
        """The settings the environment asks for (:data:`ANALYSIS_THREADS_ENV`); ValueError on a bad value."""
        env = os.environ if environ is None else environ
        v = env.get(ANALYSIS_THREADS_ENV, "").strip()
        if not v:
            return cls()
        try:
            n = int(v)
        except ValueError:
            n = 0
        if n < 1:
            raise ValueError(f"{ANALYSIS_THREADS_ENV}: expected a positive integer (threads of the analysis), got {v!r}")
        return cls(analysis_threads=n)

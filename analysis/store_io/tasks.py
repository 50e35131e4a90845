"""Independent pieces of the analysis as dask tasks on a dask distributed cluster, else in-process.

The pass over the logits is a dask graph, so it runs on whatever scheduler is the default. The
phases after it (every attack's per-target scoring, the metrics, the bootstrap tables) are
numpy/numba code on the analysis' own threads; :func:`run_pieces` cuts such a phase into
independent pieces (one attack each) and, when a :class:`dask.distributed.Client` is the default
(:func:`analysis.store_io.distributed.client_for`), submits each piece as one task, so that a
cluster with more workers finishes the phase sooner. Without a client the pieces are not used at
all: the callers keep their in-process path, unchanged.

The pieces' big inputs travel as file references, not as pickled arrays: a
:class:`analysis.store_io.spill.DiskRows` (path, shape, dtype) of an ``.npy`` file under the
analysis' output folder, which a worker maps itself. The workers must therefore see that folder at
the same path (a shared filesystem on a cluster; always so on a :class:`~dask.distributed.LocalCluster`).
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from analysis.store_io.spill import DiskRows

__all__ = ["current_client", "run_pieces", "file_ref"]


def current_client() -> Any:
    """The default :class:`dask.distributed.Client` now, or None (no ``distributed``, or no client)."""
    try:
        from distributed import default_client
    except ImportError:  # pragma: no cover - depends on the environment
        return None
    try:
        return default_client()
    except ValueError:  # "No clients found"
        return None


def run_pieces(fn: Callable[..., Any], pieces: Mapping[str, tuple], *, name: str, client: Any = None) -> dict[str, Any]:
    """``{label: fn(*args) for label, args in pieces.items()}``, each piece one dask task on ``client``.

    Parameters
    ----------
    fn : callable
        A module-level function (workers import it by name).
    pieces : mapping label -> tuple
        Each piece's positional arguments; big arrays as :func:`file_ref` references.
    name : str
        The tasks' key prefix: piece ``label`` runs as ``"{name}-{label}-{tag}"`` (``tag`` unique
        per call, so a rerun is computed again instead of returning a finished task's result).
    client : dask.distributed.Client, optional
        Where the tasks run; None runs the pieces here, one after another.

    Returns
    -------
    dict
        Every piece's result, in ``pieces``' order.
    """
    if client is None:
        return {label: fn(*args) for label, args in pieces.items()}
    tag = uuid.uuid4().hex[:8]
    # every piece submitted before any is waited for: the scheduler spreads them over the workers
    futures = {label: client.submit(fn, *args, key=f"{name}-{label}-{tag}", pure=False)
               for label, args in pieces.items()}
    try:
        return dict(zip(futures, client.gather(list(futures.values()))))
    finally:
        for f in futures.values():
            f.release()


def file_ref(array: np.ndarray, path: str | Path) -> DiskRows:
    """``array`` saved to ``path`` (``.npy``) and returned as a reference a worker can open."""
    np.save(path, np.asarray(array), allow_pickle=False)
    return DiskRows.open(path)

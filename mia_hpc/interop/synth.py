"""``synth_store``: a synthetic store of any size, timed and measured (engine of ``mia-hpc synth-store``).

A thin layer over :func:`analysis.tools.synthetic_store.write_synthetic_store` (torch-free), which defines the
known IN/OUT distributions. Bad sizes raise :class:`~mia_hpc.contract.spec.SpecError` with one line.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable

from mia_hpc.contract.spec import SpecError
from mia_hpc.contract.settings import SAMPLE_CHUNK

__all__ = ["synth_store", "tree_size"]


def tree_size(path: str | Path) -> tuple[int, int]:
    """(bytes, files) of everything under ``path``."""
    total = files = 0
    for dirpath, _, names in os.walk(path):
        for name in names:
            total += os.path.getsize(os.path.join(dirpath, name))
            files += 1
    return total, files


def synth_store(out: str | Path, *, shadows: int, samples: int, classes: int = 10, queries: int = 1,
                under_fraction: float = 0.2, separation_under: float = 3.0, separation_over: float = 0.0,
                seed: int = 0, test_samples: int = 0, sigma: float = 1.0, sample_chunk: int = SAMPLE_CHUNK,
                progress: Callable[[int], None] | None = None, logits: str = "realistic") -> dict[str, Any]:
    """Write a synthetic store at ``out`` and report where, how big and how fast.

    Returns
    -------
    dict
        ``path``, ``bytes``, ``files``, ``seconds`` (wall time of the whole write), ``logits_bytes``
        (uncompressed) and ``logits_bytes_on_disk`` (the logits array's files), the dims
        (``shadows``, ``samples`` = train + test, ``classes``, ``queries``) and ``analytic_auroc``
        per group (the Bayes-optimal AUROC the attacks should approach) and ``logits``: the kind
        (``"realistic"``, compressing like trained logits, or ``"compressible"``; see
        :mod:`analysis.tools.synthetic_store`).
    """
    from analysis.tools.synthetic_store import write_synthetic_store

    if shadows < 2 or shadows % 2:
        raise SpecError(f"--shadows: must be an even integer >= 2 (each sample IN for exactly M/2), got {shadows}")
    if not 0 <= under_fraction < 1:
        raise SpecError(f"--under-fraction: must be >= 0 and < 1, got {under_fraction}")
    if classes < 2 or queries < 1 or test_samples < 0 or sigma < 0 or sample_chunk < 1:
        raise SpecError("need --classes >= 2, --queries >= 1, --test-samples >= 0, --sigma >= 0, --sample-chunk >= 1")
    if logits not in ("realistic", "compressible"):
        raise SpecError(f"--logits: realistic or compressible, got {logits!r}")
    t0 = time.perf_counter()
    try:
        res = write_synthetic_store(out, n_shadows=shadows, n_samples=samples, n_classes=classes, n_queries=queries,
                                    separation={"over": separation_over, "under": separation_under},
                                    frac_under=under_fraction, sigma=sigma, seed=seed, n_test=test_samples,
                                    sample_chunk=sample_chunk, progress=progress, logits=logits)
    except ValueError as err:  # SpecError is a ValueError too: keep its message, make it one line
        raise SpecError(f"synth-store: {err}".replace("\n", " ")) from None
    seconds = time.perf_counter() - t0
    size, files = tree_size(out)
    logits_disk, _ = tree_size(Path(out) / "logits")
    return {"path": str(out), "bytes": size, "files": files, "seconds": seconds, "shadows": shadows,
            "logits_bytes": 4 * shadows * (samples + test_samples) * queries * classes,
            "logits_bytes_on_disk": logits_disk,
            "samples": samples + test_samples, "classes": classes, "queries": queries,
            "analytic_auroc": res["analytic_auroc"], "logits": logits}

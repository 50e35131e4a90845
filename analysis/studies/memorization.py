"""Feldman-Zhang label-memorization estimate from the shadows' correctness and membership.

``mem(z) = P[theta(x) = y | z IN] - P[theta(x) = y | z OUT]`` (paper §2.1 Eq. 1, Algorithm 1
line 20), estimated by the fractions of IN and OUT shadows that classify the sample correctly.
The counts are plain sums over the ``shadow`` axis, so on dask input they are lazy reductions that
can be computed together with the LiRA sums in one pass over the store.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from analysis.kernels.stats import MemCounts

__all__ = ["MemCounts", "memorization_counts", "memorization_from_counts", "memorization"]


def memorization_counts(correct: Any, keep: Any) -> MemCounts:
    """Count IN/OUT shadows and their correct predictions per sample.

    Parameters
    ----------
    correct, keep : array-like of bool, shape (M, N)
        Whether shadow m classifies sample n correctly / trained on it. numpy, dask or xarray
        (with ``shadow`` first); the result has the same laziness as the input.

    Returns
    -------
    MemCounts
        Each field has shape (N,), integer-valued.
    """
    correct = _as_array(correct).astype(bool)
    keep = _as_array(keep).astype(bool)
    out = ~keep
    return MemCounts(n_in=keep.sum(axis=0), c_in=(correct & keep).sum(axis=0),
                     n_out=out.sum(axis=0), c_out=(correct & out).sum(axis=0))


def memorization_from_counts(n_in: Any, c_in: Any, n_out: Any, c_out: Any) -> tuple[np.ndarray, np.ndarray]:
    """Memorization and its standard error from counts.

    ``mem = p_in - p_out`` with ``p = c / n``; the standard error treats the IN and OUT shadows as
    independent Bernoulli samples: ``sqrt(p_in (1 - p_in) / n_in + p_out (1 - p_out) / n_out)``.
    Samples that no shadow trained on (the test split), or that every shadow trained on, have no
    estimate: NaN for both.

    Returns
    -------
    mem, se : ndarray of float64, shape (N,)
    """
    n_in, c_in, n_out, c_out = (np.asarray(a, dtype=np.float64) for a in (n_in, c_in, n_out, c_out))
    ok = (n_in > 0) & (n_out > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        p_in = np.where(ok, c_in / n_in, np.nan)
        p_out = np.where(ok, c_out / n_out, np.nan)
        se = np.sqrt(p_in * (1 - p_in) / n_in + p_out * (1 - p_out) / n_out)
    return p_in - p_out, np.where(ok, se, np.nan)


def memorization(correct: Any, keep: Any) -> tuple[np.ndarray, np.ndarray]:
    """Memorization and standard error per sample, computed now; see :func:`memorization_from_counts`.

    Parameters
    ----------
    correct, keep : array-like of bool, shape (M, N)

    Returns
    -------
    mem, se : ndarray of float64, shape (N,)
    """
    c = memorization_counts(correct, keep)
    return memorization_from_counts(c.n_in, c.c_in, c.n_out, c.c_out)


def _as_array(a: Any) -> Any:
    """numpy/dask array from numpy, dask or an xarray DataArray (whose first dim must be shadow)."""
    if hasattr(a, "dims") and hasattr(a, "data"):
        if a.dims[0] != "shadow":
            raise ValueError(f"expected 'shadow' as the first dimension, got {a.dims}")
        return a.data
    if hasattr(a, "compute"):  # dask array
        return a
    return np.asarray(a)

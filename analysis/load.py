"""Open a shadow store for analysis and derive the per-(shadow, sample, query) signals lazily.

Everything here returns dask-backed :class:`xarray.DataArray` objects: nothing of shape
(shadow, sample, query, class) is ever materialised beyond one store chunk at a time, so the same
code runs on a laptop-sized store and on 2000 shadows x 61,000 samples. Callers decide when to
compute, ideally all reductions together in one ``dask.compute`` so that the logits are read once.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from mia_hpc.store import StoreError

__all__ = ["ShadowData", "open_shadows", "phi_from_logits", "loss_from_logits", "AnalysisError"]


class AnalysisError(RuntimeError):
    """The store cannot be analysed as it is (e.g. too few finished shadows)."""


def _other_logsumexp(z: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(z_y, logsumexp_{y' != y} z_y')`` along the last axis, in float64.

    ``z`` has shape (..., C) and ``y`` shape broadcastable to ``z.shape[:-1]``. Working in float64
    and subtracting the maximum of the *other* logits keeps the result finite for logits as large
    as +-1e4 (where ``log(softmax)`` in float32 would underflow to -inf).
    """
    z = np.array(z, dtype=np.float64)  # a private copy: modified in place below (2x faster than np.where)
    y = np.broadcast_to(np.asarray(y, dtype=np.int64), z.shape[:-1])[..., None]
    zy = np.take_along_axis(z, y, axis=-1)[..., 0]
    np.put_along_axis(z, y, -np.inf, axis=-1)  # drop the true class from the others
    m = z.max(axis=-1)  # finite whenever C >= 2 and the logits are finite (NaN logits stay NaN)
    z -= m[..., None]
    np.exp(z, out=z)
    lse = m + np.log(z.sum(axis=-1))
    return zy, lse


def phi_from_logits(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Logit-scaled true-class confidence ``phi = log p_y - log(sum_{y' != y} p_y')``.

    Computed as ``z_y - logsumexp_{y' != y} z_{y'}``, which equals the definition exactly (the
    softmax normaliser cancels) and never forms ``p_y`` itself, so it is finite for any finite
    logits. This is the statistic Carlini et al. fit Gaussians to (LiRA, Algorithm 1 line 11).

    Parameters
    ----------
    z : ndarray, shape (..., C)
        Logits.
    y : ndarray of int
        True labels, broadcastable to ``z.shape[:-1]``.

    Returns
    -------
    ndarray of float64, shape ``z.shape[:-1]``
        Rounded to float32, the precision the logits are stored in: the analysis keeps the
        targets' phi as float32, and with one precision everywhere a target's own contribution
        cancels exactly from sums over shadows.
    """
    from .logit_kernels import phi_rows  # one compiled loop per row (same formula)

    return phi_rows(z, y).astype(np.float32).astype(np.float64)


def loss_from_logits(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Cross-entropy ``-log p_y = logsumexp(z) - z_y``, stable for extreme logits (float64)."""
    zy, lse_other = _other_logsumexp(z, y)
    # logsumexp over all classes = logaddexp(z_y, lse over the others); no overflow either way.
    return np.logaddexp(zy, lse_other) - zy


@dataclass(frozen=True)
class ShadowData:
    """A store restricted to its finished shadows, with lazily derived signals.

    Attributes
    ----------
    path : Path
        The store.
    ds : xarray.Dataset
        The store's Dataset restricted to ``done`` shadows (dask-backed; static per-sample
        variables such as ``label``, ``group`` and ``split`` are loaded into memory).
    spec : dict
        The normalized spec the store was created from.
    spec_hash : str
        The store's spec hash.
    n_total : int
        Number of shadows in the store, done or not.
    positions : ndarray of int, optional
        Indices of the done shadows in the store (default ``0 .. M-1``).
    """

    path: Path
    ds: xr.Dataset
    spec: dict[str, Any]
    spec_hash: str
    n_total: int
    positions: np.ndarray | None = None  # the done shadows' indices in the store (None: 0 .. M-1)

    # --- cheap per-sample facts (in memory) ---------------------------------------------------
    @property
    def n_shadows(self) -> int:
        """Number of done shadows (the M the analysis uses)."""
        return int(self.ds.sizes["shadow"])

    @property
    def label(self) -> np.ndarray:
        """(N,) int labels."""
        return np.asarray(self.ds["label"].values, dtype=np.int64)

    @property
    def group(self) -> np.ndarray:
        """(N,) fixed-width str, "over" / "under"."""
        return _fixed_str(self.ds["group"].values)

    @property
    def split(self) -> np.ndarray:
        """(N,) fixed-width str, "train" / "test"."""
        return _fixed_str(self.ds["split"].values)

    @property
    def keep(self) -> xr.DataArray:
        """(shadow, sample) bool membership of each done shadow (in memory)."""
        return self.ds["keep"]

    @property
    def logits(self) -> xr.DataArray:
        """(shadow, sample, query, class) float32 logits of the done shadows (lazy)."""
        return self.ds["logits"]

    def logits_blocks(self, shadows_per_block: int) -> Any:
        """The done shadows' logits as a dask array whose blocks are ``shadows_per_block`` whole
        shadows, each block one read of the store's zarr array.

        zarr fetches and decodes a block's chunks together; the xarray graph of :attr:`logits` has
        one dask task per store chunk, and rechunking it adds a task per chunk more (measured on
        2000 x 20,000 x 1 x 10 float32, 2 cores: 4.5 s to read this way, 10.6 s through xarray).
        Same values: the logits carry no scale or offset encoding (NaN fill stays NaN).
        """
        import dask.array as da
        import zarr

        arr = zarr.open_group(str(self.path), mode="r")["logits"]
        pos = np.arange(self.n_shadows) if self.positions is None else np.asarray(self.positions)
        z = da.from_array(arr, chunks=(shadows_per_block,) + tuple(arr.shape[1:]), asarray=True)
        if pos.size and np.array_equal(pos, np.arange(pos[0], pos[0] + pos.size)):  # a run: a slice
            z = z[int(pos[0]):int(pos[0]) + pos.size]
        else:  # shadows not done in between
            z = z[pos]
        return z.rechunk({0: shadows_per_block})

    # --- lazily derived signals ---------------------------------------------------------------
    def phi(self) -> xr.DataArray:
        """(shadow, sample, query) float64 logit-scaled confidence (lazy); see :func:`phi_from_logits`."""
        return self._per_class_reduce(phi_from_logits, "phi")

    def loss(self) -> xr.DataArray:
        """(shadow, sample, query) float64 cross-entropy loss (lazy), for loss-based attacks."""
        return self._per_class_reduce(loss_from_logits, "loss")

    def correct(self) -> xr.DataArray:
        """(shadow, sample) bool: argmax of the identity query's logits equals the label (lazy).

        This is the event ``theta(x) = y`` of the memorization definition (paper §2.1, Eq. 1).
        """
        z0 = self.logits.isel(query=0)
        return (z0.argmax("class") == self.ds["label"]).rename("correct")

    def _per_class_reduce(self, fn, name: str) -> xr.DataArray:
        # apply_ufunc with dask="parallelized" maps ``fn`` over each logits chunk (class is never
        # split), so memory stays at one chunk per worker thread.
        out = xr.apply_ufunc(fn, self.logits, self.ds["label"], input_core_dims=[["class"], []],
                             dask="parallelized", output_dtypes=[np.float64])
        return out.rename(name)

    # --- per-shadow scalars -------------------------------------------------------------------
    def accuracy(self) -> xr.DataArray:
        """(shadow, subset) accuracy recorded by each done shadow's worker (in memory)."""
        return self.ds["accuracy"].load()


def _fixed_str(a: np.ndarray) -> np.ndarray:
    """A numpy ``<U`` array from any string array (zarr may return numpy's variable-width StringDType,
    which cannot be cast to ``str`` without a size and which pandas/matplotlib handle less well)."""
    a = np.asarray(a)
    return a if a.dtype.kind == "U" else np.array(a.tolist(), dtype=str)


def open_shadows(path: str | Path, *, min_done: int = 2, shadow_limit: int | None = None) -> ShadowData:
    """Open a store and select its ``done`` shadows.

    Parameters
    ----------
    path : str or Path
        A store made by :func:`mia_hpc.store.create_store`.
    min_done : int
        Fewest finished shadows that make an analysis meaningful; 2 is the least for which IN and
        OUT statistics can both exist for a sample.
    shadow_limit : int, optional
        Only shadows with index below this count (the prefix trained so far by an adaptive run).

    Raises
    ------
    StoreError
        If ``path`` is not a store.
    AnalysisError
        If fewer than ``min_done`` shadows are done.
    """
    path = Path(path)
    if not (path / "zarr.json").is_file():
        raise StoreError(f"{path}: not a mia-hpc store (no zarr.json)")
    with warnings.catch_warnings():
        # zarr 3 warns that consolidated metadata is not in the v3 spec; harmless for reading.
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        ds = xr.open_zarr(path, consolidated=True)
    missing = [v for v in ("logits", "keep", "done", "label", "group", "split", "accuracy") if v not in ds]
    if missing:
        raise StoreError(f"{path}: store lacks variables {missing}; was it made by mia-hpc?")
    import zarr

    # the per-shadow variables have one store chunk per shadow (each worker writes only its own):
    # zarr reads such a variable's chunks together, xarray's dask graph one task each (measured
    # 0.8 s vs 3 s for `done` at 2000 shadows); they are small, so they are loaded here, once
    root = zarr.open_group(str(path), mode="r")
    with zarr.config.set({"async.concurrency": 64}):  # thousands of tiny chunk files: more in flight
        done = np.asarray(root["done"][...], dtype=bool)
        accuracy = np.asarray(root["accuracy"][...])
    if shadow_limit is not None:
        done &= np.arange(done.size) < shadow_limit
    n_done = int(done.sum())
    if n_done < min_done:
        raise AnalysisError(f"{path}: only {n_done} of {done.size} shadows are done; the analysis needs "
                            f"at least {min_done} (finish training, or wait for more shadows)")
    pos = np.flatnonzero(done)
    ds = ds.isel(shadow=pos)
    for v, a in (("keep", np.asarray(root["keep"][...])), ("accuracy", accuracy)):
        ds[v] = (ds[v].dims, a[pos], ds[v].attrs)
    # Small per-sample variables are needed eagerly by everyone; load them once.
    for v in ("label", "group", "split"):
        ds[v] = ds[v].load()
    spec = json.loads(ds.attrs.get("spec", "{}"))
    return ShadowData(path=path, ds=ds, spec=spec, spec_hash=str(ds.attrs.get("spec_hash", "")),
                      n_total=int(done.size), positions=pos)


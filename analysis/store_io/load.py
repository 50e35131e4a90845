"""Open a shadow store for analysis and derive the per-(shadow, sample, query) signals lazily.

Everything here returns dask-backed :class:`xarray.DataArray` objects: nothing of shape
(shadow, sample, query, class) is ever materialised beyond one store chunk at a time, so the same
code runs on a laptop-sized store and on 2000 shadows x 61,000 samples. Callers decide when to
compute, ideally all reductions together in one ``dask.compute`` so that the logits are read once.
"""

from __future__ import annotations

import itertools
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from mia_hpc.contract.store import StoreError

__all__ = ["ShadowData", "open_shadows", "phi_from_logits", "loss_from_logits", "AnalysisError"]


class AnalysisError(StoreError):
    """The store cannot be analysed as it is (too few finished shadows, diverged or damaged ones).

    A :class:`~mia_hpc.contract.store.StoreError`, so the CLI prints it as one line."""


def _shadow_list(shadows: list[int], limit: int = 10) -> str:
    """``shadow 3`` or ``shadows 1, 2, 5`` (the first ``limit``, then how many more)."""
    more = f" and {len(shadows) - limit} more" if len(shadows) > limit else ""
    return ("shadow " if len(shadows) == 1 else "shadows ") + ", ".join(map(str, shadows[:limit])) + more


def _decode_error(err: BaseException) -> str:
    """zarr's decode failure in a few words (its checksum message quotes raw bytes)."""
    text = str(err).strip()
    if "checksum" in text.lower():
        return "crc32c checksum mismatch"
    return text.splitlines()[0][:120] if text else type(err).__name__


def _read_checked(path: str, positions: np.ndarray, prefixes: np.ndarray | None,
                  digests: np.ndarray | None) -> np.ndarray:
    """The logits of the given shadows (one zarr read), refused unless they decode, match the shadows'
    digests and are finite: the analysis never computes numbers from damaged or diverged shadows."""
    import crc32c
    import zarr

    arr = zarr.open_group(path, mode="r")["logits"]
    pos = np.asarray(positions)
    try:
        if pos.size and np.array_equal(pos, np.arange(pos[0], pos[0] + pos.size)):
            z = np.asarray(arr[int(pos[0]):int(pos[0]) + pos.size])
        else:
            z = np.asarray(arr.get_orthogonal_selection((pos,)))
    except Exception as err:  # zarr raises ValueError for checksum and decode failures
        raise AnalysisError(f"{path}: {_shadow_list(pos.tolist())}: the logits do not decode "
                            f"({_decode_error(err)}); run "
                            f"'mia-hpc status {path} --verify --reset-broken' and re-run them") from None
    if prefixes is not None and digests is not None:
        wrong = [int(s) for s, zz, pre, want in zip(pos, z, prefixes, digests)
                 if crc32c.crc32c(np.ascontiguousarray(zz).tobytes(), int(pre)) != int(want)]
        if wrong:
            raise AnalysisError(f"{path}: {_shadow_list(wrong)}: the outputs do not match their digest (chunks deleted, "
                                f"moved or copied from another store); run 'mia-hpc status {path} --verify "
                                "--reset-broken' and re-run them")
    finite = np.isfinite(z).reshape(len(pos), -1).all(axis=1)
    if not finite.all():
        raise AnalysisError(f"{path}: {_shadow_list(pos[~finite].tolist())}: non-finite logits (diverged); run 'mia-hpc status {path} --verify --reset-broken' and re-run them, "
                            "with a lower train.lr if they diverge again")
    return z


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
    # one compiled loop per row (same formula). In the function: opening a store stays free of numba
    # (the CLI's status and checks open stores)
    from analysis.kernels.logit_kernels import phi_rows

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
    # per done shadow: its digest, and the digest's running crc32c before the logits (None: no digests)
    digests: np.ndarray | None = None
    digest_prefixes: np.ndarray | None = None

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
        Same values: the logits carry no scale or offset encoding. Each block is checked as it is
        read (:func:`_read_checked`): a block with a damaged, moved or non-finite shadow raises
        :class:`AnalysisError` naming the shadows instead of giving numbers.
        """
        import dask
        import dask.array as da
        import zarr

        arr = zarr.open_group(str(self.path), mode="r")["logits"]
        pos = np.arange(self.n_shadows) if self.positions is None else np.asarray(self.positions)
        step = max(1, int(shadows_per_block))
        blocks = []
        for lo in range(0, pos.size, step):
            sl = slice(lo, lo + step)
            pre = None if self.digest_prefixes is None else self.digest_prefixes[sl]
            dig = None if self.digests is None else self.digests[sl]
            part = dask.delayed(_read_checked, pure=True)(str(self.path), pos[sl], pre, dig)
            blocks.append(da.from_delayed(part, shape=(len(pos[sl]),) + tuple(arr.shape[1:]), dtype=arr.dtype))
        if not blocks:
            return da.zeros((0,) + tuple(arr.shape[1:]), dtype=arr.dtype, chunks=(step,) + tuple(arr.shape[1:]))
        return da.concatenate(blocks, axis=0)

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
        A store made by :func:`mia_hpc.contract.store.create_store`.
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
    from mia_hpc.contract.verify import check_metadata

    _, damaged = check_metadata(path)  # StoreError (one line) for a damaged root
    if damaged:
        more = f" (and {len(damaged) - 1} more)" if len(damaged) > 1 else ""
        raise StoreError(f"{damaged[0].key}: {damaged[0].error}{more}; the store's metadata is damaged: check it "
                         f"with 'mia-hpc status {path} --verify'")
    with warnings.catch_warnings():
        # zarr 3 warns that consolidated metadata is not in the v3 spec; harmless for reading.
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        try:  # reads the coordinates' chunks
            ds = xr.open_zarr(path, consolidated=True)
        except ValueError as err:  # zarr's checksum and decode failures
            raise StoreError(f"{path}: the coordinates do not decode ({_decode_error(err)}); run "
                             f"'mia-hpc status {path} --verify' to find the damage") from None
    missing = [v for v in ("logits", "keep", "done", "label", "group", "split", "accuracy") if v not in ds]
    if missing:
        raise StoreError(f"{path}: store lacks variables {missing}; was it made by mia-hpc?")
    import zarr

    # the per-shadow variables have one store chunk per shadow (each worker writes only its own):
    # zarr reads such a variable's chunks together, xarray's dask graph one task each (measured
    # 0.8 s vs 3 s for `done` at 2000 shadows); they are small, so they are loaded here, once
    root = zarr.open_group(str(path), mode="r")
    with zarr.config.set({"async.concurrency": 64}):  # thousands of tiny chunk files: more in flight
        try:
            done = np.asarray(root["done"][...], dtype=bool)
            accuracy = np.asarray(root["accuracy"][...])
        except ValueError as err:  # zarr's checksum and decode failures
            raise AnalysisError(f"{path}: the done flags or accuracies do not decode ({_decode_error(err)}); "
                                f"run 'mia-hpc status {path} --verify' to find the damage") from None
    if shadow_limit is not None:
        done &= np.arange(done.size) < shadow_limit
    n_done = int(done.sum())
    if n_done < min_done:
        raise AnalysisError(f"{path}: only {n_done} of {done.size} shadows are done; the analysis needs "
                            f"at least {min_done} (finish training, or wait for more shadows)")
    pos = np.flatnonzero(done)
    digests, prefixes = _check_done_shadows(path, root, pos)
    static = _read_static(path, root, ("keep", "label", "group", "split"))
    ds = ds.isel(shadow=pos)
    for v, a in (("keep", static["keep"]), ("accuracy", accuracy)):
        ds[v] = (ds[v].dims, a[pos], ds[v].attrs)
    # Small per-sample variables are needed eagerly by everyone; load them once.
    for v in ("label", "group", "split"):
        ds[v] = (ds[v].dims, static[v], ds[v].attrs)
    spec = json.loads(ds.attrs.get("spec", "{}"))
    data = ShadowData(path=path, ds=ds, spec=spec, spec_hash=str(ds.attrs.get("spec_hash", "")),
                      n_total=int(done.size), positions=pos, digests=digests, digest_prefixes=prefixes)
    # every reader of the logits (not only the pass) gets them checked: a whole shadow is read and
    # checked per task, then split into the store's chunks as xarray had them
    checked = data.logits_blocks(1).rechunk(ds["logits"].data.chunks)
    ds["logits"] = xr.DataArray(checked, dims=ds["logits"].dims, coords=ds["logits"].coords,
                                attrs=ds["logits"].attrs)
    return data


def _read_static(path: Path, root: Any, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Arrays written at creation, refused unless they decode and match the digests recorded then."""
    from mia_hpc.contract.store import array_digest

    digests = root.attrs.get("digests") if isinstance(root.attrs.get("digests"), dict) else {}
    out: dict[str, np.ndarray] = {}
    for name in names:
        try:
            a = np.asarray(root[name][...])
        except ValueError as err:  # zarr's checksum and decode failures
            raise StoreError(f"{path}: array {name} does not decode ({_decode_error(err)}); it was "
                             "written when the store was created: re-create the store (new --out) from its spec") from None
        if name in digests and array_digest(a) != digests[name]:
            raise StoreError(f"{path}: array {name} differs from the digest recorded at creation (a chunk deleted, "
                             "moved or copied from another store): re-create the store (new --out) from its spec")
        out[name] = a if a.dtype.kind != "T" and a.dtype != object else _fixed_str(a)
    return out


def _digest_matches(root: Any, s: int) -> bool:
    """Whether shadow ``s``'s outputs, as read now, match its digest (False if any does not decode)."""
    from mia_hpc.contract.store import shadow_digest

    try:
        return shadow_digest(s, root["logits"][s], root["accuracy"][s], float(root["train_loss"][s]),
                             float(root["finished_at"][s])) == int(root["digest"][s])
    except ValueError:  # zarr's checksum and decode failures
        return False


def _check_done_shadows(path: Path, root: Any, pos: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Refuse done shadows with missing chunks or no digest (cheap: file names and small arrays);
    return their digests and the digests' running crc32c before the logits, for the check of each
    block of logits as it is read (:meth:`ShadowData.logits_blocks`)."""
    from mia_hpc.contract.store import NO_DIGEST, shadow_digest_prefix

    fix = f"run 'mia-hpc status {path} --verify --reset-broken' and re-run them"
    names = ["logits", "accuracy", "train_loss", "finished_at"] + (["digest"] if "digest" in root else [])
    gone: dict[int, set[str]] = {}
    for name in names:
        arr = root[name]
        inner = list(itertools.product(*(range(c) for c in arr.cdata_shape[1:])))
        for s in pos:
            if any(not (path / name / "c" / "/".join(map(str, (int(s),) + k))).is_file() for k in inner):
                gone.setdefault(int(s), set()).add(name)
    # as mia_hpc.contract.verify judges them: a missing chunk that held only the fill value (stores written
    # before every chunk of a done shadow was kept) still matches the shadow's digest
    missing = sorted(s for s, g in gone.items()
                     if ("digest" not in root and g != {"train_loss"}) or "digest" in g
                     or ("digest" in root and not _digest_matches(root, s)))
    if missing:
        raise AnalysisError(f"{path}: {_shadow_list(missing)}: marked done, but chunks of the outputs are missing "
                            f"(deleted?); {fix}")
    try:
        loss = np.asarray(root["train_loss"].get_orthogonal_selection((pos,)), dtype=np.float32)
        at = np.asarray(root["finished_at"].get_orthogonal_selection((pos,)), dtype=np.float64)
        acc = np.asarray(root["accuracy"].get_orthogonal_selection((pos,)), dtype=np.float32)
        digests = (np.asarray(root["digest"].get_orthogonal_selection((pos,)), dtype=np.int64)
                   if "digest" in root else None)
    except Exception as err:  # zarr raises ValueError for checksum and decode failures
        raise AnalysisError(f"{path}: the outputs of the done shadows do not decode "
                            f"({_decode_error(err)}); {fix}") from None
    if digests is None:
        return None, None
    undigested = pos[digests == NO_DIGEST].tolist()
    if undigested:
        raise AnalysisError(f"{path}: {_shadow_list(undigested)}: marked done, but no digest (done set by hand?); "
                            f"{fix}")
    prefixes = np.array([shadow_digest_prefix(int(s), a, float(lv), float(t))
                         for s, a, lv, t in zip(pos, acc, loss, at)], dtype=np.int64)
    return digests, prefixes


"""``OUT/scores.zarr``: the per-sample (and per target) results of an analysis, for xarray users.

:func:`write_scores` turns what :func:`analysis.output.report.analyze` returns into one xarray Dataset and
writes it as a Zarr store::

    import xarray as xr
    ds = xr.open_zarr("runs/demo/analysis/scores.zarr")
    ds.mem.where(ds.group == "under")                      # memorization of under-represented samples
    ds.score.sel(attack="lira-online").isel(target=0)      # one target's scores (NaN off the challenge set)

Variables:

========================  ========================  ===================================================
name                      dims                      meaning
========================  ========================  ===================================================
``label``                 sample                    class label
``group``                 sample                    "over" / "under"
``split``                 sample                    "train" / "test"
``challenge``             sample                    bool: a challenge point of the attacks (train split)
``under``                 sample                    bool: group == "under"
``mem``, ``mem_se``       sample                    Feldman-Zhang memorization and its standard error
``privacy_score``         sample                    Carlini et al.'s per-sample privacy score
(more)                    sample                    every other numeric column of ``per_sample`` and
                                                    every array of ``extra_per_sample`` (e.g. H², OOD)
``score``                 attack, target, sample    each attack's score (higher = more likely member);
                                                    NaN where the sample is not a challenge point
``member``                target, sample            truth: the target trained on the sample
========================  ========================  ===================================================

Coordinates: ``sample`` (store sample ids), ``target`` (store shadow ids of the targets), ``attack``.
Attrs: ``spec_hash``, ``store``, ``n_shadows_done``, ``score_dtype``.

Scores are stored as float32 by default (``score_dtype``): a 2000-target x 20,000-sample analysis
with three attacks is then 480 MB rather than 960 MB; pass ``score_dtype="float64"`` for bit-exact
copies of ``analyze``'s arrays.

The store is written into a temporary directory next to ``OUT/scores.zarr`` and renamed into place
(an existing ``scores.zarr`` is first renamed aside and removed afterwards), so a crash never leaves
a partial ``scores.zarr``.
"""

from __future__ import annotations

import os
import shutil
import warnings
from collections import ChainMap
from collections.abc import Mapping as _Mapping
from pathlib import Path
from typing import Any, Mapping

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr

from analysis.kernels.threads import thread_map

__all__ = ["scores_dataset", "write_scores", "StoredScores"]

_STATIC = ("sample", "group", "split", "label")


def _str(a: Any) -> np.ndarray:
    a = np.asarray(a)
    return a if a.dtype.kind == "U" else np.array([str(x) for x in a.tolist()], dtype=str)


def scores_dataset(result: Mapping[str, Any], *, extra_per_sample: Mapping[str, Any] | None = None,
                   extra_scores: Mapping[str, Any] | None = None, score_dtype: str = "float32",
                   target_chunk: int = 64, sample_chunk: int = 32768) -> xr.Dataset:
    """Build the Dataset described in the module docstring from ``analyze``'s return value.

    Parameters
    ----------
    result : mapping
        What :func:`analysis.output.report.analyze` returns: uses ``per_sample`` (DataFrame with ``sample``,
        ``group``, ``split``, ``label``, ``mem``, ``mem_se``, ``privacy_score`` and any more numeric
        columns), ``lira`` (:class:`analysis.attacks.lira.LiraResult`: ``targets``, ``samples``, ``member``,
        ``scores``) and ``summary`` (for attrs), when present.
    extra_per_sample : mapping name -> array (N,), optional
        More per-sample variables (same order as ``per_sample``'s rows), e.g. ``{"h2": ..., "msp": ...}``.
    extra_scores : mapping attack -> array (T, N_challenge), optional
        More attacks scored on the same targets and challenge samples as ``result["lira"]``.
    score_dtype : str
        dtype of ``score`` (default float32).
    target_chunk, sample_chunk : int
        Chunks of ``score``: (1 attack, targets, samples).

    Returns
    -------
    xarray.Dataset
        ``score`` is a lazy all-zero placeholder; :func:`write_scores` fills it on disk block by
        block (materialising (attack, target, sample) at once would double the analysis' memory).
    """
    ps: pd.DataFrame = result["per_sample"]
    sample = np.asarray(ps["sample"].values)
    n = sample.size
    ds = xr.Dataset(coords={"sample": ("sample", sample)})
    ds["label"] = ("sample", np.asarray(ps["label"].values, dtype=np.int64))
    ds["group"] = ("sample", _str(ps["group"].values))
    ds["split"] = ("sample", _str(ps["split"].values))
    ds["challenge"] = ("sample", ds["split"].values == "train")
    ds["under"] = ("sample", ds["group"].values == "under")
    for col in ps.columns:
        if col in _STATIC or not pd.api.types.is_numeric_dtype(ps[col]) and not pd.api.types.is_bool_dtype(ps[col]):
            continue
        ds[str(col)] = ("sample", np.asarray(ps[col].values))
    for name, v in (extra_per_sample or {}).items():
        v = np.asarray(v)
        if v.shape[:1] != (n,):
            raise ValueError(f"extra_per_sample[{name!r}]: expected length {n}, got shape {v.shape}")
        ds[str(name)] = (("sample",) + tuple(f"{name}_dim{i}" for i in range(1, v.ndim)), v)

    lira = result.get("lira")
    if lira is not None:
        pos = pd.Index(sample).get_indexer(np.asarray(lira.samples))
        if (pos < 0).any():
            raise ValueError("lira.samples holds sample ids not in per_sample")
        for a, s in (extra_scores or {}).items():
            if np.shape(s) != np.shape(lira.member):
                raise ValueError(f"extra_scores[{a!r}]: expected shape {np.shape(lira.member)}, got {np.shape(s)}")
        # names only: the arrays may live on disk (analysis.store_io.spill.SpilledScores) and are read one
        # at a time by _fill_scores
        attacks = list(dict.fromkeys([*lira.scores, *(extra_scores or {})]))
        t = np.asarray(lira.targets)
        # A lazy placeholder: write_scores fills it a block of targets at a time (see _fill_scores).
        tc = max(1, min(target_chunk, t.size))
        placeholder = da.zeros((len(attacks), t.size, n), chunks=(1, tc, min(sample_chunk, n)), dtype=score_dtype)
        member = np.zeros((t.size, n), dtype=bool)
        member[:, pos] = np.asarray(lira.member, dtype=bool)
        ds = ds.assign_coords(target=("target", t), attack=("attack", np.array(attacks, dtype=str)))
        ds["score"] = (("attack", "target", "sample"), placeholder)
        ds["member"] = (("target", "sample"), member)
        ds["score"].attrs["description"] = "attack score, higher = more likely a member; NaN off the challenge set"
    summary = result.get("summary", {}) or {}
    ds.attrs.update({"spec_hash": str(summary.get("spec_hash", "")), "store": str(summary.get("store", "")),
                     "n_shadows_done": int(summary.get("n_shadows_done", -1)), "score_dtype": str(score_dtype)})
    return ds


def _encoding(ds: xr.Dataset, target_chunk: int, sample_chunk: int) -> dict[str, dict[str, Any]]:
    enc: dict[str, dict[str, Any]] = {}
    for name, v in ds.data_vars.items():
        chunks = tuple(1 if d == "attack" else min(target_chunk, v.sizes[d]) if d == "target"
                       else min(sample_chunk, v.sizes[d]) if d == "sample" else v.sizes[d] for d in v.dims)
        enc[name] = {"chunks": chunks}
    if "score" in enc:
        from zarr.codecs import BloscCodec

        # attack scores are noisy floats: zstd gains ~2% over byte-shuffled lz4 at twice the time
        # (measured on 2000 x 20,000 float32 scores: 0.84 s / 152 MB vs 0.45 s / 155 MB per attack)
        enc["score"]["compressors"] = (BloscCodec(cname="lz4", clevel=1, shuffle="shuffle"),)
    return enc


def _fill_scores(path: Path, result: Mapping[str, Any], extra_scores: Mapping[str, Any] | None, attacks: list[str],
                 n: int, sample: np.ndarray, dtype: str, tc: int, threads: int = 1) -> None:
    """Write ``score`` one (attack, block of ``tc`` targets) at a time: NaN off the challenge set."""
    import zarr

    lira = result["lira"]
    scores = ChainMap(dict(extra_scores or {}), lira.scores)  # lazy: one attack's array at a time
    pos = pd.Index(sample).get_indexer(np.asarray(lira.samples))
    arr = zarr.open_group(str(path), mode="r+")["score"]
    t = np.shape(lira.member)[0]
    for i, a in enumerate(attacks):
        src = scores[a]

        def put(t0: int) -> None:
            t1 = min(t0 + tc, t)
            block = np.full((1, t1 - t0, n), np.nan, dtype=dtype)
            block[0][:, pos] = src[t0:t1]
            arr[i:i + 1, t0:t1, :] = block

        # blocks of targets are separate chunks: the analysis' threads compress and write them
        thread_map(put, range(0, t, tc), threads)


def write_scores(out: str | Path, result: Mapping[str, Any], *, extra_per_sample: Mapping[str, Any] | None = None,
                 extra_scores: Mapping[str, Any] | None = None, score_dtype: str = "float32",
                 target_chunk: int = 64, sample_chunk: int = 32768, threads: int = 1) -> Path:
    """Write ``out/scores.zarr`` atomically from ``analyze``'s ``result``; return its path.

    See :func:`scores_dataset` for the parameters; chunks are (1 attack, ``target_chunk`` targets,
    ``sample_chunk`` samples), about 8 MB of float32 each, compressed and written on ``threads``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ds = scores_dataset(result, extra_per_sample=extra_per_sample, extra_scores=extra_scores,
                        score_dtype=score_dtype, target_chunk=target_chunk, sample_chunk=sample_chunk)
    final = out / "scores.zarr"
    tmp = out / f".scores.zarr.tmp-{os.getpid()}"
    old = out / f".scores.zarr.old-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
            warnings.filterwarnings("ignore", message=".*(fixed_length_utf32|FixedLengthUTF32|not part of the Zarr).*")
            # compute=False: metadata and the small variables now; the placeholder is never computed
            ds.to_zarr(tmp, mode="w", consolidated=True, encoding=_encoding(ds, target_chunk, sample_chunk),
                       compute=False)
        if "score" in ds:
            _fill_scores(tmp, result, extra_scores, list(ds["attack"].values), ds.sizes["sample"],
                         np.asarray(ds["sample"].values), score_dtype, max(1, min(target_chunk, ds.sizes["target"])),
                         threads)
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return final


class StoredScores(_Mapping):
    """``attack -> (T, N_challenge) float32`` scores read from a written ``scores.zarr``.

    What :func:`analysis.output.report.analyze` returns as ``lira.scores``: the arrays are not held in
    memory after the analysis; each access reads one attack (the challenge samples' columns, in
    the order of ``samples``) from the store, bit for bit what the analysis computed when
    ``score_dtype`` is float32 (the analysis' own precision).
    """

    def __init__(self, path: str | Path, samples: np.ndarray) -> None:
        import zarr

        self.path = Path(path)
        grp = zarr.open_group(str(self.path), mode="r")
        self._attacks = [str(a) for a in np.asarray(grp["attack"][:]).tolist()]
        self._pos = pd.Index(np.asarray(grp["sample"][:])).get_indexer(np.asarray(samples))
        if (self._pos < 0).any():
            raise ValueError(f"{self.path}: some challenge samples are not in the store")

    def __getitem__(self, attack: str) -> np.ndarray:
        import zarr

        if attack not in self._attacks:
            raise KeyError(attack)
        arr = zarr.open_group(str(self.path), mode="r")["score"]
        return np.asarray(arr[self._attacks.index(attack)])[:, self._pos]

    def __iter__(self):
        return iter(list(self._attacks))

    def __len__(self) -> int:
        return len(self._attacks)

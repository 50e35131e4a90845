"""The shadow store: the one contract between training (``mia_hpc``) and analysis (``analysis``).

A store is a Zarr v3 directory that ``xarray.open_zarr`` reads as one Dataset. This module defines
its schema, creates it (preallocating every array, writing everything known before training), and
gives workers the only write they may do: one shadow's outputs, then its ``done`` flag.

Schema (dims ``shadow, sample, query, class, subset, channel, height, width``):

=================  ==================================  =========================================
variable           dims                                written
=================  ==================================  =========================================
image              sample, channel, height, width      at creation (float32 in [0, 1])
label              sample                              at creation (int16)
group              sample                              at creation ("over" / "under")
split              sample                              at creation ("train" = pool, "test")
source             sample                              at creation (index in the source dataset)
dataset            sample                              at creation (e.g. "digits", "augdigits")
keep               shadow, sample                      at creation (bool; test samples never IN)
query_dx/dy        query                               at creation (pixel shifts of each query)
query_mirror       query                               at creation
logits             shadow, sample, query, class        by the shadow's worker (float32)
accuracy           shadow, subset                      by the shadow's worker (float32)
train_loss         shadow                              by the shadow's worker (float32)
finished_at        shadow                              by the worker: unix time the shadow was written
digest             shadow                              by the worker: crc32c of the shadow's outputs
features           sample, feature                     by shadow 0's worker: its penultimate layer
done               shadow                              by the worker, last, after an fsync
=================  ==================================  =========================================

Per-shadow arrays are chunked one shadow per chunk along ``shadow`` so that each writer owns whole
chunks: concurrent workers never touch the same file. Every chunk carries a crc32c checksum; that
finds a damaged chunk but not a deleted one (it reads as the fill value) nor one moved to another
shadow's place, so each shadow's outputs also get a ``digest`` bound to its index
(:func:`shadow_digest`), and the arrays written at creation a digest each in the root attr
``digests`` (:func:`array_digest`); ``mia_hpc.contract.verify`` checks both.
Root attrs: ``schema_version``, ``spec`` (normalized, JSON), ``spec_hash``, ``created``, ``digests``,
``versions`` (package versions of the creator), and for DP-SGD specs ``dp`` (epsilon, delta,
sample rate, steps, accountant: the guarantee every shadow's training has).

This module must not import torch.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shutil
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping

import crc32c
import numpy as np
import zarr
from zarr.codecs import BytesCodec, Crc32cCodec, VLenUTF8Codec, ZstdCodec

from mia_hpc.contract.faults import kill_point
from mia_hpc.contract.spec import Spec, spec_from_dict

SCHEMA_VERSION = 1
SUBSETS = ("train/over", "train/under", "test/over", "test/under")
PER_SHADOW = ("logits", "accuracy", "train_loss", "finished_at", "digest", "done")
NO_DIGEST = -1  # the digest array's fill value: the shadow's outputs were never written


class StoreError(RuntimeError):
    """A store is missing, foreign, or does not match the spec it is used with."""


@dataclass(frozen=True)
class StaticData:
    """Everything known about the samples before any training (the data side's output)."""

    image: np.ndarray  # (N, C, H, W) float32 in [0, 1]
    label: np.ndarray  # (N,) int
    group: np.ndarray  # (N,) str: "over" | "under"
    split: np.ndarray  # (N,) str: "train" | "test"
    source: np.ndarray  # (N,) int
    dataset: np.ndarray  # (N,) str
    n_classes: int

    def __post_init__(self) -> None:
        n = len(self.label)
        for name in ("image", "group", "split", "source", "dataset"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"StaticData.{name}: length {len(getattr(self, name))} != {n} labels")


def _codecs(dtype: Any) -> dict[str, Any]:
    """Zstd plus a crc32c checksum on every chunk, so a corrupted chunk fails loudly on read."""
    serializer = VLenUTF8Codec() if dtype is str else BytesCodec()
    return {"serializer": serializer, "compressors": [ZstdCodec(level=1), Crc32cCodec()]}


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("mia-hpc", "numpy", "zarr", "xarray", "dask", "torch", "submitit"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def create_store(path: str | Path, spec_dict: Mapping[str, Any], spec_hash: str, data: StaticData,
                 keep: np.ndarray, queries: list[tuple[str, int, int, bool]], sample_chunk: int,
                 n_features: int = 0, extra_attrs: Mapping[str, Any] | None = None) -> None:
    """Create a store at ``path`` with every array allocated and the static parts written.

    The store is built in a sibling temporary directory and renamed into place at the end, so a
    crash during creation never leaves a half-made store at ``path``.
    """
    path = Path(path)
    if path.exists():
        raise StoreError(f"{path}: already exists; open it instead of creating it")
    tmp = path.with_name(f".{path.name}.creating-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        _write_new(tmp, spec_dict, spec_hash, data, keep, queries, sample_chunk, n_features, extra_attrs or {})
        tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_new(path: Path, spec_dict: Mapping[str, Any], spec_hash: str, data: StaticData,
               keep: np.ndarray, queries: list[tuple[str, int, int, bool]], sample_chunk: int,
               n_features: int, extra_attrs: Mapping[str, Any]) -> None:
    n = len(data.label)
    m = keep.shape[0]
    if keep.shape != (m, n):
        raise ValueError(f"keep: shape {keep.shape} does not match {n} samples")
    q = len(queries)
    c = data.n_classes
    chunk_n = min(n, sample_chunk)
    root = zarr.open_group(path, mode="w", zarr_format=3)
    digests: dict[str, str] = {}
    root.attrs.update({
        "schema_version": SCHEMA_VERSION,
        "spec": json.dumps(dict(spec_dict), sort_keys=True),
        "spec_hash": spec_hash,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": _versions(),
        "n_classes": c,
        **extra_attrs,
    })

    def arr(name: str, values: np.ndarray | None, dims: list[str], *, shape=None, chunks=None,
            dtype=None, fill=None) -> None:
        if values is not None:
            values = np.asarray(values)
            # variable-length strings: zarr's fixed-width unicode has no v3 specification yet
            shape, dtype = values.shape, (str if values.dtype.kind == "U" else values.dtype)
        a = root.create_array(name, shape=shape, chunks=chunks or shape, dtype=dtype, fill_value=fill,
                              dimension_names=dims, **_codecs(dtype))
        if values is not None:
            a[...] = values
            digests[name] = array_digest(values)

    # coordinates
    arr("shadow", np.arange(m, dtype=np.int32), ["shadow"])
    arr("sample", np.arange(n, dtype=np.int64), ["sample"])
    arr("query", np.array([qq[0] for qq in queries], dtype=str), ["query"])
    arr("class", np.arange(c, dtype=np.int16), ["class"])
    arr("subset", np.array(SUBSETS, dtype=str), ["subset"])
    # static per-sample data
    arr("image", data.image.astype(np.float32), ["sample", "channel", "height", "width"],
        chunks=(chunk_n, *data.image.shape[1:]))
    arr("label", data.label.astype(np.int16), ["sample"])
    arr("group", data.group.astype(str), ["sample"])
    arr("split", data.split.astype(str), ["sample"])
    arr("source", data.source.astype(np.int32), ["sample"])
    arr("dataset", data.dataset.astype(str), ["sample"])
    arr("keep", keep.astype(bool), ["shadow", "sample"], chunks=(min(m, 256), chunk_n))
    arr("query_dx", np.array([qq[1] for qq in queries], dtype=np.int8), ["query"])
    arr("query_dy", np.array([qq[2] for qq in queries], dtype=np.int8), ["query"])
    arr("query_mirror", np.array([qq[3] for qq in queries], dtype=bool), ["query"])
    # per-shadow outputs, one shadow per chunk
    arr("logits", None, ["shadow", "sample", "query", "class"], shape=(m, n, q, c),
        chunks=(1, chunk_n, q, c), dtype=np.float32, fill=np.nan)
    arr("accuracy", None, ["shadow", "subset"], shape=(m, len(SUBSETS)), chunks=(1, len(SUBSETS)),
        dtype=np.float32, fill=np.nan)
    arr("train_loss", None, ["shadow"], shape=(m,), chunks=(1,), dtype=np.float32, fill=np.nan)
    arr("finished_at", None, ["shadow"], shape=(m,), chunks=(1,), dtype=np.float64, fill=np.nan)
    arr("digest", None, ["shadow"], shape=(m,), chunks=(1,), dtype=np.int64, fill=NO_DIGEST)
    arr("done", None, ["shadow"], shape=(m,), chunks=(1,), dtype=bool, fill=False)
    if n_features:
        arr("features", None, ["sample", "feature"], shape=(n, n_features), chunks=(chunk_n, n_features),
            dtype=np.float32, fill=np.nan)
    root.attrs["digests"] = digests
    zarr.consolidate_metadata(path)
    _fsync_tree(path)


def open_store(path: str | Path) -> zarr.Group:
    """Open an existing store for reading and per-shadow writing; refuse anything else."""
    path = Path(path)
    if not (path / "zarr.json").is_file():
        raise StoreError(f"{path}: not a mia-hpc store (no zarr.json); create it with 'mia-hpc run SPEC --out DIR'")
    read_root_metadata(path)
    try:
        root = zarr.open_group(path, mode="r+", zarr_format=3, use_consolidated=False)
    except (ValueError, KeyError, TypeError) as err:  # zarr's own reading of a damaged zarr.json
        raise StoreError(f"{path / 'zarr.json'}: not a valid Zarr v3 group ({_first_line(err)}); "
                         "the store's metadata is damaged, re-create the store (new --out) from its spec") from None
    if root.attrs.get("schema_version") != SCHEMA_VERSION:
        raise StoreError(f"{path}: schema_version {root.attrs.get('schema_version')!r} is not "
                         f"{SCHEMA_VERSION}; re-create the store with this version of mia-hpc")
    return root


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:200]


def read_root_metadata(path: str | Path) -> dict[str, Any]:
    """The store's root ``zarr.json`` as a dict; :class:`StoreError` naming the file when it is not
    readable JSON of a Zarr v3 group (zarr itself raises a bare ``JSONDecodeError`` from deep inside)."""
    meta = Path(path) / "zarr.json"
    if not meta.is_file():
        raise StoreError(f"{Path(path)}: not a mia-hpc store (no zarr.json); create it with "
                         "'mia-hpc run SPEC --out DIR'")
    damaged = "the store's metadata is damaged, re-create the store (new --out) from its spec"
    try:
        doc = json.loads(meta.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise StoreError(f"{meta}: not valid JSON ({_first_line(err)}); {damaged}") from None
    if not isinstance(doc, dict) or doc.get("zarr_format") != 3 or doc.get("node_type") != "group":
        raise StoreError(f"{meta}: not the metadata of a Zarr v3 group; {damaged}")
    return doc


def store_spec(root: zarr.Group) -> dict[str, Any]:
    """The normalized spec the store was created from."""
    try:
        spec = json.loads(root.attrs["spec"])
    except (KeyError, TypeError, json.JSONDecodeError):
        spec = None
    if not isinstance(spec, dict):
        raise StoreError(f"{Path(str(root.store.root))}: the root attr 'spec' is missing or not JSON; the store's metadata is "
                         "damaged, re-create the store (new --out) from its spec")
    return spec


def spec_of(root: zarr.Group) -> Spec:
    """The validated spec a store was made from."""
    return spec_from_dict(store_spec(root))


def array_digest(values: np.ndarray) -> str:
    """crc32c of an array's values (hex), the same for the array written and the array read back."""
    a = np.asarray(values)
    if a.dtype.kind in "OUT" or a.dtype.kind not in "biufc":  # strings: numpy's or zarr's StringDType
        data = "\0".join(map(str, a.ravel().tolist())).encode()
    else:
        data = np.ascontiguousarray(a).tobytes()
    return f"{crc32c.crc32c(data):08x}"


def shadow_digest(shadow: int, logits: np.ndarray, accuracy: np.ndarray, train_loss: float,
                  finished_at: float) -> int:
    """crc32c of one shadow's outputs and its index, so a chunk moved to another shadow's place fails.

    The logits come last, so that a reader streaming them can start from :func:`shadow_digest_prefix`.
    """
    prefix = shadow_digest_prefix(shadow, accuracy, train_loss, finished_at)
    return crc32c.crc32c(np.ascontiguousarray(logits, dtype=np.float32).tobytes(), prefix)


def shadow_digest_prefix(shadow: int, accuracy: np.ndarray, train_loss: float, finished_at: float) -> int:
    """The running crc32c of a shadow's digest before its logits (see :func:`shadow_digest`)."""
    head = (np.int64(shadow).tobytes() + np.ascontiguousarray(accuracy, dtype=np.float32).tobytes()
            + np.float32(train_loss).tobytes() + np.float64(finished_at).tobytes())
    return crc32c.crc32c(head)


def check_spec_matches(root: zarr.Group, spec_hash: str, path: str | Path) -> None:
    """Refuse to continue a store with a spec other than the one that made it."""
    have = root.attrs.get("spec_hash")
    if have != spec_hash:
        raise StoreError(f"{path}: was made from a different spec (hash {have}, this spec {spec_hash}); "
                         "use a new --out directory or the original spec")


def read_strings(root: zarr.Group, name: str) -> np.ndarray:
    """A string array as fixed-width numpy unicode (zarr returns variable-width StringDType)."""
    return np.array(root[name][...].tolist(), dtype=str)


def done_mask(root: zarr.Group) -> np.ndarray:
    """(M,) bool: which shadows are completely and durably written."""
    try:
        return np.asarray(root["done"][...], dtype=bool)
    except ValueError as err:  # zarr's checksum and decode failures
        path = Path(str(root.store.root))
        raise StoreError(f"{path}: the done flags do not decode ({_first_line(err)}); run 'mia-hpc status "
                         f"{path} --verify --reset-broken' to find and reset the damaged ones") from None


def write_shadow(root: zarr.Group, shadow: int, logits: np.ndarray, accuracy: np.ndarray,
                 train_loss: float, features: np.ndarray | None = None) -> None:
    """Write one shadow's outputs, make them durable, then (and only then) mark it done.

    A writer killed anywhere before the last line leaves ``done[shadow] == False``, so the shadow
    is simply redone on the next run; partially written chunks are overwritten.
    """
    logits, accuracy, finished_at = np.asarray(logits, np.float32), np.asarray(accuracy, np.float32), time.time()
    # every chunk of a done shadow exists on disk, even one equal to the fill value (an imported
    # shadow's NaN train_loss): a missing chunk of a done shadow then always means a deleted one
    with zarr.config.set({"array.write_empty_chunks": True}):
        kill_point("write:logits", shadow)
        root["logits"][shadow] = logits
        kill_point("write:accuracy", shadow)
        root["accuracy"][shadow] = accuracy
        kill_point("write:train_loss", shadow)
        root["train_loss"][shadow] = np.float32(train_loss)
        kill_point("write:finished_at", shadow)
        root["finished_at"][shadow] = finished_at
        written = ["logits", "accuracy", "train_loss", "finished_at"]
        if "digest" in root:  # stores made before digests existed have none
            root["digest"][shadow] = shadow_digest(shadow, logits, accuracy, train_loss, finished_at)
            written.append("digest")
    base = Path(str(root.store.root))
    for name in written:
        _fsync_tree(base / name / "c" / str(shadow))
    if features is not None and "features" in root:
        kill_point("write:features", shadow)
        root["features"][...] = np.asarray(features, dtype=np.float32)
        _fsync_tree(base / "features" / "c")
    kill_point("write:done", shadow)
    root["done"][shadow] = True
    _fsync_tree(base / "done" / "c" / str(shadow))
    kill_point("done", shadow)


def _fsync_tree(path: Path) -> None:
    """fsync every file under ``path`` (or ``path`` itself), then its directories."""
    if not path.exists():
        return
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    dirs = {path.parent} | ({path} if path.is_dir() else set()) | {p.parent for p in files}
    for p in [*files, *dirs]:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

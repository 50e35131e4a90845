"""Verify a store against everything it records about itself, and reset what is broken.

Every chunk is written with a crc32c codec (``mia_hpc.contract.store``), so a flipped byte fails on read.
That alone misses what disks and people do most: a deleted chunk reads as the fill value, a chunk
moved to another shadow's place or copied from another store decodes fine, an edited ``zarr.json``
changes how every chunk is read. ``verify_store`` therefore checks, in this order:

1. each array's ``zarr.json`` parses and equals its copy in the root's consolidated metadata, and
   the dimension sizes agree between arrays and with the spec's shadow count;
2. every chunk on disk decodes (crc32c, zstd);
3. every chunk of a ``done`` shadow's outputs exists;
4. each ``done`` shadow's outputs match its ``digest`` (:func:`mia_hpc.contract.store.shadow_digest`) and
   its logits are finite (a diverged shadow), and the arrays written at creation match the
   digests recorded then (root attr ``digests``).

Each finding names the shadow and shard to redo, or says the store must be re-created (damage to
what was written at creation cannot be repaired by training). ``reset_shadows`` clears those
shadows' ``done`` flags so that the next run (or re-submit) redoes exactly them. Torch-free.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from tqdm.auto import tqdm

from mia_hpc.contract.shards import shard_shadows
from mia_hpc.contract.store import (NO_DIGEST, PER_SHADOW, StoreError, array_digest, open_store, read_root_metadata,
                           shadow_digest, store_spec)

#: the arrays every store has (``features`` and ``digest`` only some)
REQUIRED = ("shadow", "sample", "query", "class", "subset", "image", "label", "group", "split", "source",
            "dataset", "keep", "query_dx", "query_dy", "query_mirror", "logits", "accuracy", "train_loss",
            "finished_at", "done")
RECREATE = "re-create the store (new --out) from its spec; a re-run cannot repair it"

#: what each kind of finding is called in ``mia-hpc status --verify``
LABELS = {"decode": "broken chunk", "missing": "missing chunk", "digest": "wrong contents",
          "nonfinite": "diverged shadow", "metadata": "damaged metadata"}


@dataclass(frozen=True)
class BrokenChunk:
    """One finding: a chunk, an array or a shadow whose stored data cannot be trusted."""

    array: str
    key: str  # what is damaged, inside the store: a chunk ("logits/c/3/0/0/0"), a zarr.json or an array
    shadow: int | None  # None for what was written at creation (not per shadow)
    shard: int | None
    error: str
    kind: str = "decode"  # a key of LABELS

    @property
    def label(self) -> str:
        return LABELS[self.kind]

    def line(self, store: str | Path) -> str:
        if self.shadow is None:
            return f"{self.key}: {self.error}; this was written when the store was created, {RECREATE}"
        return (f"{self.key}: {self.error}; shadow {self.shadow} of shard {self.shard}: run "
                f"'mia-hpc status {store} --verify --reset-broken', then re-run shard {self.shard}")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    msg = text.splitlines()[0] if text else type(err).__name__
    return "crc32c checksum mismatch" if "checksum" in msg.lower() else msg[:200]


def _shard_of(m: int, n_shards: int) -> np.ndarray:
    shard_of = np.zeros(m, dtype=int)
    for i in range(n_shards):
        shard_of[list(shard_shadows(m, n_shards, i))] = i
    return shard_of


def _spec_counts(root: zarr.Group, path: Path) -> tuple[int, int]:
    spec = store_spec(root)
    try:
        m, n_shards = int(spec["shadows"]["count"]), int(spec["shadows"]["shards"])
    except (KeyError, TypeError, ValueError):
        raise StoreError(f"{path}: the root attr 'spec' has no shadows.count/shards; {RECREATE}") from None
    if m < 1 or not 1 <= n_shards:
        raise StoreError(f"{path}: the root attr 'spec' has shadows.count {m}, shards {n_shards}; {RECREATE}")
    return m, n_shards


def _check_spec_hash(root: zarr.Group) -> list[BrokenChunk]:
    """The root attr ``spec`` against ``spec_hash``: an edited spec would otherwise pass for the original."""
    from mia_hpc.contract.spec import SpecError, spec_from_dict

    try:
        have = spec_from_dict(store_spec(root)).hash()
    except SpecError as err:
        return [BrokenChunk("zarr.json", "zarr.json", None, None, f"the root attr 'spec' is not a valid spec ({err})",
                            "metadata")]
    if have != root.attrs.get("spec_hash"):
        return [BrokenChunk("zarr.json", "zarr.json", None, None, f"the root attr 'spec' hashes to {have}, not to the "
                            f"recorded spec_hash {root.attrs.get('spec_hash')!r} (edited after creation)", "metadata")]
    return []


def check_metadata(path: str | Path) -> tuple[dict[str, zarr.Array], list[BrokenChunk]]:
    """Open every array whose metadata is intact; name every array whose metadata is not.

    Returns the readable arrays by name and the findings (kind ``metadata``). Raises
    :class:`StoreError` when the root itself is unreadable (nothing else can be judged then).
    """
    path = Path(path)
    doc = read_root_metadata(path)
    root = open_store(path)
    m, _ = _spec_counts(root, path)
    consolidated: dict[str, Any] = (doc.get("consolidated_metadata") or {}).get("metadata") or {}
    names = sorted(set(REQUIRED) | set(consolidated) | {p.parent.name for p in path.glob("*/zarr.json")})
    arrays: dict[str, zarr.Array] = {}
    found: list[BrokenChunk] = _check_spec_hash(root)

    def bad(name: str, key: str, error: str) -> None:
        found.append(BrokenChunk(name, key, None, None, error, "metadata"))

    for name in names:
        meta = path / name / "zarr.json"
        if not meta.is_file():
            bad(name, f"{name}/zarr.json", "missing (the array was deleted)")
            continue
        try:
            own = json.loads(meta.read_bytes())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            bad(name, f"{name}/zarr.json", f"not valid JSON ({_first_line(err)})")
            continue
        if name in consolidated and own != consolidated[name]:
            bad(name, f"{name}/zarr.json", "differs from its copy in the root zarr.json (edited after creation)")
            continue
        try:
            arr = zarr.open_array(store=str(path / name), mode="r+", zarr_format=3)
        except Exception as err:  # zarr raises many types for metadata it cannot use
            bad(name, f"{name}/zarr.json", f"not valid array metadata ({_first_line(err)})")
            continue
        arrays[name] = arr
    # dimension sizes must agree between arrays, and the shadow dimension with the spec
    sizes: dict[str, tuple[int, str]] = {"shadow": (m, "the spec's shadows.count")}
    for name in sorted(arrays, key=lambda n: (n not in REQUIRED, n)):
        arr = arrays[name]
        dims = arr.metadata.dimension_names or ()
        for dim, size in zip(dims, arr.shape):
            if dim is None:
                continue
            have = sizes.setdefault(dim, (int(size), f"array {name}"))
            if have[0] != size:
                bad(name, f"{name}/zarr.json", f"dimension {dim} has size {size}, {have[1]} says {have[0]}")
                del arrays[name]
                break
    return arrays, found


def _done_flags(arr: zarr.Array | None) -> np.ndarray:
    """The done flags, a chunk at a time; a chunk that does not decode counts as not done."""
    if arr is None:
        return np.zeros(0, dtype=bool)
    try:
        return np.asarray(arr[...], dtype=bool)
    except Exception:  # one chunk at a time below
        pass
    done = np.zeros(arr.shape[0], dtype=bool)
    step = arr.chunks[0]
    for i in range(arr.cdata_shape[0]):
        try:
            done[i * step:(i + 1) * step] = np.asarray(arr.get_block_selection((i,)), dtype=bool)
        except Exception:  # named by the chunk pass
            pass
    return done


def verify_store(path: str | Path, *, progress: bool = True) -> list[BrokenChunk]:
    """Check a store's metadata, chunks, done shadows' completeness and digests; return the findings."""
    path = Path(path)
    arrays, found = check_metadata(path)
    root = open_store(path)
    m, n_shards = _spec_counts(root, path)
    shard_of = _shard_of(m, n_shards)
    done = _done_flags(arrays.get("done"))
    if done.size != m:
        done = np.zeros(m, dtype=bool)
    bad_shadows: set[int] = set()
    missing: dict[int, list[str]] = {}  # done shadow -> its chunks not on disk
    values: dict[str, np.ndarray] = {}  # arrays read whole (all but the largest), for the digest checks
    total = sum(int(np.prod(a.cdata_shape)) for a in arrays.values())
    with tqdm(total=total, desc="verify chunks", disable=not progress, unit="chunk") as bar:
        for name, arr in arrays.items():
            dims = arr.metadata.dimension_names or (None,)
            per_shadow = dims[0] == "shadow" and arr.chunks[0] == 1 and name in PER_SHADOW
            whole = False
            if int(np.prod(arr.shape)) * arr.dtype.itemsize <= 64 << 20:
                try:  # one read of all the chunks; one at a time only to find the bad one
                    values[name] = np.asarray(arr[...])
                    whole = True
                except Exception:
                    pass
            for idx in itertools.product(*(range(c) for c in arr.cdata_shape)):
                bar.update()
                key = f"{name}/c/" + "/".join(map(str, idx))
                shadow = int(idx[0]) if per_shadow else None
                shard = None if shadow is None else int(shard_of[shadow])
                if not (path / key).is_file():
                    # never written reads as the fill value: what done=False means, but a done
                    # shadow's outputs were all written (the done flag is written last); judged
                    # with its digest below (stores written before every chunk was kept lack
                    # the chunks that held only the fill value)
                    if shadow is not None and done[shadow] and name != "done":
                        missing.setdefault(shadow, []).append(key)
                    continue
                if whole:
                    continue
                try:
                    arr.get_block_selection(idx)
                except Exception as err:  # zarr raises ValueError for checksum and decode failures
                    found.append(BrokenChunk(name, key, shadow, shard, _first_line(err)))
                    if shadow is not None:
                        bad_shadows.add(shadow)
    damaged = {b.array for b in found}
    found += _check_static_digests(root, arrays, damaged, values)
    found += _check_shadows(arrays, np.flatnonzero(done), bad_shadows, shard_of, values, missing)
    return found


def _check_static_digests(root: zarr.Group, arrays: dict[str, zarr.Array], damaged: set[str],
                          values: dict[str, np.ndarray]) -> list[BrokenChunk]:
    """The arrays written at creation against the digests recorded then (stores made since digests exist)."""
    digests = root.attrs.get("digests")
    out: list[BrokenChunk] = []
    if not isinstance(digests, dict):
        return out
    for name, want in sorted(digests.items()):
        if name in damaged or name not in arrays:
            continue  # already named
        try:
            have = array_digest(values[name] if name in values else arrays[name][...])
        except Exception as err:
            have = f"unreadable ({_first_line(err)})"
        if have != want:
            out.append(BrokenChunk(name, name, None, None, "contents differ from the digest recorded at creation "
                                   "(a chunk deleted, moved or copied from another store)", "digest"))
    return out


def _check_shadows(arrays: dict[str, zarr.Array], done: np.ndarray, skip: set[int], shard_of: np.ndarray,
                   values: dict[str, np.ndarray], missing: dict[int, list[str]]) -> list[BrokenChunk]:
    """Each done shadow's outputs against its digest, its missing chunks, its logits for non-finite values.

    A missing chunk is named when the shadow's digest fails (or is itself missing): where the
    digest still matches, the chunk held only the fill value (stores written before every chunk
    of a done shadow was kept). Without digests, a missing chunk is named unless it is
    ``train_loss`` (NaN, the fill value, for imported shadows).
    """
    need = ("logits", "accuracy", "train_loss", "finished_at")
    if any(n not in arrays for n in need):
        return []  # named by the metadata check
    out: list[BrokenChunk] = []
    dig = arrays.get("digest")

    def row(name: str, s: int) -> np.ndarray:
        return values[name][s] if name in values else np.asarray(arrays[name][s])

    def name_missing(s: int, keys: list[str]) -> None:
        for key in keys:
            out.append(BrokenChunk(key.split("/")[0], key, s, int(shard_of[s]),
                                   "missing, but the shadow is marked done (deleted?)", "missing"))

    for s in (int(s) for s in done if int(s) not in skip):
        gone = missing.get(s, [])
        if dig is None and any(not k.startswith("train_loss/") for k in gone):
            name_missing(s, gone)
            continue
        if dig is not None and f"digest/c/{s}" in gone:
            name_missing(s, gone)
            continue
        try:
            z = np.asarray(row("logits", s), dtype=np.float32)
            acc = np.asarray(row("accuracy", s), dtype=np.float32)
            loss, t = row("train_loss", s), row("finished_at", s)
            want = None if dig is None else int(row("digest", s))
        except Exception:  # a chunk that does not decode: named by the chunk pass
            continue
        shard = int(shard_of[s])
        if want is not None:
            if want == NO_DIGEST:
                out.append(BrokenChunk("digest", f"digest/c/{s}", s, shard,
                                       "no digest, but the shadow is marked done (done set by hand?)", "digest"))
                continue
            if shadow_digest(s, z, acc, float(loss), float(t)) != want:
                if gone:
                    name_missing(s, gone)
                    continue
                out.append(BrokenChunk("logits", f"shadow {s}", s, shard, "outputs do not match the shadow's "
                                       "digest (a chunk moved from another shadow or copied from another store)",
                                       "digest"))
                continue
        bad = int(z.size - np.isfinite(z).sum())
        if bad:
            out.append(BrokenChunk("logits", f"logits of shadow {s}", s, shard,
                                   f"{bad} of {z.size} values are not finite (the shadow diverged)", "nonfinite"))
    return out


def reset_shadows(path: str | Path, shadows: list[int]) -> None:
    """Mark shadows not done, so that the next run retrains them (their chunks are overwritten)."""
    root: zarr.Group = open_store(path)
    for s in sorted(set(shadows)):
        root["done"][s] = False

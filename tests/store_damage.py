"""Damage a real store on disk the ways disks and people do; shared by the store-fault tests, the
store fuzzer and ``scripts/store_fault_report.py`` (the figures of docs/reliability.md).

Each damage function changes files under a store and returns a :class:`Damage` saying what it did
and whether the store now *reads* differently (a deleted chunk that held only the fill value, or two
swapped chunks with equal bytes, change nothing a reader sees: that is no damage to name).
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: a tiny real store: 4 shadows, 2 shards, 20 + 10 samples, one sample chunk
SYNTH_ARGS = ["--shadows", "4", "--samples", "20", "--under-fraction", "0.5", "--test-samples", "10", "--sample-chunk", "16", "--classes", "3"]


def cli_command() -> list[str]:
    """The installed ``mia-hpc`` console script (as a user runs it), else the module."""
    script = Path(sys.executable).parent / "mia-hpc"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "mia_hpc.cli"]


def mia_hpc(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """The real CLI in a subprocess."""
    return subprocess.run([*cli_command(), *args], capture_output=True, text=True, timeout=timeout)


def make_synth_store(path: Path, seed: int = 0) -> Path:
    """A small real store made and filled by ``mia-hpc synth-store`` (every shadow done, with digests)."""
    res = mia_hpc("synth-store", "--out", str(path), *SYNTH_ARGS, "--seed", str(seed))
    assert res.returncode == 0, res.stderr
    return path


@dataclass(frozen=True)
class Damage:
    """What was done to a store."""

    kind: str
    target: str  # the file or array touched, relative to the store
    changes_reads: bool  # False: the store reads exactly as before (nothing to name)
    shadow: int | None = None  # the shadow whose outputs were hit, if any


def copy_store(src: Path, dst: Path) -> Path:
    """A fresh copy of a store to damage (the original stays pristine for the next case)."""
    shutil.copytree(src, dst)
    return dst


def chunk_files(store: Path) -> list[Path]:
    """Every chunk file of a store, sorted (the metadata files are not chunks)."""
    return sorted(p for p in store.rglob("*") if p.is_file() and "c" in p.relative_to(store).parts[1:2])


def _shadow_of(store: Path, chunk: Path) -> int | None:
    parts = chunk.relative_to(store).parts
    meta = json.loads((store / parts[0] / "zarr.json").read_text())
    dims = meta.get("dimension_names") or [None]
    per_shadow = dims[0] == "shadow" and meta["chunk_grid"]["configuration"]["chunk_shape"][0] == 1
    return int(parts[2]) if per_shadow and parts[0] not in ("shadow", "keep") else None


def _reads_as_fill(store: Path, chunk: Path) -> bool:
    """Whether a chunk decodes to nothing but its array's fill value (deleting it changes no read)."""
    import zarr

    parts = chunk.relative_to(store).parts
    arr = zarr.open_array(store=str(store / parts[0]), mode="r", zarr_format=3)
    block = np.asarray(arr.get_block_selection(tuple(int(i) for i in parts[2:])))
    fill = arr.fill_value
    if block.dtype.kind in "fc" and fill is not None and np.isnan(fill):
        return bool(np.isnan(block).all())
    return bool((block == fill).all()) if block.dtype.kind != "T" else all(str(v) == str(fill) for v in block.ravel())


def delete_chunk(store: Path, rng: random.Random) -> Damage:
    chunk = rng.choice(chunk_files(store))
    rel = str(chunk.relative_to(store))
    benign = _reads_as_fill(store, chunk)
    chunk.unlink()
    return Damage("delete chunk", rel, not benign, _shadow_of(store, chunk))


def truncate_chunk(store: Path, rng: random.Random) -> Damage:
    chunk = rng.choice(chunk_files(store))
    data = chunk.read_bytes()
    chunk.write_bytes(data[:rng.randrange(len(data))])
    return Damage("truncate chunk", str(chunk.relative_to(store)), True, _shadow_of(store, chunk))


def zero_chunk(store: Path, rng: random.Random) -> Damage:
    chunk = rng.choice(chunk_files(store))
    chunk.write_bytes(bytes(len(chunk.read_bytes())))
    return Damage("zero-fill chunk", str(chunk.relative_to(store)), True, _shadow_of(store, chunk))


def flip_byte(store: Path, rng: random.Random) -> Damage:
    chunk = rng.choice(chunk_files(store))
    data = bytearray(chunk.read_bytes())
    data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    chunk.write_bytes(bytes(data))
    return Damage("flip a bit", str(chunk.relative_to(store)), True, _shadow_of(store, chunk))


def swap_chunks(store: Path, rng: random.Random) -> Damage:
    """Two chunks of one per-shadow array trade places (a copy script with its indices wrong)."""
    array = rng.choice(["logits", "accuracy", "train_loss", "finished_at", "digest", "done"])
    files = [p for p in chunk_files(store) if p.relative_to(store).parts[0] == array]
    a, b = rng.sample(files, 2)
    da, db = a.read_bytes(), b.read_bytes()
    a.write_bytes(db)
    b.write_bytes(da)
    return Damage("swap chunks", f"{a.relative_to(store)} <-> {b.relative_to(store)}", da != db,
                  _shadow_of(store, a))


def foreign_chunk(store: Path, rng: random.Random, other: Path) -> Damage:
    """A chunk copied over from a store of another spec (another seed) with the same shapes."""
    chunk = rng.choice(chunk_files(store))
    src = other / chunk.relative_to(store)
    if not src.is_file():
        return Damage("foreign chunk", str(chunk.relative_to(store)), False)
    before = chunk.read_bytes()
    shutil.copyfile(src, chunk)
    return Damage("foreign chunk", str(chunk.relative_to(store)), before != chunk.read_bytes(),
                  _shadow_of(store, chunk))


def foreign_metadata(store: Path, rng: random.Random, other: Path) -> Damage:
    """The root zarr.json (spec, digests, consolidated metadata) of a store of another spec."""
    before = (store / "zarr.json").read_bytes()
    shutil.copyfile(other / "zarr.json", store / "zarr.json")
    return Damage("foreign root zarr.json", "zarr.json", before != (store / "zarr.json").read_bytes())


def done_without_outputs(store: Path, rng: random.Random) -> Damage:
    """A shadow marked done whose outputs were never written (done set by hand, or a lost write)."""
    shadows = sorted({int(p.parts[-4]) for p in (store / "logits" / "c").rglob("*") if p.is_file()})
    s = rng.choice(shadows)
    for name in ("logits", "accuracy", "train_loss", "finished_at", "digest"):
        target = store / name / "c" / str(s)
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)
    return Damage("done without outputs", f"shadow {s}", True, s)


def delete_metadata(store: Path, rng: random.Random) -> Damage:
    meta = rng.choice(sorted(p for p in store.glob("*/zarr.json")))
    meta.unlink()
    return Damage("delete array zarr.json", str(meta.relative_to(store)), True)


def _edit_json(path: Path, rng: random.Random) -> str:
    doc = json.loads(path.read_text())
    choices = []
    if doc.get("node_type") == "array":
        choices = [("shape", lambda d: d.__setitem__("shape", [d["shape"][0] + 1] + d["shape"][1:])),
                   ("fill_value", lambda d: d.__setitem__("fill_value", 7 if d["data_type"] != "bool" else True)),
                   ("codecs", lambda d: d.__setitem__("codecs", d["codecs"][:-1])),
                   ("data_type", lambda d: d.__setitem__("data_type", "int8" if d["data_type"] != "int8" else "uint8"))]
    else:
        attrs = doc["attributes"]
        spec = json.loads(attrs["spec"])
        choices = [("spec shadows.count", lambda d: d["attributes"].__setitem__(
                        "spec", json.dumps({**spec, "shadows": {**spec["shadows"], "count": spec["shadows"]["count"] + 2}}))),
                   ("spec seed", lambda d: d["attributes"].__setitem__("spec", json.dumps({**spec, "seed": spec["seed"] + 1}))),
                   ("schema_version", lambda d: d["attributes"].__setitem__("schema_version", 99)),
                   ("spec removed", lambda d: d["attributes"].pop("spec"))]
    what, edit = rng.choice(choices)
    edit(doc)
    path.write_text(json.dumps(doc))
    return what


def edit_metadata(store: Path, rng: random.Random) -> Damage:
    meta = rng.choice(sorted(store.glob("*/zarr.json")) + [store / "zarr.json"])
    what = _edit_json(meta, rng)
    return Damage(f"edit metadata ({what})", str(meta.relative_to(store)), True)


def break_json(store: Path, rng: random.Random) -> Damage:
    meta = rng.choice(sorted(store.glob("*/zarr.json")) + [store / "zarr.json"])
    text = meta.read_bytes()
    meta.write_bytes(text[:rng.randrange(1, len(text) - 1)])
    return Damage("truncate zarr.json", str(meta.relative_to(store)), True)


def nonfinite_logits(store: Path, rng: random.Random) -> Damage:
    """A diverged shadow as an old worker stored it: NaN/inf logits, consistently digested and done."""
    import zarr

    from mia_hpc.contract.store import open_store, shadow_digest

    root = open_store(store)
    s = rng.randrange(root["done"].shape[0])
    z = np.asarray(root["logits"][s]).copy()
    z.reshape(-1)[rng.randrange(z.size)] = rng.choice([np.nan, np.inf, -np.inf])
    root["logits"][s] = z
    if "digest" in root:
        root["digest"][s] = shadow_digest(s, z, root["accuracy"][s], float(root["train_loss"][s]),
                                          float(root["finished_at"][s]))
    assert isinstance(root, zarr.Group)
    return Damage("non-finite logits", f"shadow {s}", True, s)


#: every damage that needs only the store (name -> function)
LOCAL = {f.__name__: f for f in (delete_chunk, truncate_chunk, zero_chunk, flip_byte, swap_chunks,
                                 done_without_outputs, delete_metadata, edit_metadata, break_json,
                                 nonfinite_logits)}
#: damages that copy from a store of another spec
FOREIGN = {f.__name__: f for f in (foreign_chunk, foreign_metadata)}

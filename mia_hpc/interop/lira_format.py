"""Read and write the experiment-folder layout of the LiRA reference code.

The reference code (Carlini et al., "Membership Inference Attacks From First Principles";
tensorflow/privacy, ``research/mi_lira_2021``) leaves, under its ``--logdir``::

    EXP_DIR/
      x_train.npy                      (N0, H, W, C) images, scaled to [-1, 1] by train.py (optional here)
      y_train.npy                      (N0,) integer labels
      experiment-<i>_<n>/              one folder per model: i = expid, n = num_experiments
        keep.npy                       (N,) bool: the model's training set (N = --dataset_size <= N0)
        hparams.json                   the model's training flags (optional here)
        logits/<epoch>.npy             (N, 1, n_aug, C) float32, written by inference.py ("%010d" % epoch)

Runs made without ``--expid`` are named ``experiment-<seed>``; both spellings are read, ordered by
their number. ``inference.py`` records, for each sample, ``n_aug`` augmentations in this order: for
the image and (with ``reflect``) its horizontal mirror, for each crop offset ``a`` (rows) then ``b``
(columns) of the ``shift``-padded image: ``n_aug = (1 + reflect) * (2 * shift + 1) ** 2``; by default
``shift=0, reflect=True``, i.e. ``[identity, mirror]``.

Mapping into a mia-hpc store (:mod:`mia_hpc.contract.store`):

* shadows = the experiments, sorted by number (a LiRA keep is random, not balanced: kept as is);
* queries = the augmentations. Their geometry is not recorded by LiRA, so by default they are named
  ``aug0 .. aug{n_aug-1}`` with ``dx = dy = 0`` and no mirror (``augs="generic"``);
  ``augs="lira"`` decodes them by the reference ``inference.py`` order above (stride 1) and moves the
  identity to query 0, as the store requires;
* logits = the highest-numbered ``logits/<epoch>.npy`` of each experiment;
* every sample is split ``"train"`` and group ``"over"`` unless a boolean ``under_mask`` marks the
  under-represented group; ``source`` is the index in ``y_train.npy``, ``dataset`` is ``"lira"``;
* images from ``x_train.npy`` (NHWC or NCHW; [-1, 1] is mapped to [0, 1], uint8 divided by 255),
  else zeros of shape (N, 1, 1, 1);
* accuracy from the logits (argmax of query 0 on the shadow's IN samples, per group; test subsets
  NaN when there are no test samples), ``train_loss`` NaN, ``done`` True.

:func:`export_lira` writes the same layout, plus two things the reference code ignores:
``hparams.json`` of each experiment carries the store's query descriptors and
``mia_hpc_samples.npz`` at the root carries ``group``, ``split``, ``source`` and ``dataset``, so an
export imports back to the same store (logits, keep, labels, groups, splits, queries, images).

Torch-free. Errors a user can fix raise :class:`LiraFormatError` (a :class:`~mia_hpc.contract.spec.SpecError`,
exit code 2 in the CLI), one line naming the file and the fix; nothing is left half-written.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import zarr

from mia_hpc.contract.settings import SAMPLE_CHUNK
from mia_hpc.contract.spec import SpecError, spec_from_dict
from mia_hpc.contract.store import (SUBSETS, StaticData, StoreError, create_store, done_mask, open_store, read_strings,
                           write_shadow)

__all__ = ["LiraFormatError", "LiraExperiment", "LiraRun", "scan_lira", "import_lira", "export_lira",
           "lira_inference_queries", "SIDECAR", "EXPORT_LOGITS_FILE"]

EXP_RE = re.compile(r"^experiment-(\d+)(?:_(\d+))?$")
EPOCH_RE = re.compile(r"^(\d+)\.npy$")
SIDECAR = "mia_hpc_samples.npz"
EXPORT_LOGITS_FILE = "%010d.npy" % 0
_CHANNELS = (1, 3, 4)

Query = tuple[str, int, int, bool]


class LiraFormatError(SpecError):
    """A LiRA experiment directory (or an export target) is unusable; the message names file and fix."""


@dataclass(frozen=True)
class LiraExperiment:
    """One ``experiment-*`` folder: one model."""

    name: str
    index: int
    keep: np.ndarray  # (N,) bool
    logits_path: Path
    epoch: int
    hparams: dict[str, Any] | None


@dataclass(frozen=True)
class LiraRun:
    """What :func:`scan_lira` found: everything validated, logits not yet read (only their headers)."""

    root: Path
    experiments: list[LiraExperiment]
    n_samples: int  # N (keep / logits length)
    n_aug: int
    n_classes: int
    labels: np.ndarray  # (N,) int64, y_train[:N]
    n_labels_file: int  # length of y_train.npy (>= N)
    images_path: Path | None
    skipped: list[str] = field(default_factory=list)


# --- reading ------------------------------------------------------------------------------------

def _load_npy(path: Path, what: str, fix: str, mmap: bool = False) -> np.ndarray:
    if not path.is_file():
        raise LiraFormatError(f"{path}: missing ({what}); {fix}")
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise LiraFormatError(f"{path}: cannot be read as a .npy array ({err}); {fix}") from None


def _as_bool_vector(a: np.ndarray, path: Path, what: str) -> np.ndarray:
    if a.ndim != 1:
        raise LiraFormatError(f"{path}: {what} must be 1-D (one flag per sample), got shape {a.shape}")
    if a.dtype == bool:
        return np.asarray(a)
    if a.dtype.kind in "iu" and np.isin(a, (0, 1)).all():
        return np.asarray(a).astype(bool)
    raise LiraFormatError(f"{path}: {what} must be boolean (or 0/1 integers), got dtype {a.dtype}")


def _experiment_dirs(root: Path) -> list[tuple[int, str]]:
    found = []
    for p in root.iterdir():
        m = EXP_RE.match(p.name)
        if m and p.is_dir():
            found.append((int(m.group(1)), p.name))
    return sorted(found)


def scan_lira(exp_dir: str | Path, *, skip_incomplete: bool = False) -> LiraRun:
    """Find and validate a LiRA run; read keep masks, labels and the logits files' headers.

    Parameters
    ----------
    exp_dir : path
        LiRA's ``--logdir``: ``y_train.npy`` and ``experiment-*`` folders.
    skip_incomplete : bool
        Skip experiments that have ``keep.npy`` but no ``logits/<epoch>.npy`` (models whose
        training or inference did not finish) instead of refusing the run.

    Raises
    ------
    LiraFormatError
        One line naming the offending file and the fix.
    """
    root = Path(exp_dir)
    if not root.is_dir():
        raise LiraFormatError(f"{root}: not a directory; pass LiRA's --logdir (the folder holding "
                              "y_train.npy and the experiment-* folders)")
    dirs = _experiment_dirs(root)
    if not dirs:
        raise LiraFormatError(f"{root}: no experiment-<i>_<n> folders; pass LiRA's --logdir after train.py "
                              "and inference.py have run")
    y_path = root / "y_train.npy"
    y = _load_npy(y_path, "the labels", "LiRA's train.py writes it at the root of --logdir; copy it there")
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise LiraFormatError(f"{y_path}: labels must be a 1-D integer array, got shape {y.shape} dtype {y.dtype}")

    experiments: list[LiraExperiment] = []
    skipped: list[str] = []
    n = n_aug = n_classes = None
    first = None
    for index, name in dirs:
        d = root / name
        keep = _as_bool_vector(_load_npy(d / "keep.npy", "this model's membership mask",
                                         "re-run LiRA's train.py for it or remove the folder"),
                               d / "keep.npy", "keep")
        logits_dir = d / "logits"
        epochs = sorted((int(m.group(1)), p.name) for p in logits_dir.iterdir() if p.is_file()
                        and (m := EPOCH_RE.match(p.name))) if logits_dir.is_dir() else []
        if not epochs:
            if skip_incomplete:
                skipped.append(name)
                continue
            raise LiraFormatError(f"{logits_dir}: no <epoch>.npy logits; run LiRA's inference.py for this "
                                  "model, remove the folder, or pass --skip-incomplete")
        epoch, fname = epochs[-1]
        lpath = logits_dir / fname
        arr = _load_npy(lpath, "logits", "re-run LiRA's inference.py for this model", mmap=True)
        if arr.ndim != 4 or arr.shape[1] != 1:
            raise LiraFormatError(f"{lpath}: logits must have shape (N, 1, n_aug, C) as LiRA's inference.py "
                                  f"writes them, got {arr.shape}; re-run inference.py")
        if arr.dtype.kind != "f":
            raise LiraFormatError(f"{lpath}: logits must be floating point, got dtype {arr.dtype}")
        if arr.shape[0] != len(keep):
            raise LiraFormatError(f"{lpath}: {arr.shape[0]} samples but {d / 'keep.npy'} has {len(keep)}; "
                                  "re-run inference.py with the --dataset_size used in training")
        if n is None:
            n, n_aug, n_classes, first = len(keep), arr.shape[2], arr.shape[3], name
        elif len(keep) != n:
            raise LiraFormatError(f"{d / 'keep.npy'}: {len(keep)} samples but {first} has {n}; all experiments "
                                  "must use the same --dataset_size (remove the odd one out)")
        elif arr.shape[2:] != (n_aug, n_classes):
            raise LiraFormatError(f"{lpath}: {arr.shape[2]} augmentations x {arr.shape[3]} classes but {first} has "
                                  f"{n_aug} x {n_classes}; run inference.py with the same settings for every model")
        hparams = None
        hp = d / "hparams.json"
        if hp.is_file():
            try:
                hparams = json.loads(hp.read_text())
            except (ValueError, UnicodeDecodeError) as err:
                raise LiraFormatError(f"{hp}: not valid JSON ({err}); fix or delete it (it is optional)") from None
            if not isinstance(hparams, dict):
                raise LiraFormatError(f"{hp}: must hold a JSON object; fix or delete it (it is optional)")
        experiments.append(LiraExperiment(name, index, keep, lpath, epoch, hparams))
    if not experiments:
        raise LiraFormatError(f"{root}: none of the {len(dirs)} experiment folders has logits; run LiRA's "
                              "inference.py first")
    if len(y) < n:
        raise LiraFormatError(f"{y_path}: {len(y)} labels but the experiments have {n} samples; use the "
                              "y_train.npy of this run")
    labels = np.asarray(y[:n], dtype=np.int64)
    if labels.min() < 0 or labels.max() >= n_classes:
        raise LiraFormatError(f"{y_path}: labels must lie in 0..{n_classes - 1} (the logits have {n_classes} "
                              f"classes), got {labels.min()}..{labels.max()}")
    x_path = root / "x_train.npy"
    return LiraRun(root, experiments, n, n_aug, n_classes, labels, len(y), x_path if x_path.is_file() else None,
                   skipped)


def lira_inference_queries(n_aug: int) -> tuple[list[Query], list[int]]:
    """Decode ``n_aug`` by the reference ``inference.py`` order; put the identity first.

    Returns
    -------
    queries : list of (name, dx, dy, mirror)
        In store order (identity first), with mia-hpc's conventions: the content moves ``dx`` pixels
        right and ``dy`` down (LiRA's crop offset ``(a, b)`` of the ``shift``-padded image is
        ``dy = shift - a, dx = shift - b``); mirror before shifting, as in both codes.
    order : list of int
        ``order[q]`` = the LiRA augmentation index stored as query ``q``.
    """
    for n_mirror in (1, 2):
        if n_aug % n_mirror:
            continue
        side = math.isqrt(n_aug // n_mirror)
        if side * side == n_aug // n_mirror and side % 2 == 1:
            break
    else:
        raise LiraFormatError(f"{n_aug} augmentations do not fit LiRA's inference.py order "
                              "((1 + reflect) * (2 * shift + 1)^2); import with --augs generic")
    s = side // 2
    lira: list[Query] = []
    for mirror in (False, True)[:n_mirror]:
        for a in range(side):
            for b in range(side):
                dx, dy = s - b, s - a
                lira.append((_qname(dx, dy, mirror), dx, dy, mirror))
    ident = lira.index(("id", 0, 0, False))
    order = [ident] + [i for i in range(n_aug) if i != ident]
    return [lira[i] for i in order], order


def _qname(dx: int, dy: int, mirror: bool) -> str:
    parts = (["m"] if mirror else []) + ([f"x{dx:+d}"] if dx else []) + ([f"y{dy:+d}"] if dy else [])
    return ",".join(parts) or "id"


def _queries(run: LiraRun, augs: str) -> tuple[list[Query], list[int], str]:
    for e in run.experiments:  # an export by mia-hpc records the exact descriptors
        q = ((e.hparams or {}).get("mia_hpc") or {}).get("queries")
        if isinstance(q, list) and len(q) == run.n_aug:
            try:
                qs = [(str(a), int(b), int(c), bool(d)) for a, b, c, d in q]
            except (TypeError, ValueError):
                break
            return qs, list(range(run.n_aug)), f"{e.name}/hparams.json (mia-hpc export)"
        break
    if augs == "lira":
        qs, order = lira_inference_queries(run.n_aug)
        return qs, order, "decoded by LiRA inference.py order (stride 1), identity moved to query 0"
    if augs != "generic":
        raise LiraFormatError(f"augs: must be 'generic' or 'lira', got {augs!r}")
    return ([(f"aug{i}", 0, 0, False) for i in range(run.n_aug)], list(range(run.n_aug)),
            "generic: LiRA does not record augmentation geometry (dx = dy = 0, no mirror, unknown)")


def _images(path: Path | None, n: int) -> tuple[np.ndarray, str]:
    if path is None:
        return np.zeros((n, 1, 1, 1), np.float32), "none (no x_train.npy): zeros of shape (N, 1, 1, 1)"
    x = _load_npy(path, "the images", "copy LiRA's x_train.npy there or remove it", mmap=True)
    if len(x) < n:
        raise LiraFormatError(f"{path}: {len(x)} images but the experiments have {n} samples; use the "
                              "x_train.npy of this run or remove it")
    if x.dtype.kind not in "fiu":
        raise LiraFormatError(f"{path}: images must be numeric, got dtype {x.dtype}")
    x = x[:n]
    if x.ndim == 3:
        layout, x = "NHW", x[:, None]
    elif x.ndim == 4 and x.shape[-1] in _CHANNELS:  # LiRA's own layout (wins when ambiguous)
        layout, x = "NHWC", x.transpose(0, 3, 1, 2)
    elif x.ndim == 4 and x.shape[1] in _CHANNELS:
        layout = "NCHW"
    else:
        raise LiraFormatError(f"{path}: images must be (N, H, W, C), (N, C, H, W) or (N, H, W) with C in "
                              f"{_CHANNELS}, got {x.shape}")
    out = np.empty(x.shape, np.float32)
    block = 4096
    for s in range(0, n, block):  # blockwise: LiRA saves CIFAR as float64, 1.2 GB
        out[s:s + block] = x[s:s + block]
    lo, hi = (float(out.min()), float(out.max())) if n else (0.0, 0.0)
    if x.dtype.kind in "iu":
        out /= 255.0
        scale = "integers / 255"
    elif lo < 0:
        out += 1.0
        out *= 0.5
        scale = "(x + 1) / 2 from LiRA's [-1, 1]"
    elif hi > 1:
        out /= 255.0
        scale = "x / 255"
    else:
        scale = "as is ([0, 1])"
    return out, f"{path.name}: {layout} -> NCHW, {scale}"


def _samples(run: LiraRun, under_mask: str | Path | None) -> tuple[dict[str, np.ndarray], str]:
    n = run.n_samples
    s = {"group": np.full(n, "over"), "split": np.full(n, "train"), "source": np.arange(n),
         "dataset": np.full(n, "lira")}
    how = "all 'over' (LiRA records no groups)"
    side = run.root / SIDECAR
    if side.is_file():
        try:
            with np.load(side, allow_pickle=False) as z:
                got = {k: np.asarray(z[k]) for k in s if k in z}
        except (ValueError, OSError, EOFError) as err:
            raise LiraFormatError(f"{side}: cannot be read ({err}); delete it (it is optional)") from None
        for k, v in got.items():
            if v.shape != (n,):
                raise LiraFormatError(f"{side}: {k} has shape {v.shape}, expected ({n},); delete it (it is optional)")
        bad = sorted(set(got.get("group", np.array(["over"])).tolist()) - {"over", "under"}) + \
            sorted(set(got.get("split", np.array(["train"])).tolist()) - {"train", "test"})
        if bad:
            raise LiraFormatError(f"{side}: unknown group/split values {bad}; delete it (it is optional)")
        s.update({k: (v.astype(str) if k != "source" else v.astype(np.int64)) for k, v in got.items()})
        how = f"from {SIDECAR} (mia-hpc export)"
    if under_mask is not None:
        p = Path(under_mask)
        m = _as_bool_vector(_load_npy(p, "the under-represented mask", "pass a .npy of N booleans"), p,
                            "the under-represented mask")
        if len(m) not in (n, run.n_labels_file):
            raise LiraFormatError(f"{p}: {len(m)} flags, expected {n} (one per sample of the experiments)")
        s["group"] = np.where(m[:n], "under", "over")
        how = f"under-represented = {p}"
    return s, how


def _spec_dict(run: LiraRun, s: dict[str, np.ndarray], n_shadows: int, image_hw: int, queries: list[Query],
               sample_chunk: int, name: str) -> tuple[dict[str, Any], str]:
    train = s["split"] == "train"
    n_train, n_test = int(train.sum()), int((~train).sum())
    n_under = int((train & (s["group"] == "under")).sum())
    n_test_under = int((~train & (s["group"] == "under")).sum())
    shifts = {max(abs(dx), abs(dy)) for _, dx, dy, _ in queries}
    data: dict[str, Any] = {"size": n_train, "alpha": (n_train - n_under) / max(n_train, 1),
                            "test_under": n_test_under, "image_size": min(max(image_hw, 8), 256),
                            "under": {"kind": "pixmix" if n_under else "none"}}
    if n_test:
        data["test_fraction"] = min(max(n_test / (n_test + n_train), 0.01), 0.99)
    raw = {"name": name, "seed": 0, "data": data,
           "shadows": {"count": n_shadows, "shards": 1, "batch": 1},
           "queries": {"shift": max(shifts) if max(shifts) <= 8 else 0, "mirror": any(q[3] for q in queries)},
           "store": {"sample_chunk": sample_chunk}}
    try:
        spec = spec_from_dict(raw)
    except SpecError as err:
        raise LiraFormatError(f"{run.root}: this run does not fit mia-hpc's spec limits ({err}); a store needs "
                              ">= 20 train samples and 0 or >= 10 per group (check --under-mask)") from None
    return spec.to_dict(), spec.hash()


def import_lira(exp_dir: str | Path, out: str | Path, *, under_mask: str | Path | None = None,
                augs: str = "generic", skip_incomplete: bool = False, sample_chunk: int = SAMPLE_CHUNK) -> dict[str, Any]:
    """Import a LiRA run into a new mia-hpc store at ``out``.

    Everything is validated before anything is written; the store is built under a hidden sibling
    name and renamed to ``out`` only once every shadow is written, so a failure leaves nothing.

    Parameters
    ----------
    exp_dir : path
        LiRA's ``--logdir`` (see the module docstring).
    out : path
        The store to create (must not exist).
    under_mask : path, optional
        ``.npy`` of N booleans: True marks a sample of the under-represented group.
    augs : "generic" or "lira"
        How to describe the augmentations as queries (module docstring). Ignored when the run is an
        export by mia-hpc (its ``hparams.json`` carries the exact queries).
    skip_incomplete : bool
        Skip experiments without logits instead of refusing.
    sample_chunk : int
        Samples per logits chunk of the store.

    Returns
    -------
    dict
        ``path``, ``shadows`` (imported models), ``padded`` (whether an empty, not-done shadow was
        added to make M even), ``samples``, ``queries``, ``classes``, ``skipped``.
    """
    out = Path(out)
    if out.exists():
        raise StoreError(f"{out}: already exists; choose a new --out (import never overwrites)")
    if not 1 <= sample_chunk <= 10_000_000:
        raise LiraFormatError(f"sample_chunk: must be in 1..10000000, got {sample_chunk}")
    run = scan_lira(exp_dir, skip_incomplete=skip_incomplete)
    samples, groups_how = _samples(run, under_mask)
    queries, order, queries_how = _queries(run, augs)
    images, images_how = _images(run.images_path, run.n_samples)
    m = len(run.experiments)
    m_store = m + (m % 2)  # the spec requires an even M: pad with one empty shadow that is never done
    spec_dict, spec_hash = _spec_dict(run, samples, m_store, max(images.shape[2:]), queries, sample_chunk,
                                      f"lira-import-{run.root.resolve().name}")
    keep = np.zeros((m_store, run.n_samples), bool)
    for i, e in enumerate(run.experiments):
        keep[i] = e.keep
    data = StaticData(image=images, label=run.labels, group=samples["group"], split=samples["split"],
                      source=samples["source"], dataset=samples["dataset"], n_classes=run.n_classes)
    del images

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.importing-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Consolidated metadata")
            create_store(tmp, spec_dict, spec_hash, data, keep, queries, sample_chunk)
            root = open_store(tmp)
            masks = {sub: (data.split == sub.split("/")[0]) & (data.group == sub.split("/")[1]) for sub in SUBSETS}
            for i, e in enumerate(run.experiments):
                z = np.asarray(np.load(e.logits_path, allow_pickle=False)[:, 0][:, order], dtype=np.float32)
                correct = z[:, 0, :].argmax(-1) == data.label
                acc = [_frac(correct, (keep[i] if sub.startswith("train") else True) & masks[sub]) for sub in SUBSETS]
                write_shadow(root, i, z, np.array(acc), float("nan"))
            root.attrs.update({
                "imported_from": str(run.root.resolve()),
                "lira_import": {
                    "format": "tensorflow/privacy research/mi_lira_2021 (experiment-*/keep.npy, logits/<epoch>.npy)",
                    "experiments": [e.name for e in run.experiments],
                    "epochs": [e.epoch for e in run.experiments],
                    "skipped": run.skipped,
                    "samples": run.n_samples, "labels_in_y_train": run.n_labels_file,
                    "queries": queries_how, "aug_order": order,
                    "groups": groups_how, "images": images_how,
                    "padding_shadow": m_store - m,
                    "train_loss": "NaN (not in LiRA's outputs)",
                    "hparams": run.experiments[0].hparams,
                },
            })
            zarr.consolidate_metadata(tmp)  # the attrs changed after create_store consolidated
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"path": str(out), "shadows": m, "padded": bool(m_store - m), "samples": run.n_samples,
            "queries": len(queries), "classes": run.n_classes, "skipped": run.skipped,
            "queries_how": queries_how, "groups_how": groups_how, "images_how": images_how}


def _frac(correct: np.ndarray, mask: np.ndarray) -> float:
    return float(correct[mask].mean()) if mask.any() else float("nan")


# --- writing ------------------------------------------------------------------------------------

def export_lira(store: str | Path, out: str | Path, *, shadows: Iterable[int] | None = None) -> dict[str, Any]:
    """Write a store's done shadows in LiRA's layout under a new directory ``out``.

    One ``experiment-<s>_<M>`` folder per done shadow ``s`` (M = the store's shadow count) with
    ``keep.npy`` (N,) bool, ``logits/0000000000.npy`` (N, 1, Q, C) float32 and ``hparams.json``
    (the store's spec hash and query descriptors); at the root ``y_train.npy`` (N,) int64,
    ``x_train.npy`` (N, H, W, C) float32 with the store's values (in [0, 1], not LiRA's [-1, 1]) and
    ``mia_hpc_samples.npz`` (group, split, source, dataset). Built under a hidden sibling name and
    renamed at the end.

    Returns
    -------
    dict
        ``path``, ``experiments`` (count), ``samples``, ``queries``, ``classes``.
    """
    store, out = Path(store), Path(out)
    root = open_store(store)
    if out.exists():
        raise LiraFormatError(f"{out}: already exists; choose a new --out (export never overwrites)")
    done = done_mask(root)
    m = len(done)
    chosen = np.flatnonzero(done) if shadows is None else np.asarray(sorted(set(shadows)), dtype=int)
    if shadows is not None and (chosen.size == 0 or chosen.min() < 0 or chosen.max() >= m
                                or not done[chosen].all()):
        raise StoreError(f"{store}: shadows {list(chosen)} are not all done shadows of this store (0..{m - 1})")
    if chosen.size == 0:
        raise StoreError(f"{store}: no shadow is done; train some first ('mia-hpc run SPEC --out DIR')")
    queries = [[str(a), int(b), int(c), bool(d)] for a, b, c, d in zip(
        read_strings(root, "query"), root["query_dx"][...], root["query_dy"][...], root["query_mirror"][...])]
    keep = np.asarray(root["keep"][...], dtype=bool)
    label = np.asarray(root["label"][...], dtype=np.int64)
    n = len(label)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.exporting-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        tmp.mkdir()
        for s in chosen:
            d = tmp / f"experiment-{int(s)}_{m}"
            (d / "logits").mkdir(parents=True)
            np.save(d / "keep.npy", keep[s])
            np.save(d / "logits" / EXPORT_LOGITS_FILE, np.asarray(root["logits"][int(s)], np.float32)[:, None])
            (d / "hparams.json").write_text(json.dumps({"mia_hpc": {
                "shadow": int(s), "num_shadows": m, "spec_hash": root.attrs.get("spec_hash"),
                "store": str(store.resolve()), "queries": queries}}))
        np.save(tmp / "y_train.npy", label)
        np.save(tmp / "x_train.npy", np.asarray(root["image"][...], np.float32).transpose(0, 2, 3, 1))
        np.savez(tmp / SIDECAR, group=read_strings(root, "group"), split=read_strings(root, "split"),
                 source=np.asarray(root["source"][...], np.int64), dataset=read_strings(root, "dataset"))
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"path": str(out), "experiments": int(chosen.size), "samples": n, "queries": len(queries),
            "classes": int(root["logits"].shape[3])}

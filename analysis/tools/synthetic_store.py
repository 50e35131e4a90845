"""Synthetic shadow stores with a known answer, for tests, demos and benchmarks.

The store is a real one (made by :func:`mia_hpc.contract.store.create_store` and filled by
:func:`mia_hpc.contract.store.write_shadow`), but its logits are constructed rather than trained:

* each sample i has a random offset ``a_i ~ N(offset_mean, offset_std^2)``: its "difficulty";
* for shadow m and query q, ``phi = a_i + keep[m, i] * separation[group_i] + sigma * eps``,
  ``eps ~ N(0, 1)`` independent across shadows, samples and queries;
* the logits carry phi as ``z_y - logsumexp_{y' != y} z_{y'} = phi`` (up to float32 rounding of
  ``z_y``), in one of two kinds (``logits=``, recorded in the store's ``synthetic`` attribute):

  - ``"realistic"`` (default): every other logit is drawn afresh for each shadow, sample and query
    from ``N(other_mean, other_std^2)`` (defaults -0.7 and 3.7: the trained demo store's non-true
    logits) and ``z_y = phi + logsumexp_{y' != y} z_{y'}``. Every value has random low bits, so the
    store compresses like a trained one (~1.08x with the store's zstd; measured on the demo store
    and tiny ``jobs/paper`` runs) and read benchmarks on it are honest. The softmax over the other
    classes, hence the argmax (accuracy, memorization), Shokri's sorted softmax, Song's modified
    entropy and the OOD scores, is random; phi and what is a function of it alone (loss, p_y and the
    attacks built on them: LiRA, Yeom, Sablayrolles, RMIA) are as in the compressible kind: phi is
    drawn first from the same per-shadow generator, so it is the same numbers;
  - ``"compressible"``: the true-class logit is ``phi + log(C - 1)`` and every other logit is 0
    (then ``argmax == y`` exactly when ``phi > -log(C - 1)``). Nine in ten values are zero, so the
    logits compress ~8x: fast to write, but flatters every read figure.

Because the offsets differ per sample, a global threshold on phi is far from optimal and only
per-sample calibration (LiRA) reaches the Bayes-optimal AUROC, which for one query and a group of
separation D is ``Phi(D / (sigma * sqrt(2)))`` (member and non-member phi, centred by a_i, are
N(D, sigma^2) and N(0, sigma^2)). Membership masks follow LiRA: every train-split sample is IN
for exactly M/2 shadows, test-split samples never.

This module is also the engine of ``mia-hpc synth-store``: it writes one whole shadow per call and
generates keep masks a sample block at a time, so it scales to thousands of shadows.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from mia_hpc.contract.settings import SAMPLE_CHUNK
from mia_hpc.contract.spec import spec_from_dict
from mia_hpc.contract.store import SUBSETS, StaticData, create_store, open_store, write_shadow

__all__ = ["write_synthetic_store", "synthetic_keep", "analytic_auroc", "LOGITS_KINDS"]

#: the kinds of synthetic logits (see the module docstring); the first is the default
LOGITS_KINDS = ("realistic", "compressible")


def analytic_auroc(separation: float, sigma: float = 1.0, n_queries: int = 1) -> float:
    """Bayes-optimal AUROC of a group with this separation: ``Phi(D sqrt(Q) / (sigma sqrt(2)))``.

    With Q independent queries the optimal (per-sample) statistic is the mean phi over queries,
    whose noise has std ``sigma / sqrt(Q)``.
    """
    if sigma == 0:  # noiseless: perfect if IN moves phi at all
        return 0.5 if separation == 0 else float(separation > 0)
    return 0.5 * (1 + math.erf(separation * math.sqrt(n_queries) / (sigma * math.sqrt(2)) / math.sqrt(2)))


def synthetic_keep(n_shadows: int, n_train: int, n_test: int, rng: np.random.Generator,
                   block: int = 8192) -> np.ndarray:
    """LiRA membership masks: each train sample IN for exactly M/2 shadows, test samples never.

    Returns
    -------
    ndarray of bool, shape (M, n_train + n_test)
    """
    if n_shadows % 2:
        raise ValueError(f"n_shadows must be even (each sample IN for exactly M/2), got {n_shadows}")
    keep = np.zeros((n_shadows, n_train + n_test), dtype=bool)
    half = np.arange(n_shadows) < n_shadows // 2
    for s in range(0, n_train, block):  # blockwise: bounded memory at 2000 x 61,000
        e = min(s + block, n_train)
        keep[:, s:e] = rng.permuted(np.broadcast_to(half[:, None], (n_shadows, e - s)), axis=0)
    return keep


def _queries(n: int) -> list[tuple[str, int, int, bool]]:
    """Query descriptors named and ordered as the trainer's: id, x+1, x-1, y+1, y-1, x+2, ... (truncated to n)."""
    out = [("id", 0, 0, False)]
    d = 1
    while len(out) < n:
        out += [(f"x+{d}", d, 0, False), (f"x-{d}", -d, 0, False), (f"y+{d}", 0, d, False), (f"y-{d}", 0, -d, False)]
        d += 1
    return out[:n]


def _spec(n_shadows: int, n_over: int, n_under: int, n_test_under: int, n_test: int, n_queries: int,
          seed: int, sample_chunk: int, analysis: Mapping[str, Any] | None) -> Any:
    """A spec describing the synthetic store as closely as the spec schema allows."""
    size = n_over + n_under
    raw: dict[str, Any] = {
        "name": "synthetic",
        "seed": seed,
        "data": {"size": size, "alpha": n_over / size, "test_under": n_test_under,
                 "test_fraction": min(max(n_test / (n_test + size), 0.01), 0.99),
                 "under": {"kind": "pixmix" if n_under else "none"}},
        "shadows": {"count": n_shadows, "shards": 1, "batch": 1},
        # Q = 1 + 4 * shift when that fits the trainer's query pattern; otherwise it is left at 0
        # (the store's own query coordinate is the truth).
        "queries": {"shift": (n_queries - 1) // 4 if (n_queries - 1) % 4 == 0 and n_queries <= 33 else 0},
        "store": {"sample_chunk": sample_chunk},
    }
    if analysis:
        raw["analysis"] = dict(analysis)
    return spec_from_dict(raw)


def write_synthetic_store(path: str | Path, *, n_shadows: int, n_samples: int, n_classes: int = 10,
                          n_queries: int = 1, separation: Mapping[str, float] | None = None,
                          frac_under: float = 0.2, sigma: float = 1.0, seed: int = 0, n_test: int = 0,
                          offset_mean: float = 2.0, offset_std: float = 2.0, n_done: int | None = None,
                          sample_chunk: int = SAMPLE_CHUNK, analysis: Mapping[str, Any] | None = None,
                          progress: Callable[[int], None] | None = None, logits: str = "realistic",
                          other_mean: float = -0.7, other_std: float = 3.7) -> dict[str, Any]:
    """Create a store at ``path`` whose logits follow the model in the module docstring.

    Parameters
    ----------
    path : str or Path
        Where to create the store (must not exist).
    n_shadows : int
        M, even.
    n_samples : int
        Train-split (pool) samples: the challenge points. At least 20; each group, if not empty,
        at least 10 (the spec's own limits).
    n_classes, n_queries : int
        C (>= 2) and Q (>= 1); query 0 is the identity.
    separation : mapping group -> float
        Shift of phi when IN, per group; default ``{"over": 0.0, "under": 3.0}``.
    frac_under : float
        Fraction of the train (and test) samples in the "under" group.
    sigma : float
        Noise std of phi across shadows.
    seed : int
        Everything random derives from it.
    n_test : int
        Test-split samples (never IN; their memorization is undefined).
    offset_mean, offset_std : float
        Distribution of the per-sample offsets a_i.
    n_done : int, optional
        Write (and mark done) only the first ``n_done`` shadows; default all.
    sample_chunk : int
        Samples per logits chunk.
    analysis : mapping, optional
        The spec's ``analysis`` table (targets, fpr, singleton_threshold).
    progress : callable, optional
        Called with 1 after each shadow is written.
    logits : {"realistic", "compressible"}
        How the other classes' logits are made (module docstring): ``"realistic"`` (default)
        compresses like trained logits; ``"compressible"`` (zeros) ~8x better.
    other_mean, other_std : float
        Distribution of the other classes' logits (``"realistic"`` only).

    Returns
    -------
    dict
        ``path``, ``spec_hash``, ``n_train``, ``n_test``, ``offsets`` (a_i, shape (N,)),
        ``separation``, ``analytic_auroc`` per group and ``logits`` (the kind).
    """
    sep = {"over": 0.0, "under": 3.0} if separation is None else dict(separation)
    if set(sep) - {"over", "under"}:
        raise ValueError(f"separation: groups are 'over' and 'under', got {sorted(sep)}")
    if n_classes < 2 or n_queries < 1:
        raise ValueError("need n_classes >= 2 and n_queries >= 1")
    if logits not in LOGITS_KINDS:
        raise ValueError(f"logits: one of {', '.join(LOGITS_KINDS)}, got {logits!r}")
    if not (math.isfinite(other_mean) and math.isfinite(other_std) and other_std >= 0):
        raise ValueError(f"need a finite other_mean and other_std >= 0, got {other_mean}, {other_std}")
    rng = np.random.default_rng([seed, 0])
    n_under = int(round(frac_under * n_samples))
    n_over = n_samples - n_under
    n_test_under = int(round(frac_under * n_test))
    n = n_samples + n_test
    spec = _spec(n_shadows, n_over, n_under, n_test_under, n_test, n_queries, seed, sample_chunk, analysis)

    group = np.array(["over"] * n_over + ["under"] * n_under + ["over"] * (n_test - n_test_under)
                     + ["under"] * n_test_under)
    split = np.array(["train"] * n_samples + ["test"] * n_test)
    label = rng.integers(0, n_classes, size=n)
    data = StaticData(image=np.zeros((n, 1, 8, 8), dtype=np.float32), label=label, group=group, split=split,
                      source=np.arange(n), dataset=np.where(group == "over", "synthetic-over", "synthetic-under"),
                      n_classes=n_classes)
    keep = synthetic_keep(n_shadows, n_samples, n_test, rng)
    offsets = rng.normal(offset_mean, offset_std, size=n)
    shift = np.array([sep.get(g, 0.0) for g in group])

    with warnings.catch_warnings():
        # create_store consolidates metadata, which zarr 3 flags as outside the v3 spec; harmless here.
        warnings.filterwarnings("ignore", message="Consolidated metadata")
        create_store(path, spec.to_dict(), spec.hash(), data, keep, _queries(n_queries), sample_chunk,
                     extra_attrs={"synthetic": _synthetic_attrs(logits, other_mean, other_std)})
    root = open_store(path)

    masks = {s: (split == s.split("/")[0]) & (group == s.split("/")[1]) for s in SUBSETS}
    realistic = logits == "realistic"
    out = np.zeros((n, n_queries, n_classes), dtype=np.float32)  # reused (compressible: only the true class changes)
    rows = np.arange(n)
    log_c1 = math.log(n_classes - 1)
    for m in range(n_shadows if n_done is None else min(n_done, n_shadows)):
        r = np.random.default_rng([seed, 1, m])  # per shadow: reproducible whatever n_done is
        phi = offsets[:, None] + (keep[m] * shift)[:, None] + sigma * r.standard_normal((n, n_queries))
        if realistic:  # drawn after phi from the same generator: phi is the same numbers in both kinds
            _realistic_logits(out, phi, label, r, other_mean, other_std)
            correct = out[:, 0].argmax(-1) == label
        else:
            out[rows, :, label] = phi + log_c1
            correct = phi[:, 0] > -log_c1  # true-class logit above the others' 0
        acc = np.array([_frac(correct, keep[m] & masks[s]) if s.startswith("train") else _frac(correct, masks[s])
                        for s in SUBSETS])
        # cross-entropy of the identity query on the shadow's training set: log(1 + (C-1) e^-(phi + log(C-1)))
        loss = float(np.mean(np.logaddexp(0.0, -phi[keep[m], 0]))) if keep[m].any() else float("nan")
        write_shadow(root, m, out, acc, loss)
        if progress is not None:
            progress(1)

    return {"path": str(path), "spec_hash": spec.hash(), "n_train": n_samples, "n_test": n_test,
            "offsets": offsets, "separation": sep,
            "analytic_auroc": {g: analytic_auroc(d, sigma, n_queries) for g, d in sep.items()}, "logits": logits}


def _synthetic_attrs(kind: str, other_mean: float, other_std: float) -> dict[str, Any]:
    """The store's ``synthetic`` attribute: which logits it holds."""
    return {"logits": kind, **({"other_mean": other_mean, "other_std": other_std} if kind == "realistic" else {})}


def _realistic_logits(out: np.ndarray, phi: np.ndarray, label: np.ndarray, r: np.random.Generator,
                      other_mean: float, other_std: float) -> None:
    """Fill ``out`` (N, Q, C) float32: other classes ~ N(other_mean, other_std^2), true class carries phi (N, Q).

    ``z_y = phi + logsumexp_{j != y} z_j``, the log-sum-exp taken in float64 over the float32 values
    written, so the reader's ``z_y - logsumexp_{j != y} z_j`` is phi up to the float32 rounding of z_y.
    """
    n = out.shape[0]
    r.standard_normal(out=out, dtype=np.float32)
    out *= np.float32(other_std)
    out += np.float32(other_mean)
    rows = np.arange(n)
    o = out.astype(np.float64)
    o[rows, :, label] = -np.inf
    top = o.max(-1)
    lse = top + np.log(np.exp(o - top[..., None]).sum(-1))
    out[rows, :, label] = phi + lse


def _frac(correct: np.ndarray, mask: np.ndarray) -> float:
    return float(correct[mask].mean()) if mask.any() else float("nan")

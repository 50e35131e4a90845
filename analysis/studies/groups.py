"""Challenge sets of the paper's §6: random under-represented samples, a subpopulation, singletons,
and the one registry of the names of every set of samples the report shows (:data:`SAMPLE_SETS`).

Every table row, figure legend and caption that names a set of samples takes its name from
:data:`SAMPLE_SETS`, so one set has one name everywhere; :func:`sample_set_table` lists each set's
definition, size and how it differs from the others (e.g. "highly memorized" is the singletons plus
the over-represented samples above the same threshold).

Each is a boolean mask over the store's samples (shape (N,)); only train-split samples can be in a
set, since only they are ever members. Pass ``train`` (``split == "train"``) wherever the store has
a test split; without it every sample is taken to be a train sample.

``random_under``
    (a) the under-represented train samples (all of them, or a random subset of a given size, e.g.
    the size of another set, for a like-for-like comparison).
``subpopulation``
    (b) after Jagielski et al.: the penultimate-layer features of one reference model (the store's
    ``features(sample, feature)``, written by shadow 0's worker) of all train samples, PCA to 10
    dimensions, KMeans with 5 clusters; the set is the under-represented samples of the smallest
    cluster.
``singletons``
    (c) under-represented train samples whose Feldman-Zhang memorization exceeds a threshold
    (the spec's ``analysis.singleton_threshold``: 0.8 MNIST-like, 0.5 CIFAR-like); strictly greater,
    and samples without an estimate (NaN) are never singletons.

Subpopulation edge cases (deterministic for a given ``seed``):

* Clusters are ranked by size, ties by the lowest sample index they contain (KMeans's own cluster
  numbering is arbitrary).
* If the smallest cluster holds no under-represented sample, the next smallest that holds one is
  taken (recorded in :attr:`Subpopulation.rank`); if no cluster does (no under samples at all), the
  set is empty.
* ``n_components`` is capped at ``min(n_train, n_features)`` and ``n_clusters`` at ``n_train``;
  constant feature columns are harmless (PCA drops them), NaN/inf features are refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
import pandas as pd

from analysis.store_io.numfmt import fmt

__all__ = ["Subpopulation", "subpopulation", "subpopulation_clusters", "singletons", "random_under",
           "highly_memorized", "challenge_sets", "store_features", "SAMPLE_SETS", "SET_ALIASES", "set_name",
           "set_definition", "sample_set_table"]

#: The name and definition of every set of (train-split) samples the report names, in report order.
#: ``{threshold}`` is the spec's ``analysis.singleton_threshold``.
SAMPLE_SETS: dict[str, str] = {
    "All": "every train-split sample (either group)",
    "random": "every under-represented (D_U) train sample: the paper's 'random' challenge set (a); "
              "the 'Under' columns of attacks.md and attacks_per_target.md",
    "subpopulation": "the under-represented train samples in the smallest KMeans cluster (5 clusters, PCA to 10 "
                     "dimensions of shadow 0's penultimate-layer features of all train samples): the paper's (b)",
    "singletons": "the under-represented train samples with memorization > {threshold}: the paper's (c)",
    "highly memorized": "the train samples of EITHER group with memorization > {threshold} (the paper's 'HM'): "
                        "the singletons plus any over-represented sample above the same threshold",
}
#: Other spellings accepted as input for a registered set (never shown in the report).
SET_ALIASES: dict[str, str] = {"Under": "random", "under": "random", "under-represented": "random", "all": "All",
                               "HM": "highly memorized"}


def set_name(name: str) -> str:
    """The registered name of the set ``name`` (an alias resolved); KeyError naming the registry if unknown."""
    name = SET_ALIASES.get(name, name)
    if name not in SAMPLE_SETS:
        raise KeyError(f"{name!r} is not a registered sample set; known: {', '.join(SAMPLE_SETS)}")
    return name


def set_definition(name: str, threshold: float) -> str:
    """The definition of the registered set ``name`` with the memorization threshold filled in."""
    return SAMPLE_SETS[set_name(name)].format(threshold=fmt(float(threshold)))


def _train_mask(n: int, train: np.ndarray | None) -> np.ndarray:
    if train is None:
        return np.ones(n, dtype=bool)
    train = np.asarray(train, dtype=bool)
    if train.shape != (n,):
        raise ValueError(f"train mask has shape {train.shape}, expected ({n},)")
    return train


def _under(group: np.ndarray) -> np.ndarray:
    return np.asarray(group).astype(str) == "under"


@dataclass
class Subpopulation:
    """Outcome of the subpopulation selection.

    Attributes
    ----------
    mask : ndarray of bool (N,)
        The chosen cluster's under-represented train samples.
    labels : ndarray of int (N,)
        Cluster of every train sample, renumbered 0..K-1 by rank (0 = smallest); -1 for non-train.
    sizes : ndarray of int (K,)
        Cluster sizes (train samples) in rank order.
    n_under : ndarray of int (K,)
        Under-represented samples per cluster, in rank order.
    rank : int
        Rank of the chosen cluster (0 = the smallest; >0 when smaller clusters had no under
        samples); -1 if none was chosen.
    explained_variance : float
        Fraction of the feature variance kept by the PCA.
    """

    mask: np.ndarray
    labels: np.ndarray
    sizes: np.ndarray
    n_under: np.ndarray
    rank: int
    explained_variance: float


def subpopulation_clusters(features: np.ndarray, group: np.ndarray, *, train: np.ndarray | None = None,
                           n_components: int = 10, n_clusters: int = 5, seed: int = 0) -> Subpopulation:
    """PCA + KMeans on the train samples' features; see the module docstring.

    Parameters
    ----------
    features : ndarray (N, F)
        Penultimate-layer features of every sample (rows of non-train samples are ignored).
    group : ndarray of str (N,)
        "over" / "under".
    train : ndarray of bool (N,), optional
        Train-split samples (the clustered set, D_tr); default all.
    n_components, n_clusters : int
        PCA dimensions (10) and clusters (5), as in the paper.
    seed : int
        KMeans initialisation (n_init=10) and the randomized PCA solver, if sklearn picks it.

    Returns
    -------
    Subpopulation
    """
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"features must be (N, F), got shape {x.shape}")
    n = x.shape[0]
    group = np.asarray(group)
    if group.shape != (n,):
        raise ValueError(f"group has shape {group.shape}, expected ({n},)")
    train = _train_mask(n, train)
    idx = np.flatnonzero(train)
    xt = x[idx]
    if not np.isfinite(xt).all():
        raise ValueError("features of train samples contain NaN/inf (were they written? shadow 0 writes them)")
    labels = np.full(n, -1, dtype=np.int64)
    if idx.size == 0:
        return Subpopulation(np.zeros(n, bool), labels, np.zeros(0, np.int64), np.zeros(0, np.int64), -1, float("nan"))
    k_pca = max(1, min(n_components, idx.size, x.shape[1]))
    pca = PCA(n_components=k_pca, random_state=seed)
    z = pca.fit_transform(xt)
    k = max(1, min(n_clusters, idx.size))
    raw = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(z)
    # rank clusters by (size, lowest sample index); empty clusters cannot occur with KMeans' relocation
    present = np.unique(raw)
    sizes_raw = np.array([(raw == c).sum() for c in present])
    first = np.array([np.flatnonzero(raw == c)[0] for c in present])
    order = np.lexsort((first, sizes_raw))  # primary: size, secondary: first index
    rank_of = {int(present[o]): r for r, o in enumerate(order)}
    ranked = np.array([rank_of[int(c)] for c in raw], dtype=np.int64)
    labels[idx] = ranked
    under = _under(group)
    sizes = np.bincount(ranked, minlength=len(present))
    n_under = np.bincount(ranked[under[idx]], minlength=len(present))
    has = np.flatnonzero(n_under > 0)
    rank = int(has[0]) if has.size else -1
    mask = (labels == rank) & under & train if rank >= 0 else np.zeros(n, dtype=bool)
    return Subpopulation(mask=mask, labels=labels, sizes=sizes, n_under=n_under, rank=rank,
                         explained_variance=float(np.sum(pca.explained_variance_ratio_)))


def subpopulation(features: np.ndarray, group: np.ndarray, *, train: np.ndarray | None = None,
                  n_components: int = 10, n_clusters: int = 5, seed: int = 0) -> np.ndarray:
    """Mask (N,) of the subpopulation: the under-represented samples of the smallest KMeans cluster.

    See :func:`subpopulation_clusters` (which also returns the clustering) and the module docstring.
    """
    return subpopulation_clusters(features, group, train=train, n_components=n_components,
                                  n_clusters=n_clusters, seed=seed).mask


def singletons(mem: np.ndarray, group: np.ndarray, threshold: float, *, train: np.ndarray | None = None
               ) -> np.ndarray:
    """Mask (N,) of under-represented train samples with memorization ``mem > threshold`` (NaN: never)."""
    return highly_memorized(mem, threshold, train=train) & _under(group)


def highly_memorized(mem: np.ndarray, threshold: float, *, train: np.ndarray | None = None) -> np.ndarray:
    """Mask (N,) of train samples of either group with ``mem > threshold`` (NaN: never); the
    singletons are its under-represented part."""
    mem = np.asarray(mem, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        high = np.isfinite(mem) & (mem > threshold)
    return high & _train_mask(mem.size, train)


def random_under(group: np.ndarray, *, train: np.ndarray | None = None, size: int | None = None,
                 seed: int = 0) -> np.ndarray:
    """Mask (N,) of the under-represented train samples, or of ``size`` of them drawn at random."""
    base = _under(group) & _train_mask(np.asarray(group).size, train)
    if size is None or size >= base.sum():
        return base
    if size < 0:
        raise ValueError(f"size must be >= 0, got {size}")
    pick = np.random.default_rng(seed).choice(np.flatnonzero(base), size=size, replace=False)
    out = np.zeros(base.size, dtype=bool)
    out[pick] = True
    return out


def challenge_sets(group: np.ndarray, train: np.ndarray, mem: np.ndarray, threshold: float,
                   features: np.ndarray | None = None, *, seed: int = 0) -> dict[str, np.ndarray]:
    """``{"random": ..., "subpopulation": ..., "singletons": ...}`` masks over all N samples.

    ``subpopulation`` is left out when ``features`` is None (a store without features).
    """
    sets = {"random": random_under(group, train=train)}
    if features is not None:
        sets["subpopulation"] = subpopulation(features, group, train=train, seed=seed)
    sets["singletons"] = singletons(mem, group, threshold, train=train)
    return sets


def store_features(ds) -> np.ndarray | None:
    """The store's ``features`` (N, F) as float64, or None if the store has none or they were never
    written (all NaN: shadow 0 has not finished). ``ds`` is an xarray Dataset (``ShadowData.ds``)."""
    if "features" not in ds:
        return None
    f = np.asarray(ds["features"].values, dtype=np.float64)
    if f.size == 0 or np.isnan(f).all():
        return None
    return f


def _relation(a: np.ndarray, b: np.ndarray, name_b: str) -> str | None:
    """How set ``a`` differs from set ``b`` (named ``name_b``), or None when they merely overlap."""
    if not b.any():
        return None
    extra, missing = int((a & ~b).sum()), int((b & ~a).sum())
    if extra == 0 and missing == 0:
        return f"the same samples as {name_b}"
    if extra == 0:
        return f"{name_b} less {missing}"
    if missing == 0:
        return f"{name_b} plus {extra}"
    return None


def sample_set_table(masks: Mapping[str, np.ndarray], group: np.ndarray, threshold: float) -> pd.DataFrame:
    """One row per named set: its size, over/under split, how it relates to the other sets, and its
    definition from :data:`SAMPLE_SETS`.

    Parameters
    ----------
    masks : mapping registered set name -> bool (N,)
        The sets over the same N samples (e.g. the train split); an alias is replaced by its name.
    group : ndarray of str (N,)
        "over" / "under" of the same samples.
    threshold : float
        The memorization threshold in the definitions.

    Returns
    -------
    DataFrame indexed by ``set`` (registry order), columns ``n``, ``n under``, ``n over``,
    ``relation`` (e.g. "singletons plus 7": every singleton and 7 samples more; "random less 12";
    only subsets and supersets are named, "-" when there is none) and ``definition``.
    """
    under = np.asarray(group).astype(str) == "under"
    named = {set_name(k): np.asarray(v, dtype=bool) for k, v in masks.items()}
    order = [k for k in SAMPLE_SETS if k in named]
    rows = {}
    for k in order:
        m = named[k]
        # every set lies within All: only relations between the challenge sets say something
        rel = [r for o in order if o not in (k, "All") and k != "All"
               for r in [_relation(m, named[o], o)] if r is not None]
        rows[k] = [int(m.sum()), int((m & under).sum()), int((m & ~under).sum()), "; ".join(rel) or "-",
                   set_definition(k, threshold)]
    df = pd.DataFrame.from_dict(rows, orient="index", columns=["n", "n under", "n over", "relation", "definition"])
    df.index.name = "set"
    return df

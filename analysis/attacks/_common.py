"""What every attack shares: the inputs (:class:`AttackContext`), the result type and the signals.

An attack scores the first T done shadows ("targets") on every train-split sample, each target
using only the *other* done shadows as reference/shadow models; the truth is ``keep[target]``.
Scores have shape (T, N_train), higher = more likely a member (the contract of
:func:`analysis.attacks.lira.run_lira`, whose :class:`~analysis.attacks.lira.LiraResult` is reused).

Signals of the non-LiRA attacks are taken from the identity query (query 0), as the classical
attacks use one plain prediction:

``loss``   cross-entropy ``-log p_y`` (Yeom, Sablayrolles);
``prob``   true-class softmax probability ``p_y`` (RMIA);
``mentr``  Song & Mittal's modified prediction entropy (Song).

Per-sample reference statistics come from running sums over all done shadows (one dask pass over
the logits, :meth:`AttackContext.signal_sums`, i.e. :func:`analysis.store_io.passes.reduce_over_tasks`), minus each target's own contribution and, where
counts would otherwise reveal membership, a partner on the other side (:mod:`analysis.kernels.stats`).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable

import dask.array as da
import numba
import numpy as np

from analysis.attacks.lira import LiraResult
from analysis.kernels.logit_kernels import mentr_from_logits, signals_from_logits, song_bin
from analysis.store_io.passes import reduce_over_tasks, shadows_per_task
from analysis.kernels.stats import GaussianSums, Partners
from analysis.kernels.threads import thread_map

__all__ = ["AttackContext", "AttackResult", "SIGNALS", "signals_from_logits", "mentr_from_logits"]

SIGNALS = ("loss", "prob", "mentr")  # order of the signal axis of AttackContext.signal_sums()


@dataclass
class AttackResult(LiraResult):
    """A :class:`~analysis.attacks.lira.LiraResult` plus free-form ``info`` (parameters, fold assignment...)."""

    info: dict[str, Any] = field(default_factory=dict)


def song_histogram(mentr: np.ndarray, keep: np.ndarray, label: np.ndarray, train: np.ndarray,
                   edges: np.ndarray, n_classes: int, *, per_row: bool = False) -> np.ndarray:
    """Counts of train-split Mentr values per (class, OUT/IN, bin), flattened to (C * 2 * B,).

    ``mentr`` and ``keep`` are (S, N) (or (N,)); bin ``b`` holds values in ``[edges[b], edges[b+1])``,
    the two end bins extended to -inf / +inf (``searchsorted(edges[1:-1], v, side="right")``; NaN
    in the last bin). With ``per_row``, one histogram per row: (S, C * 2 * B). One compiled loop.
    """
    mentr = np.atleast_2d(np.asarray(mentr, dtype=np.float64))
    keep = np.atleast_2d(np.asarray(keep, dtype=bool))
    out = np.zeros((mentr.shape[0] if per_row else 1, n_classes * 2 * (len(edges) - 1)))
    _song_counts(mentr, np.ascontiguousarray(np.broadcast_to(keep, mentr.shape)),
                 np.asarray(label, dtype=np.int64), np.asarray(train, dtype=bool),
                 np.asarray(edges, dtype=np.float64), per_row, out)
    return out if per_row else out[0]


@numba.njit(cache=True, nogil=True)
def _song_counts(mentr, keep, label, train, edges, per_row, out):  # pragma: no cover - compiled
    nb = edges.size - 1
    for r in range(mentr.shape[0]):
        row = r if per_row else 0
        for i in range(mentr.shape[1]):
            if train[i]:
                k = 1 if keep[r, i] else 0
                out[row, (label[i] * 2 + k) * nb + song_bin(edges, mentr[r, i])] += 1.0


class AttackContext:
    """Everything the attacks read, computed lazily once and shared between attacks.

    Parameters
    ----------
    logits : dask array, shape (M, N, Q, C)
        Logits of the done shadows (any chunking along shadows works).
    keep : ndarray of bool (M, N)
    label : ndarray of int (N,)
    split : ndarray of str (N,)
        "train" samples are challenge points, "test" samples are never members (RMIA population).
    n_targets : int
        T: the first T shadows are targets.
    shadow_ids, sample_ids : ndarray, optional
        Store ids for the result labels.
    phi_of, phi_sums, phi_partner, lira : optional
        LiRA inputs (see :func:`analysis.attacks.lira.run_lira`) and, if already computed, its result.
    batch_bytes : int
        Memory budget of a batch of target logits.
    signal_stats, target_signals : optional
        :meth:`signal_sums`'s result and the (T, N, 3) target signals if already computed
        (:func:`analysis.store_io.passes.one_pass` computes both with everything else).
    precomputed : dict, optional
        Attack name -> what its entry point may reuse (``"shokri"``: a
        :class:`analysis.attacks.shokri.ShokriModel` and its (T, N_train) scores).
    threads : int
        Threads the batches of targets and the pass over the logits run on
        (:mod:`analysis.kernels.threads`; no result depends on it).
    """

    def __init__(self, logits: Any, keep: np.ndarray, label: np.ndarray, split: np.ndarray, n_targets: int, *,
                 shadow_ids: np.ndarray | None = None, sample_ids: np.ndarray | None = None,
                 phi_of: Callable[[slice], np.ndarray] | None = None, phi_sums: GaussianSums | None = None,
                 phi_partner: Partners | None = None, lira: LiraResult | None = None,
                 batch_bytes: int = 128 * 2**20, song_bins: int = 512,
                 signal_stats: tuple[GaussianSums, Partners, np.ndarray, np.ndarray] | None = None,
                 target_signals: np.ndarray | None = None, precomputed: dict[str, Any] | None = None,
                 threads: int = 1) -> None:
        self.logits = logits if isinstance(logits, da.Array) else da.from_array(
            np.asarray(logits), chunks=(1,) + np.shape(logits)[1:])
        self.keep = np.asarray(keep, dtype=bool)
        self.label = np.asarray(label, dtype=np.int64)
        self.split = np.asarray(split)
        self.train = self.split == "train"
        self.test = self.split == "test"
        m, n, self.n_queries, self.n_classes = self.logits.shape
        if self.keep.shape != (m, n):
            raise ValueError(f"keep has shape {self.keep.shape}, logits {self.logits.shape}")
        if not 1 <= n_targets <= m:
            raise ValueError(f"n_targets must be in 1..{m}, got {n_targets}")
        self.n_shadows, self.n_samples, self.n_targets = m, n, int(n_targets)
        self.shadow_ids = np.arange(m) if shadow_ids is None else np.asarray(shadow_ids)
        self.sample_ids = np.arange(n) if sample_ids is None else np.asarray(sample_ids)
        self.phi_of, self.phi_sums, self.phi_partner, self.lira = phi_of, phi_sums, phi_partner, lira
        self.batch_bytes = int(batch_bytes)
        self.song_bins = int(song_bins)
        self._sums = signal_stats
        self._tsig = target_signals
        self.precomputed = dict(precomputed or {})
        self.threads = int(threads)
        self._lock = threading.Lock()  # lazy caches filled once when batches run on threads

    @classmethod
    def from_shadows(cls, data: Any, n_targets: int, **kw: Any) -> "AttackContext":
        """A context over a :class:`analysis.store_io.load.ShadowData` (its done shadows), reading the logits
        as the one pass does (blocks of whole shadows, one zarr read each)."""
        logits = data.logits_blocks(shadows_per_task(data.logits.shape))
        return cls(logits, np.asarray(data.keep.values, dtype=bool), data.label, data.split, n_targets,
                   shadow_ids=data.ds["shadow"].values, sample_ids=data.ds["sample"].values, **kw)

    # --- results ----------------------------------------------------------------------------
    def result(self, name: str, scores: np.ndarray, n_neutral: int = 0, **info: Any) -> AttackResult:
        """Wrap (T, N_train) scores of attack ``name`` in the common result type."""
        t = self.n_targets
        scores = np.asarray(scores, dtype=np.float32)  # as LiRA's: one precision for every attack's metrics
        assert scores.shape == (t, int(self.train.sum())), scores.shape
        return AttackResult(targets=self.shadow_ids[:t], samples=self.sample_ids[self.train],
                            member=self.keep[:t][:, self.train], scores={name: scores},
                            n_neutral={name: int(n_neutral)}, info=info)

    def map_batches(self, fn: Callable[[slice], Any]) -> list[Any]:
        """``[fn(sl) for sl in self.target_batches()]`` on the context's ``threads`` (each batch writes
        its own rows of the attack's scores)."""
        return thread_map(fn, self.target_batches(), self.threads)

    def empty_scores(self) -> np.ndarray:
        """A (T, N_train) float32 array for an attack to fill a batch of targets at a time."""
        return np.empty((self.n_targets, int(self.train.sum())), dtype=np.float32)

    # --- reading -----------------------------------------------------------------------------
    def target_batches(self) -> list[slice]:
        """Slices of targets whose logits fit the memory budget together."""
        per = max(1, self.n_samples * self.n_classes * 8 * 8)
        b = max(1, min(self.n_targets, self.batch_bytes // per))
        return [slice(s, min(s + b, self.n_targets)) for s in range(0, self.n_targets, b)]

    def target_logits(self, sl: slice | np.ndarray) -> np.ndarray:
        """Identity-query logits (B, N, C), float64, of the shadows ``sl`` (positions among done shadows)."""
        return np.asarray(self.logits[sl, :, 0, :].compute(), dtype=np.float64)

    def target_signals(self, sl: slice) -> np.ndarray:
        """:data:`SIGNALS` of targets ``sl``: (B, N, 3), float64.

        Every attack reads them, so all T targets' signals are computed once, on first use, and
        kept as float32 (T x N x 3 x 4 bytes) instead of re-reading the logits and recomputing Mentr
        per attack. Signals are float32 quantities throughout (the store's precision): the sums of
        :meth:`signal_sums` are of the same rounded values, so removing a target cancels exactly.
        """
        with self._lock:
            if self._tsig is None:
                self._fill_target_signals()
        return self._tsig[sl].astype(np.float64)

    def _fill_target_signals(self) -> None:
        cache = np.empty((self.n_targets, self.n_samples, len(SIGNALS)), dtype=np.float32)
        for b in self.target_batches():
            cache[b] = signals_from_logits(self.target_logits(b), self.label[None, :])
        self._tsig = cache

    # --- one pass over all shadows -----------------------------------------------------------
    def signal_sums(self) -> tuple[GaussianSums, Partners, np.ndarray, np.ndarray]:
        """Running sums of :data:`SIGNALS` over all shadows, partners, Song's histograms and bin edges.

        Computed once (one dask pass over the logits, the sums and the histograms together) and
        cached. Returns ``(sums, partner, hist, edges)``: ``sums``/``partner`` over the signal axis
        (Q=3, in :data:`SIGNALS` order); ``hist`` the :func:`song_histogram` of all shadows;
        ``edges`` the Mentr bin edges (quantiles of the first shadow's train-split Mentr: the grid
        uses no membership information).
        """
        with self._lock:
            if self._sums is None:
                r = reduce_over_tasks(self.logits, self.keep, self.label, self.train, 0, phi=False, extras=False,
                                      song_bins=self.song_bins, threads=self.threads)
                self._sums = (r.sig_sums, r.sig_partner, r.hist, r.edges)
        return self._sums

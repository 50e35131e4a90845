"""One pass over a store's logits computing every per-sample reduction over shadows.

The analysis needs, per sample, sums over shadows of several functions of the logits: the IN/OUT
running sums of phi (LiRA, privacy score) and of the classical attacks' signals (loss, p_y,
Mentr), the partners' values (balanced leave-pair-out), the correctness counts (memorization),
Song's histograms, the Q x Q moments of the theory's Gaussian fits and the targets' OOD scores.
Composing them as separate lazy xarray/dask expressions lets the scheduler keep every chunk alive
until its last consumer has run (measured ~0.6 GB for a 256 x 22,000 x 9 store, growing with the
store). Here the logits are cut into tiles (a few whole shadows x a fixed block of samples,
:data:`PASS_SAMPLES`) and each sample block is one chain of tasks that folds its tiles, in shadow
order, into one running set of per-sample sums: the blocks run in parallel, memory holds the
blocks' sums (the size of the result) plus the tiles in flight whatever the number of shadows, and
the logits are read exactly once.

:func:`reduce_over_tasks` is the one reducer; its switches say what to compute:
:func:`one_pass` (the report: everything, plus the targets' own phi and signals kept as float32),
:func:`reduce_over_shadows` (phi and counts only: adaptive waves) and
:meth:`analysis.attacks.AttackContext.signal_sums` (signals only) are views of it.

The per-row statistics of the logits come from :mod:`analysis.kernels.logit_kernels` (the loop
:func:`analysis.store_io.load.phi_from_logits` and :func:`analysis.kernels.logit_kernels.signals_from_logits` use),
and every per-sample sum of a task from one compiled loop over its rows (:func:`_accumulate`, whose
Python face is :class:`TaskSums`: one field per sum, None where not asked for),
checked against :func:`analysis.kernels.stats.gaussian_sums`, :func:`analysis.kernels.stats.partners`,
:func:`analysis.studies.memorization.memorization_counts` and :func:`analysis.attacks._common.song_histogram`
in the tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import dask
import numba
import numpy as np

from analysis.kernels.logit_kernels import row_stats, signals_from_logits, song_bin
from analysis.kernels.stats import MemCounts, fits_from_sums
from analysis.store_io.load import ShadowData, phi_from_logits
from analysis.store_io.spill import DiskRows, release_freed_memory
from analysis.kernels.stats import GaussianSums, Partners

__all__ = ["reduce_over_shadows", "reduce_over_tasks", "one_pass", "PassResult", "TaskSums", "shadows_per_task"]

#: The rows of :attr:`TaskSums.phi` and :attr:`TaskSums.sig`, in order.
SUM_ROWS = ("s1_in", "s2_in", "s1_out", "s2_out", "x_in", "x_out")


@dataclass
class PassResult:
    """What one read of the logits gives; fields not asked for are None.

    Attributes
    ----------
    sums, partner, counts
        phi over all queries (sums, partners) and the identity query's correctness counts.
    sig_sums, sig_partner, hist, edges
        loss, prob, Mentr of the identity query (:data:`analysis.attacks.SIGNALS` order), Song's
        histograms and their Mentr bin edges (:meth:`analysis.attacks.AttackContext.signal_sums`).
    target_phi : ndarray (T, N, Q) float32
        The targets' phi (LiRA), kept so the targets are not read again.
    target_signals : ndarray (T, N, 3) float32
        The targets' signals (every other attack).
    fits : analysis.studies.theory.GaussFits
        Per-sample IN/OUT Gaussian fits of phi (means, Q x Q covariances) over all shadows.
    ood : dict name -> ndarray (N,)
        Mean MSP and Energy over the targets (:func:`analysis.studies.ood.ood_scores_from_store`).
    phi_all : ndarray (M, N, Q) float32 or None
        Every shadow's phi, when asked for and it fits the budget.
    target_scores : dict name -> ndarray (T, N_train) float32
        What each of the ``scorers`` returned for the targets.
    """

    sums: GaussianSums | None = None
    partner: Partners | None = None
    counts: MemCounts | None = None
    sig_sums: GaussianSums | None = None
    sig_partner: Partners | None = None
    hist: np.ndarray | None = None
    edges: np.ndarray | None = None
    target_phi: np.ndarray | None = None
    target_signals: np.ndarray | None = None
    fits: Any = None
    ood: dict | None = None
    phi_all: np.ndarray | None = None
    target_scores: dict | None = None


@numba.njit(cache=True, nogil=True)
def _add_row(acc, x, shift, r, i, is_in, first_in, first_out):  # pragma: no cover - compiled
    """Add row (r, i) of ``x`` to the sums ``acc`` (6, N, Q): ``x - shift`` and its square on its
    side (IN: 0, 1; OUT: 2, 3), and its raw value as the sample's IN (4) or OUT (5) partner."""
    side = 0 if is_in else 2
    for a in range(x.shape[2]):
        d = x[r, i, a] - shift[i, a]
        acc[side, i, a] += d
        acc[side + 1, i, a] += d * d
        if first_in:
            acc[4, i, a] = x[r, i, a]
        if first_out:
            acc[5, i, a] = x[r, i, a]


@numba.njit(cache=True, nogil=True)
def _accumulate(z0, label, keep, sidx, first_in, first_out, phi, shift_phi, sig, shift_sig, mentr_edges, train,
                n_classes, cross, counts, ps, ss, hist, cin, cout):  # pragma: no cover - compiled
    """One loop over a task's (shadow, sample) rows adding every per-sample sum of the pass.

    ``counts`` (N, 4): IN shadows, OUT shadows, correct IN, correct OUT (argmax of the identity
    query's logits ``z0`` (S, N, C) == label); ``ps`` (6, N, Q) for phi and ``ss`` (6, N, 3) for
    the signals (skipped when 0 rows): sums of ``x - shift`` and of its square over IN and over
    OUT shadows, then the partners' values (``x`` of the shadow ``first_in`` / ``first_out``);
    ``hist``: Song's counts per (class, OUT/IN, Mentr bin) of train samples (bins of
    ``mentr_edges``' inner edges, ``searchsorted(..., side="right")``); ``cin``/``cout`` (N, Q, Q)
    the shifted phi's cross products (when ``cross``). The sums run over the shadows in order,
    as numpy's reductions over the shadow axis do.
    """
    s_n, n = keep.shape
    q = phi.shape[2]
    want_phi = ps.shape[0] > 0
    want_sig = ss.shape[0] > 0
    nb = mentr_edges.size - 1
    for r in range(s_n):
        sh = sidx[r]
        for i in range(n):
            k = keep[r, i]
            top = 0
            m = z0[r, i, 0]
            for j in range(1, z0.shape[2]):
                if z0[r, i, j] > m:
                    m = z0[r, i, j]
                    top = j
            ok = 1.0 if top == label[i] else 0.0
            if k:
                counts[i, 0] += 1.0
                counts[i, 2] += ok
            else:
                counts[i, 1] += 1.0
                counts[i, 3] += ok
            if want_phi:
                _add_row(ps, phi, shift_phi, r, i, k, sh == first_in[i], sh == first_out[i])
                if cross:
                    for a in range(q):
                        da = phi[r, i, a] - shift_phi[i, a]
                        for b in range(q):
                            db = phi[r, i, b] - shift_phi[i, b]
                            if k:
                                cin[i, a, b] += da * db
                            else:
                                cout[i, a, b] += da * db
            if want_sig:
                _add_row(ss, sig, shift_sig, r, i, k, sh == first_in[i], sh == first_out[i])
                if train[i]:  # Song's histogram of Mentr, as song_histogram
                    hist[(label[i] * 2 + (1 if k else 0)) * nb + song_bin(mentr_edges, sig[r, i, 2])] += 1.0


@dataclass
class TaskSums:
    """The per-sample running sums of one sample block of the pass (blocks joined by :func:`_concat_blocks`).

    Every field not asked for is None; :meth:`accumulate` hands the compiled loop
    (:func:`_accumulate`) 0-row arrays in their place, which it reads as "not asked for".

    Attributes
    ----------
    counts : ndarray (N, 4)
        IN shadows, OUT shadows, correct IN, correct OUT (identity query's argmax == label).
    phi, sig : ndarray (6, N, Q) and (6, N, 3), optional
        Of phi and of the signals, rows :data:`SUM_ROWS`: sums of ``x - shift`` and of its square
        over IN and over OUT shadows, then the partners' values (``x`` of the shadow ``first_in`` /
        ``first_out``; zero in the tasks without that shadow).
    hist : ndarray (C * 2 * B,), optional
        Song's counts per (class, OUT/IN, Mentr bin) of train samples (with ``sig``).
    cross_in, cross_out : ndarray (N, Q, Q), optional
        The shifted phi's cross products over IN / OUT shadows (the theory's Gaussian fits).
    ood : ndarray (N, 2), optional
        MSP and Energy of the targets among the task's shadows, summed (with ``cross_*``).
    targets : list of (s0, j0, c0, phi, signals, scores)
        The block's targets' own values (every shadow's phi when kept), per tile: first shadow,
        first sample, first train-sample column.
    """

    counts: np.ndarray
    phi: np.ndarray | None = None
    sig: np.ndarray | None = None
    hist: np.ndarray | None = None
    cross_in: np.ndarray | None = None
    cross_out: np.ndarray | None = None
    ood: np.ndarray | None = None
    targets: list = field(default_factory=list)

    @classmethod
    def zeros(cls, n: int, q: int, n_classes: int, n_bins: int, *, phi: bool, signals: bool,
              cross: bool) -> "TaskSums":
        """Zero sums of ``n`` samples, ``q`` queries: the fields asked for, None for the others."""
        return cls(counts=np.zeros((n, 4)), phi=np.zeros((6, n, q)) if phi else None,
                   sig=np.zeros((6, n, 3)) if signals else None,
                   hist=np.zeros(n_classes * 2 * n_bins) if signals else None,
                   cross_in=np.zeros((n, q, q)) if cross else None, cross_out=np.zeros((n, q, q)) if cross else None)

    def accumulate(self, z0: np.ndarray, label: np.ndarray, keep: np.ndarray, sidx: np.ndarray,
                   first_in: np.ndarray, first_out: np.ndarray, phi: np.ndarray | None, shift_phi: np.ndarray | None,
                   sig: np.ndarray | None, shift_sig: np.ndarray | None, edges: np.ndarray | None,
                   train: np.ndarray) -> None:
        """Add the rows (shadows ``sidx``) of one task in place: :func:`_accumulate` on these fields."""
        q = self.phi.shape[2] if self.phi is not None else (phi.shape[2] if phi is not None else 0)
        none3 = np.empty((0, 0, 0))
        cross = self.cross_in is not None
        _accumulate(z0, label, keep, sidx, first_in, first_out,
                    np.empty((0, 0, q)) if phi is None else phi, np.empty((0, q)) if shift_phi is None else shift_phi,
                    np.empty((0, 0, 3)) if sig is None else sig, np.empty((0, 3)) if shift_sig is None else shift_sig,
                    np.zeros(2) if edges is None else np.asarray(edges, dtype=np.float64), train, z0.shape[-1],
                    cross, self.counts, np.empty((0, 0, q)) if self.phi is None else self.phi,
                    np.empty((0, 0, 3)) if self.sig is None else self.sig,
                    np.empty(0) if self.hist is None else self.hist,
                    none3 if not cross else self.cross_in, none3 if not cross else self.cross_out)


def _fold(acc: TaskSums | None, z: np.ndarray, s0: int, j0: int, keep: np.ndarray, label: np.ndarray,
          train: np.ndarray, shift_phi: np.ndarray | None, shift_sig: np.ndarray | None, first_in: np.ndarray,
          first_out: np.ndarray, edges: np.ndarray | None, n_targets: int, what: frozenset,
          keep_all_phi: bool, scorers: dict | None = None, sinks: dict | None = None) -> TaskSums:
    """Add the tile ``z`` (shadows ``s0 .. s0 + len(z)``, samples ``j0 .. j0 + z.shape[1]``) to the
    sample block's running sums ``acc`` (None: the block's first tile) in place and return it.

    The per-sample arrays (``keep`` (M, N), ``label``, ``train``, shifts, partners) are whole; the
    tile's samples are sliced here. ``acc.targets`` gains [(s0, j0, phi, signals, scores)] of the
    targets among the tile's shadows (phi of every shadow when ``keep_all_phi``), or, with ``sinks``
    ({"phi", "signals", scorer name} -> :class:`DiskRows`), those values are written to disk at
    their rows and columns instead."""
    z = np.asarray(z)
    s, n = z.shape[0], z.shape[1]
    j1 = j0 + n
    sidx = np.arange(s0, s0 + s)
    kp = np.ascontiguousarray(keep[s0:s0 + s, j0:j1], dtype=bool)
    label, tr = label[j0:j1], train[j0:j1]
    t = sidx < n_targets
    # every per-row statistic of the identity query from one compiled loop per row (the functions
    # phi_from_logits, signals_from_logits, ood_rows and shokri_rows use the same loop); the OOD
    # scores and Shokri's features for the targets' rows only
    want = {"phi": "phi" in what, "signals": "signals" in what}
    on_t = row_stats(z[t, :, 0, :], label[None, :], **want, ood="extras" in what, features=bool(scorers))
    on_o = row_stats(z[~t, :, 0, :], label[None, :], **want)

    def both(k: str) -> np.ndarray:
        a, b = on_t[k], on_o[k]
        full = np.empty((s,) + a.shape[1:], dtype=a.dtype)
        full[t], full[~t] = a, b
        return full.astype(np.float32).astype(np.float64)  # float32-rounded, as the public functions

    phi = sig = None
    q = z.shape[2]
    if "phi" in what:
        phi = both("phi")[..., None]  # (s, n, q)
        if q > 1:
            phi = np.concatenate([phi, phi_from_logits(z[:, :, 1:, :], label[None, :, None])], axis=2)
    if "signals" in what:
        sig = both("signals")  # (s, n, 3)
    # every per-sample sum over this tile's shadows in one compiled loop (no (s, n) temporaries),
    # added to the block's running sums: each sample's sums run over the shadows in order
    # (the theory's multivariate Gaussian fits need the full Q x Q cross sums: ``cross``)
    cross = "extras" in what
    if acc is None:
        acc = TaskSums.zeros(n, q, z.shape[-1], 0 if sig is None else len(edges) - 1, phi=phi is not None,
                             signals=sig is not None, cross=cross)
        if cross:
            acc.ood = np.zeros((n, 2))
    acc.accumulate(np.ascontiguousarray(z[:, :, 0, :]), label, kp, sidx, first_in[j0:j1], first_out[j0:j1], phi,
                   None if shift_phi is None else shift_phi[j0:j1], sig,
                   None if shift_sig is None else shift_sig[j0:j1], edges, tr)
    if cross and t.any():  # the OOD detectors' scores of the target models (identity query), summed over targets
        acc.ood += on_t["ood"].sum(0)  # (MSP, Energy)
    rows = np.ones(s, dtype=bool) if keep_all_phi else t
    scored = {}
    if scorers and t.any():  # attacks that need only each target's own features (Shokri's classifiers)
        ft = on_t["features"][:, tr]
        scored = {name: fn(ft, sidx[t]) for name, fn in scorers.items()}
    piece = (None if phi is None else phi[rows].astype(np.float32), None if sig is None else sig[t].astype(np.float32))
    c0 = int(np.count_nonzero(train[:j0]))  # the tile's first train sample among the scores' columns
    if sinks is not None:  # the targets' rows wait on disk (the targets come first: rows from s0 on)
        for key, v in (("phi", piece[0]), ("signals", piece[1]), *scored.items()):
            if key in sinks and v is not None:
                sinks[key].write(s0, v, col=j0 if key in ("phi", "signals") else c0)
        return acc
    if rows.any():
        acc.targets.append((s0, j0, c0, *piece, scored))
    return acc


def shadows_per_task(shape: tuple[int, ...]) -> int:
    """Shadows per task of the pass: ~16 MB of logits (shape (M, N, Q, C) float32). The per-row
    loops are compiled, so the cost per task is numpy call overhead, per task. Tiles of the pass
    are these shadows x :data:`PASS_SAMPLES` samples."""
    m, rest = shape[0], int(np.prod(shape[1:]))
    return max(1, min(m, (16 << 20) // max(1, rest * 4)))


#: Samples per block of the pass. Every per-sample sum is a sum over shadows only, so the blocks
#: are independent and each block's sums are one running total over the shadows in order: memory
#: holds each block's sums plus the tiles in flight, however many shadows there are. Fixed, not
#: derived from the memory budget or the threads, so no float rounding can depend on them (the
#: Shokri scorers' matrix products see the same row blocks whatever the settings).
PASS_SAMPLES = 8192


def _concat_blocks(blocks: list[TaskSums]) -> TaskSums:
    """The per-block sums of consecutive sample blocks as one (N, ...) :class:`TaskSums`."""
    cat = lambda name, axis: (None if getattr(blocks[0], name) is None  # noqa: E731
                              else np.concatenate([getattr(b, name) for b in blocks], axis=axis))
    hist = None
    if blocks[0].hist is not None:  # counts of the train samples per bin: the blocks' add exactly
        hist = blocks[0].hist.copy()
        for b in blocks[1:]:
            hist += b.hist
    return TaskSums(counts=cat("counts", 0), phi=cat("phi", 1), sig=cat("sig", 1), hist=hist,
                    cross_in=cat("cross_in", 0), cross_out=cat("cross_out", 0), ood=cat("ood", 0),
                    targets=[p for b in blocks for p in b.targets])


def reduce_over_tasks(logits: Any, keep: np.ndarray, label: np.ndarray, train: np.ndarray, n_targets: int = 0, *,
                      phi: bool = True, signals: bool = True, extras: bool = True, song_bins: int = 512,
                      phi_budget: int = 0, scorers: dict | None = None, progress: bool = False,
                      threads: int = 1, spill_dir: Any = None) -> PassResult:
    """The one reducer (see the module docstring): what is asked for, from one read of ``logits``.

    Parameters
    ----------
    logits : dask array (M, N, Q, C)
        Logits of the done shadows (any chunking; chunks are merged along samples).
    keep : bool ndarray (M, N)
    label : int ndarray (N,)
    train : bool ndarray (N,)
        Train-split samples (Song's histograms and the Mentr grid use them only).
    n_targets : int
        T: the first T shadows are targets (their phi/signals are kept, their OOD scores summed).
    phi, signals, extras : bool
        Compute phi's sums and partners; the signals' sums, partners and Song's histograms; the
        theory's Q x Q moments and the targets' OOD means (``extras`` needs ``phi``).
    song_bins : int
        Mentr quantile bins of Song's histograms.
    phi_budget : int
        Keep every shadow's phi when it fits this many bytes as float32 (0: never).
    scorers : dict name -> callable, optional
        ``fn(features, positions)``: (B, N_train) float32 scores of targets from their Shokri
        features (B, N_train, C + 3) (:func:`analysis.kernels.logit_kernels.shokri_rows`, identity query,
        train samples) and positions among the done shadows; gathered into
        ``target_scores[name]`` (T, N_train), so no attack re-reads the targets' logits.
    progress : bool
        A tqdm bar over the dask tasks.
    threads : int
        Dask threads the tasks run on (:mod:`analysis.kernels.threads`; no result depends on it).
    spill_dir : path, optional
        Where the targets' phi (every shadow's, when kept), signals and scores are written as the
        tasks compute them (:class:`analysis.store_io.spill.DiskRows`, ``.npy`` files the caller
        removes) instead of being held: the result's ``target_phi``, ``phi_all``, ``target_signals``
        and ``target_scores`` are then :class:`DiskRows` (same values, read a block of rows at a time).
    """
    if extras and not phi:
        raise ValueError("extras need phi")
    m, n, q, c = logits.shape
    # tiles of ~16 MB of whole shadows, split into fixed sample blocks (see PASS_SAMPLES)
    logits = logits.rechunk({0: shadows_per_task(logits.shape), 1: PASS_SAMPLES, 2: -1, 3: -1})
    keep = np.asarray(keep, dtype=bool)
    label = np.asarray(label, dtype=np.int64)
    train = np.asarray(train, dtype=bool)
    # shifts close to each sample's mean (the first done shadow's values): stable second moments
    z0 = np.asarray(logits[0].compute())
    shift_phi = phi_from_logits(z0, label[:, None]) if phi else None
    shift_sig = signals_from_logits(z0[:, 0, :], label) if signals else None
    del z0
    edges = None
    if signals:
        e = np.unique(np.quantile(shift_sig[train, 2], np.linspace(0, 1, song_bins + 1))) if train.any() \
            else np.zeros(1)
        edges = e if e.size >= 2 else np.array([e[0] - 1.0, e[0] + 1.0])
    first_in = np.where(keep.any(0), keep.argmax(0), -1)
    first_out = np.where((~keep).any(0), (~keep).argmax(0), -1)
    what = frozenset(k for k, on in (("phi", phi), ("signals", signals), ("extras", extras)) if on)
    keep_all = phi and m * n * q * 4 <= phi_budget

    # Constants enter the graph once each (not hashed and embedded per task).
    consts = [dask.delayed(a, pure=False) for a in (keep, label, train, shift_phi, shift_sig, first_in, first_out,
                                                     edges)]
    fold = dask.delayed(_fold, pure=False)
    starts = np.cumsum((0,) + logits.chunks[0][:-1])
    j_starts = np.cumsum((0,) + logits.chunks[1][:-1])
    scorers_d = dask.delayed(scorers, pure=False) if scorers else None
    sinks = None
    if spill_dir is not None:
        from pathlib import Path

        d = Path(spill_dir)
        d.mkdir(parents=True, exist_ok=True)
        sinks = {}
        if phi:
            sinks["phi"] = DiskRows(d / "target_phi.npy", (m if keep_all else n_targets, n, q))
        if signals:
            sinks["signals"] = DiskRows(d / "target_signals.npy", (n_targets, n, 3))
        for name in scorers or {}:
            sinks[name] = DiskRows(d / f"target_scores_{name}.npy", (n_targets, int(train.sum())))
    sinks_d = dask.delayed(sinks, pure=False) if sinks is not None else None
    # One chain per sample block, folding its tiles in shadow order into one running TaskSums: the
    # blocks run in parallel, and only the blocks' sums and the tiles in flight are held (a tree
    # of partial sums over shadow tasks held several full-size partials at once: ~0.3 GB each at
    # the paper's 51,000 x 18 queries with the theory's cross sums).
    tiles = logits.to_delayed()
    chains = []
    for b, j0 in enumerate(j_starts):
        acc = None
        for g, s0 in enumerate(starts):
            acc = fold(acc, tiles[g, b, 0, 0], int(s0), int(j0), *consts, n_targets, what, keep_all, scorers_d,
                       sinks_d)
        chains.append(acc)
    from threadpoolctl import threadpool_limits

    # the tasks run in parallel already: a multi-threaded BLAS inside each (the scorers' matrix
    # products) would oversubscribe the cores (measured 30% slower on 2 cores)
    with threadpool_limits(limits=1, user_api="blas"), dask.config.set(num_workers=int(threads)):
        if progress:
            from tqdm.dask import TqdmCallback

            with TqdmCallback(desc="one pass over the logits"):
                (blocks,) = dask.compute(chains)
        else:
            (blocks,) = dask.compute(chains)
    tot = _concat_blocks(list(blocks))
    del blocks

    as_int = lambda a: np.rint(a).astype(np.int64)  # noqa: E731  (exact: small integer sums in float64)
    cnt = tot.counts
    n_in, n_out = as_int(cnt[:, 0]), as_int(cnt[:, 1])
    r = PassResult(counts=MemCounts(n_in=n_in, c_in=as_int(cnt[:, 2]), n_out=n_out, c_out=as_int(cnt[:, 3])))

    def side(acc: np.ndarray, shift: np.ndarray) -> tuple[GaussianSums, Partners]:
        s1_in, s2_in, s1_out, s2_out, x_in, x_out = acc  # SUM_ROWS
        return (GaussianSums(shift=shift, n_in=n_in, s1_in=s1_in, s2_in=s2_in, n_out=n_out, s1_out=s1_out,
                             s2_out=s2_out),
                Partners(first_in=first_in, first_out=first_out, x_in=x_in, x_out=x_out))

    if sinks is not None:  # the targets' arrays are on disk already
        if phi:
            r.sums, r.partner = side(tot.phi, shift_phi)
            r.target_phi, r.phi_all = sinks["phi"], (sinks["phi"] if keep_all else None)
        if signals:
            r.sig_sums, r.sig_partner = side(tot.sig, shift_sig)
            r.hist, r.edges = tot.hist, edges
            r.target_signals = sinks["signals"]
        if scorers:
            r.target_scores = {name: sinks[name] for name in scorers}
        tot.targets = []
    if sinks is None and phi:
        r.sums, r.partner = side(tot.phi, shift_phi)
        kept = np.empty((m if keep_all else n_targets, n, q), dtype=np.float32)
        r.target_phi, r.phi_all = kept[:n_targets], (kept if keep_all else None)
    if sinks is None and signals:
        r.sig_sums, r.sig_partner = side(tot.sig, shift_sig)
        r.hist, r.edges = tot.hist, edges
        r.target_signals = np.empty((n_targets, n, 3), dtype=np.float32)
    if sinks is None and scorers:
        r.target_scores = {name: np.empty((n_targets, int(train.sum())), dtype=np.float32) for name in scorers}
    pieces, tot.targets = tot.targets, []
    while pieces:  # each tile's piece is released once copied: no second copy of the targets' arrays
        if len(pieces) % 16 == 0:
            release_freed_memory()  # the pieces came from the worker threads' heaps
        s0, j0, c0, ph, sg, sc = pieces.pop()
        if phi:
            kept[s0:s0 + len(ph), j0:j0 + ph.shape[1]] = ph
        if signals:
            r.target_signals[s0:s0 + len(sg), j0:j0 + sg.shape[1]] = sg
        for name, v in sc.items():
            r.target_scores[name][s0:s0 + len(v), c0:c0 + v.shape[1]] = v
        del ph, sg, sc
    if extras:
        r.fits = fits_from_sums(shift_phi, n_in, r.sums.s1_in, tot.cross_in, n_out, r.sums.s1_out,
                                tot.cross_out)
        ood = tot.ood / max(1, n_targets)
        r.ood = {"msp": ood[:, 0], "energy": ood[:, 1]}
    return r


def one_pass(data: ShadowData, n_targets: int, *, train: np.ndarray | None = None, song_bins: int = 512,
             phi_budget: int = 512 * 2**20, scorers: dict | None = None, progress: bool = False,
             threads: int = 1, spill_dir: Any = None) -> PassResult:
    """Everything :func:`analysis.output.report.analyze` needs from a store's logits, from one read.

    Every field of :class:`PassResult`: the phi and signal sums with partners, correctness counts,
    Song's histograms, the theory's Gaussian fits, the targets' OOD means, the targets' phi and
    signals (float32, T x N x (Q + 3) x 4 bytes: no attack reads the targets' logits again), and
    every shadow's phi when it fits ``phi_budget`` bytes (the shadow-count sweep then reads nothing);
    with ``spill_dir`` the targets' arrays are written there instead (:func:`reduce_over_tasks`).
    """
    train = (np.asarray(data.split) == "train") if train is None else train
    logits = data.logits_blocks(shadows_per_task(data.logits.shape))  # one zarr read per task
    return reduce_over_tasks(logits, data.keep.values, data.label, train, n_targets, song_bins=song_bins,
                             phi_budget=phi_budget, scorers=scorers, progress=progress, threads=threads,
                             spill_dir=spill_dir)


def reduce_over_shadows(data: ShadowData, *, progress: bool = False, threads: int = 1
                        ) -> tuple[GaussianSums, Partners, MemCounts]:
    """Sums of phi over IN/OUT shadows, partner values and correctness counts, in one pass.

    Parameters
    ----------
    data : ShadowData
        The store's done shadows.
    progress : bool
        Show a tqdm bar over the dask tasks.

    Returns
    -------
    sums : GaussianSums
        Over all done shadows; shifted by the first done shadow's phi.
    partner : Partners
        First IN / first OUT done shadow of each sample and their phi.
    counts : MemCounts
        IN/OUT shadows and their correct predictions per sample.
    """
    logits = data.logits_blocks(shadows_per_task(data.logits.shape))
    r = reduce_over_tasks(logits, data.keep.values, data.label, np.asarray(data.split) == "train", 0,
                          signals=False, extras=False, progress=progress, threads=threads)
    return r.sums, r.partner, r.counts

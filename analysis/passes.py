"""One pass over a store's logits computing every per-sample reduction over shadows.

The analysis needs, per sample, sums over shadows of several functions of the logits: the IN/OUT
running sums of phi (LiRA, privacy score), the partners' phi (balanced leave-pair-out) and the
correctness counts (memorization). Composing them as separate lazy xarray/dask expressions lets
the scheduler keep every phi chunk alive until its last consumer has run, which measured ~0.6 GB
for a 256 x 22,000 x 9 store and would grow with the store. Here one task per logits chunk turns
that chunk into a single small (samples, K) array of partial sums, so memory stays at a few chunks
per thread whatever the number of shadows, and the logits are read exactly once.

The per-chunk work reuses the numpy paths of :func:`analysis.stats.gaussian_sums`,
:func:`analysis.memorization.memorization_counts` and :func:`analysis.load.phi_from_logits`, so
the formulas live in one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import dask
import dask.array as da
import numpy as np

from .load import ShadowData, phi_from_logits
from .memorization import MemCounts, memorization_counts
from .stats import GaussianSums, Partners, gaussian_sums

__all__ = ["reduce_over_shadows", "one_pass", "PassResult"]


def _block(z: np.ndarray, keep: np.ndarray, label: np.ndarray, shift: np.ndarray, first_in: np.ndarray,
           first_out: np.ndarray, sidx: np.ndarray) -> np.ndarray:
    """Partial sums of one logits chunk, packed as (1, n, 6 Q + 4) float64.

    Layout along the last axis: s1_in, s2_in, s1_out, s2_out, x_in (partner), x_out (partner), each
    Q wide, then n_in, n_out, c_in, c_out.
    """
    keep = np.asarray(keep, dtype=bool)
    x = phi_from_logits(z, label[None, :, None])
    g = gaussian_sums(x, keep, shift)
    x_in = np.where((sidx[:, None] == first_in[None, :])[..., None], x, 0.0).sum(axis=0)
    x_out = np.where((sidx[:, None] == first_out[None, :])[..., None], x, 0.0).sum(axis=0)
    correct = z[:, :, 0, :].argmax(axis=-1) == label[None, :]  # identity query
    c = memorization_counts(correct, keep)
    counts = np.stack([c.n_in, c.n_out, c.c_in, c.c_out], axis=-1).astype(np.float64)
    return np.concatenate([g.s1_in, g.s2_in, g.s1_out, g.s2_out, x_in, x_out, counts], axis=-1)[None]


def reduce_over_shadows(data: ShadowData, *, progress: bool = False
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
    logits = data.logits.data  # (M, N, Q, C) dask, one shadow per chunk
    keep_np = np.asarray(data.keep.values, dtype=bool)
    m, n, q, _ = logits.shape
    label = np.asarray(data.label, dtype=np.int64)
    # The shift only needs to be close to each sample's mean: the first done shadow's phi.
    shift = phi_from_logits(np.asarray(logits[0].compute()), label[:, None])
    first_in = np.where(keep_np.any(0), keep_np.argmax(0), -1)
    first_out = np.where((~keep_np).any(0), (~keep_np).argmax(0), -1)

    n_chunks = logits.chunks[1]
    on_samples = lambda a: da.from_array(a, chunks=(n_chunks,) + a.shape[1:])  # noqa: E731
    k = 6 * q + 4
    parts = da.blockwise(
        _block, "snk",
        logits, "snqc",
        da.from_array(keep_np, chunks=(logits.chunks[0], n_chunks)), "sn",
        on_samples(label), "n",
        on_samples(shift), "nq",
        on_samples(first_in), "n",
        on_samples(first_out), "n",
        da.arange(m, chunks=(logits.chunks[0],)), "s",
        new_axes={"k": k}, concatenate=True, dtype=np.float64, meta=np.empty((0, 0, 0), np.float64),
    )
    total = parts.sum(axis=0)  # tree reduction over shadows: (N, K)
    if progress:
        from tqdm.dask import TqdmCallback

        with TqdmCallback(desc="per-sample sums over shadows"):
            (t,) = dask.compute(total)
    else:
        (t,) = dask.compute(total)

    def col(i: int) -> np.ndarray:
        return t[:, i * q:(i + 1) * q]

    cnt = t[:, 6 * q:]
    as_int = lambda a: np.rint(a).astype(np.int64)  # noqa: E731  (exact: small integer sums in float64)
    sums = GaussianSums(shift=shift, n_in=as_int(cnt[:, 0]), s1_in=col(0), s2_in=col(1),
                        n_out=as_int(cnt[:, 1]), s1_out=col(2), s2_out=col(3))
    partner = Partners(first_in=first_in, first_out=first_out, x_in=col(4), x_out=col(5))
    counts = MemCounts(n_in=as_int(cnt[:, 0]), c_in=as_int(cnt[:, 2]), n_out=as_int(cnt[:, 1]),
                       c_out=as_int(cnt[:, 3]))
    return sums, partner, counts


# --- the report's single pass ---------------------------------------------------------------------

@dataclass
class PassResult:
    """Everything :func:`analysis.report.analyze` needs from the logits, from one read of them.

    Attributes
    ----------
    sums, partner, counts
        As :func:`reduce_over_shadows` (phi over all queries; correctness of the identity query).
    sig_sums, sig_partner, hist, edges
        As :meth:`analysis.attacks.AttackContext.signal_sums` (loss, prob, Mentr of the identity query).
    target_phi : ndarray (T, N, Q) float32
        The targets' phi (LiRA), kept so the targets are not read again.
    target_signals : ndarray (T, N, 3) float32
        The targets' signals (every other attack).
    fits : analysis.theory.GaussFits
        Per-sample IN/OUT Gaussian fits of phi (means, Q x Q covariances) over all shadows.
    ood : dict name -> ndarray (N,)
        Mean MSP and Energy over the targets (:func:`analysis.ood.ood_scores_from_store`).
    phi_all : ndarray (M, N, Q) float32 or None
        Every shadow's phi, when it fits the budget.
    """

    sums: GaussianSums
    partner: Partners
    counts: MemCounts
    sig_sums: GaussianSums
    sig_partner: Partners
    hist: np.ndarray
    edges: np.ndarray
    target_phi: np.ndarray
    target_signals: np.ndarray
    fits: Any
    ood: dict
    phi_all: np.ndarray | None


def _chunk_stats(z: np.ndarray, s0: int, keep: np.ndarray, label: np.ndarray, train: np.ndarray,
                 shift_phi: np.ndarray, shift_sig: np.ndarray, first_in: np.ndarray, first_out: np.ndarray,
                 edges: np.ndarray, n_targets: int, keep_all_phi: bool) -> tuple[np.ndarray, np.ndarray, list]:
    """Partial sums of shadows ``s0 .. s0 + len(z)``: (packed (N, 6Q + 24 + 2Q^2) sums, Song
    histogram, [(s0, phi, target signals)] with the phi of the targets (or of every shadow when
    ``keep_all_phi``) among them)."""
    from .attacks._common import signals_from_logits, song_histogram
    from .ood import energy_score, msp_score

    z = np.asarray(z)
    s = z.shape[0]
    sidx = np.arange(s0, s0 + s)
    kp = np.asarray(keep[s0:s0 + s], dtype=bool)
    phi = phi_from_logits(z, label[None, :, None])  # (s, n, q)
    sig = signals_from_logits(z[:, :, 0, :], label[None, :])  # (s, n, 3)
    is_in = (sidx[:, None] == first_in[None, :])[..., None]
    is_out = (sidx[:, None] == first_out[None, :])[..., None]
    packed = []
    for x, shift in ((phi, shift_phi), (sig, shift_sig)):
        g = gaussian_sums(x, kp, shift)
        packed += [g.s1_in, g.s2_in, g.s1_out, g.s2_out, np.where(is_in, x, 0.0).sum(0), np.where(is_out, x, 0.0).sum(0)]
    c = memorization_counts(z[:, :, 0, :].argmax(axis=-1) == label[None, :], kp)
    packed.append(np.stack([c.n_in, c.n_out, c.c_in, c.c_out], axis=-1).astype(np.float64))
    # full Q x Q cross sums of the shifted phi (the multivariate Gaussian fits of the theory checks)
    d = phi - shift_phi
    d_in = np.where(kp[..., None], d, 0.0)
    d_out = d - d_in
    n, q = d.shape[1], d.shape[2]
    packed += [np.einsum("snq,snr->nqr", d_in, d_in).reshape(n, q * q),
               np.einsum("snq,snr->nqr", d_out, d_out).reshape(n, q * q)]
    # the OOD detectors' scores of the target models (identity query), summed over targets
    t = sidx < n_targets
    zt = z[t, :, 0, :].astype(np.float64)
    packed.append(np.stack([msp_score(zt).sum(0), energy_score(zt).sum(0)], axis=-1) if t.any()
                  else np.zeros((n, 2)))
    hist = song_histogram(sig[..., 2], kp, label, train, edges, z.shape[-1])
    keep_rows = np.ones(s, dtype=bool) if keep_all_phi else t
    targets = [(s0, phi[keep_rows].astype(np.float32), sig[t].astype(np.float32))] if keep_rows.any() else []
    return np.concatenate(packed, axis=-1), hist, targets


def _add(a: tuple, b: tuple) -> tuple:
    return a[0] + b[0], a[1] + b[1], a[2] + b[2]


def one_pass(data: ShadowData, n_targets: int, *, train: np.ndarray | None = None, song_bins: int = 512,
             phi_budget: int = 512 * 2**20, progress: bool = False) -> PassResult:
    """Every per-sample reduction over shadows the report needs, and the targets' own signals,
    from one read of the logits (plus the first shadow's, read first for the shifts and grid).

    One task per logits chunk turns the chunk into small partial sums; a binary tree of additions
    merges them, so at most a few chunks' partials are alive at a time whatever M is. The targets'
    phi and signals ride along as float32 (T x N x (Q + 3) x 4 bytes), so no attack reads the
    targets' logits again. The formulas are those of :func:`reduce_over_shadows` and
    :meth:`analysis.attacks.AttackContext.signal_sums` (same shifts, partners and Song grid), which
    the tests compare against.

    Also summed in the same pass: the full Q x Q IN/OUT cross moments of phi (the theory's
    multivariate Gaussian fits, :func:`analysis.theory.fits_from_sums`) and the target models' MSP
    and Energy OOD scores. When every shadow's phi fits ``phi_budget`` bytes as float32 it is kept
    too (``phi_all``: the shadow-count sweep then reads nothing).
    """
    from .attacks._common import signals_from_logits
    from .theory import fits_from_sums

    logits = data.logits.data
    logits = logits.rechunk({1: -1, 2: -1, 3: -1})
    keep = np.asarray(data.keep.values, dtype=bool)
    m, n, q, _ = logits.shape
    label = np.asarray(data.label, dtype=np.int64)
    train = (np.asarray(data.split) == "train") if train is None else np.asarray(train, dtype=bool)
    z0 = np.asarray(logits[0].compute())
    shift_phi = phi_from_logits(z0, label[:, None])
    shift_sig = signals_from_logits(z0[:, 0, :], label)
    e = np.unique(np.quantile(shift_sig[train, 2], np.linspace(0, 1, song_bins + 1))) if train.any() else np.zeros(1)
    edges = e if e.size >= 2 else np.array([e[0] - 1.0, e[0] + 1.0])
    first_in = np.where(keep.any(0), keep.argmax(0), -1)
    first_out = np.where((~keep).any(0), (~keep).argmax(0), -1)

    # Constants enter the graph once each (not hashed and embedded per task).
    consts = [dask.delayed(a, pure=False) for a in (keep, label, train, shift_phi, shift_sig, first_in, first_out,
                                                     edges)]
    task = dask.delayed(_chunk_stats, pure=False)
    starts = np.cumsum((0,) + logits.chunks[0][:-1])
    keep_all = m * n * q * 4 <= phi_budget
    parts = [task(blk, int(s0), *consts, n_targets, keep_all) for blk, s0 in zip(logits.to_delayed().ravel(), starts)]
    add = dask.delayed(_add, pure=False)
    while len(parts) > 1:
        parts = [add(parts[i], parts[i + 1]) if i + 1 < len(parts) else parts[i] for i in range(0, len(parts), 2)]
    if progress:
        from tqdm.dask import TqdmCallback

        with TqdmCallback(desc="one pass over the logits"):
            (total, hist, targets), = dask.compute(parts[0])
    else:
        (total, hist, targets), = dask.compute(parts[0])

    w = 6 * q
    col = lambda i, k: total[:, i * k:(i + 1) * k]  # noqa: E731
    sig = total[:, w:w + 18]
    cnt = total[:, w + 18:w + 22]
    cross_in = total[:, w + 22:w + 22 + q * q].reshape(n, q, q)
    cross_out = total[:, w + 22 + q * q:w + 22 + 2 * q * q].reshape(n, q, q)
    ood_sum = total[:, w + 22 + 2 * q * q:]
    as_int = lambda a: np.rint(a).astype(np.int64)  # noqa: E731  (exact: small integer sums in float64)
    n_in, n_out = as_int(cnt[:, 0]), as_int(cnt[:, 1])
    sums = GaussianSums(shift=shift_phi, n_in=n_in, s1_in=col(0, q), s2_in=col(1, q), n_out=n_out,
                        s1_out=col(2, q), s2_out=col(3, q))
    partner = Partners(first_in=first_in, first_out=first_out, x_in=col(4, q), x_out=col(5, q))
    scol = lambda i: sig[:, 3 * i:3 * (i + 1)]  # noqa: E731
    sig_sums = GaussianSums(shift=shift_sig, n_in=n_in, s1_in=scol(0), s2_in=scol(1), n_out=n_out,
                            s1_out=scol(2), s2_out=scol(3))
    sig_partner = Partners(first_in=first_in, first_out=first_out, x_in=scol(4), x_out=scol(5))
    counts = MemCounts(n_in=n_in, c_in=as_int(cnt[:, 2]), n_out=n_out, c_out=as_int(cnt[:, 3]))
    phi_kept = np.empty((m if keep_all else n_targets, n, q), dtype=np.float32)
    t_sig = np.empty((n_targets, n, 3), dtype=np.float32)
    for s0, p, g in targets:
        phi_kept[s0:s0 + len(p)] = p
        t_sig[s0:s0 + len(g)] = g
    fits = fits_from_sums(shift_phi, n_in, sums.s1_in, cross_in, n_out, sums.s1_out, cross_out)
    ood = {"msp": ood_sum[:, 0] / n_targets, "energy": ood_sum[:, 1] / n_targets}
    return PassResult(sums, partner, counts, sig_sums, sig_partner, hist, edges, phi_kept[:n_targets], t_sig,
                      fits, ood, phi_kept if keep_all else None)

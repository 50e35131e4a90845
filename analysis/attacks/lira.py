"""Carlini et al.'s Likelihood Ratio Attack (LiRA) evaluated leave-one-out over the shadows.

Each of T target shadows is attacked in turn with the other done shadows as reference models
(paper Appendix C.1, Algorithm 1), less one partner per sample so that the numbers of IN and OUT
references do not depend on the target's membership (see :mod:`analysis.kernels.stats`). The challenge
points are the train-split samples; the truth for target t is ``keep[t]``.
Three variants, all "higher score = more likely a member":

``lira-online``
    Per-sample Gaussian fits to the reference phi's of IN and of OUT models; score = sum over
    queries of ``log N(phi; mu_in, s_in) - log N(phi; mu_out, s_out)`` (Algorithm 1 line 19).
``lira-offline``
    Only the OUT fit (the one-sided test of §5.1's note); score = mean over queries of
    ``log Phi((phi - mu_out) / s_out)``: a member's phi sits high in the OUT distribution.
``lira-fixed-variance``
    Online, with s_in / s_out replaced per query by the std of *all* IN / OUT reference values
    (over train samples and reference shadows, between-sample spread included), as the reference
    implementation does with ``np.std(dat_in)`` (which, unlike here, uses the IN std for both
    sides); useful when few reference models make per-sample variances noisy.

Variance guard: a per-sample std estimate can be 0 (e.g. a sample every model fits identically,
with float32-saturated logits), which makes log-densities infinite. Standard deviations are
floored at ``max(1e-4, 1e-3 * global std of phi)`` per query: scale-free, and far below any
spread that carries information. Where a side has fewer than 2 reference values its variance
falls back to the pooled (fixed-variance) one; where a side has none at all the score is the
neutral value (0 for likelihood ratios, log 1/2 for offline) and is counted in ``n_neutral``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numba
import numpy as np
from scipy.special import log_ndtr

from analysis.kernels.stats import GaussianSums, Partners
from analysis.kernels.threads import thread_map
from analysis.store_io.spill import DiskRows
from analysis.store_io.tasks import file_ref, run_pieces

__all__ = ["ATTACKS", "LIRA_VARIANTS", "PER_SAMPLE_VARIANCE_MIN", "LiraResult", "lira_scores", "sd_floor", "run_lira",
           "resolve_targets", "LiraBatches", "lira_piece"]

ATTACKS = ("lira-online", "lira-offline", "lira-fixed-variance")
#: ``analysis.lira_variant``: this module's scoring, or the reference code's (:mod:`analysis.attacks.lira_reference`).
LIRA_VARIANTS = ("ours", "reference")
#: Per side, the fewest reference values from which the shadow-count sweep (:mod:`analysis.studies.sweep`)
#: fits a per-sample variance; below it online and offline LiRA use the pooled ("fixed") variance,
#: as Carlini et al. advise for few shadows. Why 8: with n values the fitted 1/s^2 (which scales
#: the log-likelihood ratio) is sigma^-2 times an inverse chi-square of n - 1 degrees of freedom over
#: n - 1, whose mean is infinite for n <= 3 and whose variance is infinite for n <= 5 (heavy-tailed
#: scores: the V of the demo's sweep at 2 references per side); at n = 8 it is finite (mean 1.4,
#: sd 1.1 sigma^-2), and docs/lira-variants.md has the measured curves.
PER_SAMPLE_VARIANCE_MIN = 8


def sd_floor(sums: GaussianSums) -> np.ndarray:
    """Per-query floor for standard deviations: ``max(1e-4, 1e-3 * typical global std)``, shape (Q,).

    The global std is the square root of the count-weighted mean of the pooled IN and OUT variances.
    """
    v_in, v_out = sums.pooled_variance()
    n_in = np.asarray(sums.n_in, dtype=np.float64)
    n_out = np.asarray(sums.n_out, dtype=np.float64)
    w_in, w_out = n_in.sum(), n_out.sum()
    total = (np.nan_to_num(v_in) * w_in + np.nan_to_num(v_out) * w_out) / max(w_in + w_out, 1.0)
    return np.maximum(1e-4, 1e-3 * np.sqrt(total))


def lira_scores(x: np.ndarray, loo: GaussianSums, *, floor: np.ndarray,
                attacks: tuple[str, ...] = ATTACKS) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Score observations against leave-one-out reference statistics.

    Parameters
    ----------
    x : ndarray, shape (..., N, Q)
        The target model(s)' unshifted phi.
    loo : GaussianSums
        Reference sums with the target(s) removed (same leading dims as ``x``).
    floor : ndarray, shape (Q,)
        Standard-deviation floor (see :func:`sd_floor`).
    attacks : tuple of str
        Which of :data:`ATTACKS` to compute.

    Returns
    -------
    scores : dict attack -> ndarray (..., N)
    n_neutral : dict attack -> number of scores set to the neutral value
    """
    g_in, g_out = loo.pooled_variance()  # (..., Q): over all N samples given
    sd_g_in = np.maximum(np.sqrt(g_in), floor)
    sd_g_out = np.maximum(np.sqrt(g_out), floor)
    for name in attacks:
        if name not in ATTACKS:
            raise ValueError(f"unknown attack {name!r}; choose from {ATTACKS}")
    x = np.asarray(x, dtype=np.float64)
    lead, (n, q) = x.shape[:-2], x.shape[-2:]
    r = int(np.prod(lead, dtype=np.int64))
    as3 = lambda a: np.ascontiguousarray(np.broadcast_to(a, lead + (n, q)), dtype=np.float64).reshape(r, n, q)  # noqa: E731
    as2 = lambda a: np.ascontiguousarray(np.broadcast_to(a, lead + (n,)), dtype=np.float64).reshape(r, n)  # noqa: E731
    sd_g = np.stack([np.broadcast_to(sd_g_in, lead + (q,)).reshape(r, q),
                     np.broadcast_to(sd_g_out, lead + (q,)).reshape(r, q)], axis=1)  # (R, 2, Q)
    online, fixed = np.empty((r, n)), np.empty((r, n))
    z_off = np.empty((r, n, q) if "lira-offline" in attacks else (0, 0, 0))
    # the per-(target, sample) moments and log-likelihood ratios in one compiled loop (numpy took
    # ~25 (..., N, Q) temporaries); the pooled variances above stay numpy (one reduction each)
    _lira_rows(as3(x), np.ascontiguousarray(np.broadcast_to(loo.shift, (n, q)), dtype=np.float64), as2(loo.n_in), as3(loo.s1_in), as3(loo.s2_in), as2(loo.n_out),
               as3(loo.s1_out), as3(loo.s2_out), np.ascontiguousarray(sd_g), np.asarray(floor, dtype=np.float64),
               "lira-online" in attacks, "lira-fixed-variance" in attacks, online, fixed, z_off)

    scores: dict[str, np.ndarray] = {}
    neutral: dict[str, int] = {}

    def finish(name: str, s: np.ndarray, neutral_value: float) -> None:
        bad = ~np.isfinite(s)
        neutral[name] = int(bad.sum())
        scores[name] = np.where(bad, neutral_value, s).reshape(lead + (n,))

    for name in attacks:
        if name == "lira-online":
            finish(name, online, 0.0)
        elif name == "lira-fixed-variance":
            finish(name, fixed, 0.0)
        else:  # lira-offline
            finish(name, log_ndtr(z_off).mean(axis=-1), float(np.log(0.5)))
    return scores, neutral


@numba.njit(cache=True, nogil=True, error_model="numpy")  # IEEE division: x / 0 is inf or NaN
def _lira_rows(x, shift, n_in, s1_in, s2_in, n_out, s1_out, s2_out, sd_g, floor, want_online, want_fixed,
               online, fixed, z_off):  # pragma: no cover - compiled
    """Row r, sample i: the leave-out moments (ddof 1; NaN mean without values, NaN variance below
    2 values), the per-sample std (floored; the pooled ``sd_g[r, side]`` where the variance is
    NaN), then the online and fixed-variance log-likelihood ratios summed over queries (the
    constant -0.5 log 2 pi cancels) and the offline z-score ``(x - mu_out) / sd_out``; the same
    operations in the same order as the numpy expressions of :func:`lira_scores` before."""
    rr, n, q = x.shape
    want_off = z_off.shape[0] > 0
    log_g = np.empty((2, q))
    for r in range(rr):
        for k in range(q):
            log_g[0, k] = np.log(sd_g[r, 0, k])
            log_g[1, k] = np.log(sd_g[r, 1, k])
        for i in range(n):
            acc_on = 0.0
            acc_fx = 0.0
            for k in range(q):
                on, fx, zo = lira_terms(x[r, i, k] - shift[i, k], n_in[r, i], s1_in[r, i, k], s2_in[r, i, k],
                                        n_out[r, i], s1_out[r, i, k], s2_out[r, i, k], sd_g[r, 0, k], sd_g[r, 1, k],
                                        log_g[0, k], log_g[1, k], floor[k])
                acc_on += on
                acc_fx += fx
                if want_off:
                    z_off[r, i, k] = zo
            online[r, i] = acc_on if want_online else 0.0
            fixed[r, i] = acc_fx if want_fixed else 0.0


@numba.njit(cache=True, nogil=True, error_model="numpy")
def lira_terms(xs, ni, a1, a2, no, b1, b2, sd_gi, sd_go, log_gi, log_go, floor):  # pragma: no cover - compiled
    """One (target, sample, query) of :func:`lira_scores` from its shifted value ``xs`` and the
    reference counts and sums of each side: ``(online term, fixed-variance term, offline z)``.

    Moments with ddof 1 (NaN mean without values, NaN variance below 2 values); a side's std is
    floored, or the pooled ``sd_g`` (with its log ``log_g``) where its variance is NaN; the
    constant -0.5 log 2 pi cancels. Shared by :func:`_lira_rows` and the shadow-count sweep."""
    mu_i = a1 / ni if ni > 0 else np.nan
    mu_o = b1 / no if no > 0 else np.nan
    # (s2 - s1^2/n) is >= 0 up to rounding: clipped at 0 (NaN kept, as np.maximum does)
    d_i = a2 - a1 * a1 / ni
    d_o = b2 - b1 * b1 / no
    var_i = (d_i if (d_i >= 0.0 or d_i != d_i) else 0.0) / (ni - 1) if ni > 1 else np.nan
    var_o = (d_o if (d_o >= 0.0 or d_o != d_o) else 0.0) / (no - 1) if no > 1 else np.nan
    sd_i = sd_gi if np.isnan(var_i) else max(np.sqrt(var_i), floor)
    sd_o = sd_go if np.isnan(var_o) else max(np.sqrt(var_o), floor)
    zi = (xs - mu_i) / sd_i
    zo = (xs - mu_o) / sd_o
    online = (-0.5 * zi * zi - np.log(sd_i)) - (-0.5 * zo * zo - np.log(sd_o))
    fi = (xs - mu_i) / sd_gi
    fo = (xs - mu_o) / sd_go
    fixed = (-0.5 * fi * fi - log_gi) - (-0.5 * fo * fo - log_go)
    return online, fixed, zo


@dataclass
class LiraResult:
    """Scores of every attack on every (target, challenge sample) pair.

    Attributes
    ----------
    targets : ndarray (T,)
        Store shadow ids of the targets.
    samples : ndarray (N_train,)
        Store sample ids of the challenge points (train split).
    member : ndarray of bool (T, N_train)
        Truth: ``keep[target, sample]``.
    scores : mapping attack -> ndarray (T, N_train)
        float32 (the store's precision; metrics are computed on these values). A plain dict, or
        :class:`analysis.store_io.spill.SpilledScores` to keep them on disk.
    n_neutral : dict attack -> int
        Pairs scored neutrally for lack of reference models on one side.
    """

    targets: np.ndarray
    samples: np.ndarray
    member: np.ndarray
    scores: dict[str, np.ndarray] = field(default_factory=dict)
    n_neutral: dict[str, int] = field(default_factory=dict)


def resolve_targets(n_done: int, requested: int | None, spec_targets: int) -> int:
    """Number of targets T: ``requested`` if given, else the spec's; 0 means all; capped at n_done."""
    t = spec_targets if requested is None else int(requested)
    if t < 0:
        raise ValueError(f"targets must be >= 0 (0: all done shadows), got {t}")
    return n_done if t == 0 else min(t, n_done)


def run_lira(x_of: Callable[[slice], np.ndarray] | DiskRows, keep: np.ndarray, sums: GaussianSums,
             partner: Partners, train: np.ndarray, n_targets: int, *, shadow_ids: np.ndarray | None = None,
             sample_ids: np.ndarray | None = None, attacks: tuple[str, ...] = ATTACKS,
             batch_bytes: int = 256 * 2**20, progress: Callable[[int], None] | None = None,
             threads: int = 1, spill_dir: Any = None, client: Any = None) -> LiraResult:
    """Attack the first ``n_targets`` shadows, each against the others (less one partner per sample).

    Parameters
    ----------
    x_of : callable or DiskRows
        ``x_of(slice)`` returns the phi of those (done) shadows, shape (B, N, Q), as numpy; this lets
        the caller read targets from a lazy store a batch at a time. Or the (>= T, N, Q) phi's file,
        read a batch of rows at a time (what the tasks read with a ``client``).
    keep : ndarray of bool, shape (M, N)
        Membership of the done shadows.
    sums : GaussianSums
        Computed sums over *all* M done shadows (see :func:`analysis.kernels.stats.gaussian_sums`).
    partner : Partners
        Computed partners of every sample (see :func:`analysis.kernels.stats.partners`).
    train : ndarray of bool, shape (N,)
        Challenge points (train split); the pooled variance and the floor use them only.
    n_targets : int
        T, the first T shadows are targets.
    shadow_ids, sample_ids : ndarray, optional
        Store ids of the done shadows and of the samples, for the result's labels.
    attacks : tuple of str
        Which of :data:`ATTACKS` to run.
    batch_bytes : int
        Rough memory budget per batch of targets (the batch holds a few (B, N, Q) float64 arrays).
    progress : callable, optional
        Called with the number of targets finished after each batch (with a ``client``: after
        every task, once all are done).
    threads : int
        Threads the batches run on (no result depends on it).
    spill_dir : path, optional
        Write each attack's (T, N_train) scores to an ``.npy`` file there as the batches finish
        (:class:`analysis.store_io.spill.DiskRows`, adopted by a
        :class:`analysis.store_io.spill.SpilledScores` without a copy) instead of holding them:
        at 2000 targets x 50,000 samples they are 0.4 GB per attack.
    client : dask.distributed.Client, optional
        Run the batches as dask tasks there (:func:`lira_piece`, a few consecutive batches each),
        not on this process' threads; needs ``x_of`` as a :class:`DiskRows` and a ``spill_dir``
        that the workers see at the same path: the tasks write their rows of the scores' files.
        Same scores to the bit.

    Returns
    -------
    LiraResult
    """
    keep = np.asarray(keep, dtype=bool)
    m, n = keep.shape
    train = np.asarray(train, dtype=bool)
    if client is not None and (spill_dir is None or not isinstance(x_of, DiskRows)):
        raise ValueError("run_lira with a client: x_of must be a DiskRows and spill_dir a folder the workers see")
    # Only challenge points are scored; restricting the sums to them also restricts the pooled
    # (fixed) variance and the floor to train-split values.
    ref = sums.take(train)
    shared = LiraBatches(ref=ref, part=partner.take(train), floor=sd_floor(ref), train=train, attacks=tuple(attacks))
    keep_tr = keep[:, train]
    q = np.shape(ref.shift)[1]
    per_target = max(1, int(train.sum()) * q * 8 * 24)  # ~24 float64 (N, Q) temporaries per target
    b = max(1, min(n_targets, batch_bytes // per_target))
    # float32 results (the store's precision), filled in place: no list of parts to concatenate
    shape = (n_targets, int(train.sum()))
    if spill_dir is None:
        out = {a: np.empty(shape, dtype=np.float32) for a in attacks}
    else:
        Path(spill_dir).mkdir(parents=True, exist_ok=True)
        out = {a: DiskRows(Path(spill_dir) / f"{a}.npy", shape) for a in attacks}
    slices = [slice(start, min(start + b, n_targets)) for start in range(0, n_targets, b)]
    if client is None:
        read = x_of.__getitem__ if isinstance(x_of, DiskRows) else x_of

        def batch(sl: slice) -> dict[str, int]:
            nn = shared.score_rows(sl, read, keep_tr, out)
            if progress is not None:
                progress(sl.stop - sl.start)
            return nn

        # batches on the analysis' threads: their numpy work releases the GIL, each writes its own rows
        counts = thread_map(batch, slices, threads)
    else:
        counts = _batches_as_tasks(client, slices, x_of, keep_tr[:n_targets], shared, out, Path(spill_dir), progress)
    neutral = {a: sum(nn[a] for nn in counts) for a in attacks}
    shadow_ids = np.arange(m) if shadow_ids is None else np.asarray(shadow_ids)
    sample_ids = np.arange(n) if sample_ids is None else np.asarray(sample_ids)
    return LiraResult(targets=shadow_ids[:n_targets], samples=sample_ids[train], member=keep_tr[:n_targets],
                      scores=out, n_neutral=neutral)


@dataclass(frozen=True)
class LiraBatches:
    """What every batch of targets of :func:`run_lira` shares: the challenge points' reference sums
    over all shadows (``ref``), their partners (``part``), the std floor, the train mask and the
    attacks. Small ((N_train, Q) arrays): a dask task gets it pickled."""

    ref: GaussianSums
    part: Partners
    floor: np.ndarray
    train: np.ndarray
    attacks: tuple[str, ...]

    def score_rows(self, sl: slice, x_of: Callable[[slice], np.ndarray], keep_tr: Any,
                   out: dict[str, Any]) -> dict[str, int]:
        """Score targets ``sl`` and write their rows of every attack's scores into ``out``.

        Parameters
        ----------
        sl : slice
            The targets (rows) of this batch.
        x_of : callable
            ``x_of(sl)``: those targets' phi, (B, N, Q).
        keep_tr : ndarray or DiskRows, shape (>= sl.stop, N_train)
            The targets' membership on the challenge points.
        out : dict attack -> ndarray or DiskRows, shape (T, N_train)
            Where the rows go (float32; a DiskRows is written at its rows only).

        Returns
        -------
        dict attack -> int
            The batch's neutral scores.
        """
        x = np.asarray(x_of(sl), dtype=np.float64)[:, self.train]
        loo = self.ref.without_pair(x, np.asarray(keep_tr[sl], dtype=bool), self.part)
        s, nn = lira_scores(x, loo, floor=self.floor, attacks=self.attacks)
        for a in self.attacks:
            if isinstance(out[a], DiskRows):
                out[a].write(sl.start, s[a])
            else:
                out[a][sl] = s[a]
        return nn


def lira_piece(slices: list[slice], phi: DiskRows, keep_tr: DiskRows, shared: LiraBatches,
               out: dict[str, DiskRows]) -> dict[str, int]:
    """One dask task of :func:`run_lira`: its consecutive batches of targets, one after another.

    Reads each batch's phi and membership rows from their files and writes its rows of every
    attack's scores file in place (other tasks write other rows of the same files at once, with
    plain writes of their own bytes: :meth:`DiskRows.write`; ``tests/test_analysis_tasks.py``
    checks it across processes). Returns the neutral counts of its batches together.
    """
    counts = [shared.score_rows(sl, phi.__getitem__, keep_tr, out) for sl in slices]
    return {a: sum(nn[a] for nn in counts) for a in shared.attacks}


def _batches_as_tasks(client: Any, slices: list[slice], phi: DiskRows, keep_tr: np.ndarray, shared: LiraBatches,
                      out: dict[str, DiskRows], folder: Path, progress: Callable[[int], None] | None) -> list[dict]:
    """The batches of :func:`run_lira` as :func:`lira_piece` tasks on ``client``: their neutral counts.

    The batches are grouped into about three tasks per worker thread (consecutive batches each):
    enough for the scheduler to even out the workers' loads, few enough that a task's fixed costs
    (its start, the shared sums it gets) stay small next to its batches. Each task holds one batch
    at a time, within ``batch_bytes`` as in process.
    """
    if not slices:
        return []
    slots = max(1, sum(client.nthreads().values()))
    groups = [g for g in np.array_split(np.arange(len(slices)), min(len(slices), 3 * slots)) if g.size]
    keep_ref = file_ref(keep_tr, folder / "keep.npy")
    # the sums and partners go once to every worker, not once per task through the scheduler
    (state,) = client.scatter([shared], broadcast=True, hash=False)
    pieces = {f"{slices[g[0]].start}-{slices[g[-1]].stop}": ([slices[i] for i in g], phi, keep_ref, state, out)
              for g in groups}
    try:
        done = run_pieces(lira_piece, pieces, name="lira", client=client)
    finally:
        state.release()
        keep_ref.close()
    if progress is not None:
        for g in groups:
            progress(slices[g[-1]].stop - slices[g[0]].start)
    return list(done.values())

"""The report's heavy phases cut into one piece per attack, run as dask tasks on a distributed cluster.

:func:`analysis.output.report.analyze` calls these only when a :class:`dask.distributed.Client`
is the default (:func:`analysis.store_io.tasks.current_client`); without one it keeps its
in-process path. Each piece runs the very function the in-process path runs (an attack's entry
point, :func:`analysis.kernels.metrics.attack_metrics`, :func:`analysis.output.tables.attack_table`)
on one attack, with one thread (a worker's threads run several pieces at once instead), so the
tables are the same bytes: no result of these functions depends on their threads.

What a piece reads that scales with targets x samples (the targets' signals, ``keep``, ``member``,
an attack's scores) travels as a file reference (:class:`analysis.store_io.spill.DiskRows` of an
``.npy`` file in the analysis' spill folder under ``out``) that the worker maps; an attack piece
writes its (T, N_train) scores to such a file, which the spill adopts without a copy. A piece
holds what the in-process path holds for one attack, within the same budget shares
(``batch_bytes``, ``block_bytes``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd

from analysis.attacks import ATTACKS, AttackContext, AttackResult, run_attacks
from analysis.kernels.metrics import attack_metrics
from analysis.output.tables import attack_table
from analysis.store_io.spill import DiskRows, SpilledScores
from analysis.store_io.tasks import current_client, file_ref, run_pieces

__all__ = ["REMOTE_ATTACKS", "pieces_client", "attacks_as_tasks", "metrics_as_tasks", "bootstrap_as_tasks",
           "attack_piece", "metrics_piece", "bootstrap_piece"]

# The attacks that score the targets in their own piece. LiRA's three variants are computed by
# run_lira before the attacks phase and Shokri's scores by the pass: both are only handed over.
REMOTE_ATTACKS = ("yeom", "song", "sablayrolles", "rmia")


def pieces_client(scores: Any) -> Any:
    """The default dask distributed client when the scores are on disk (workers can open them), else None."""
    return current_client() if isinstance(scores, SpilledScores) else None


# --- attacks ----------------------------------------------------------------------------------

def attack_piece(name: str, state: Mapping[str, Any], out_path: str) -> tuple[int, dict[str, Any]]:
    """Run attack ``name`` on a context rebuilt from ``state``; its scores go to ``out_path`` (``.npy``).

    Returns the attack's neutral count and ``info``.
    """
    import dask

    kw = dict(state)
    logits, keep = kw.pop("logits"), kw.pop("keep")
    label, split, n_targets = kw.pop("label"), kw.pop("split"), kw.pop("n_targets")
    # an attack given its signals and sums reads no logits; should one, it reads them in this task
    # rather than submitting tasks from inside a task
    with dask.config.set(scheduler="synchronous"):
        ctx = AttackContext(logits, keep.mmap(), label, split, n_targets, threads=1, **kw)
        r = ATTACKS[name](ctx)
    np.save(out_path, r.scores.pop(name), allow_pickle=False)
    return r.n_neutral[name], r.info


def attacks_as_tasks(ctx: AttackContext, client: Any, scores: SpilledScores, *, signals: DiskRows,
                     progress: Callable[[str], None] | None = None) -> AttackResult:
    """Every attack of :data:`analysis.attacks.ATTACKS`, as :func:`analysis.attacks.run_attacks` with
    ``scores=scores`` returns them, the :data:`REMOTE_ATTACKS` each one task on ``client``.

    ``signals`` is the (T, N, 3) target signals' file (the context's own ``target_signals``).
    """
    folder = Path(scores.dir)
    names = list(ATTACKS)
    remote = [n for n in names if n in REMOTE_ATTACKS]
    state = {"logits": ctx.logits, "keep": file_ref(ctx.keep, folder / "keep.npy"), "label": ctx.label,
             "split": ctx.split, "n_targets": ctx.n_targets, "shadow_ids": ctx.shadow_ids,
             "sample_ids": ctx.sample_ids, "batch_bytes": ctx.batch_bytes, "song_bins": ctx.song_bins,
             "signal_stats": ctx.signal_sums(), "target_signals": signals}
    try:
        out = run_attacks(ctx, [n for n in names if n not in remote], progress=progress, scores=scores)
        done = run_pieces(attack_piece, {n: (n, state, str(folder / f"attack-{n}.npy")) for n in remote},
                          name="attack", client=client)
    finally:
        (folder / "keep.npy").unlink(missing_ok=True)
    for n in remote:
        scores[n] = DiskRows.open(folder / f"attack-{n}.npy")  # adopted: the file becomes the spill's
        out.n_neutral[n], out.info[n] = done[n]
        if progress is not None:
            progress(n)
    for n in names:  # the registry's order, as run_attacks leaves it (the tables' row order)
        scores.move_to_end(n)
        out.n_neutral[n] = out.n_neutral.pop(n)
        out.info[n] = out.info.pop(n)
    return out


# --- metrics and bootstrap tables -------------------------------------------------------------

def _pair_refs(lira: AttackResult) -> tuple[DiskRows, dict[str, DiskRows]]:
    """File references of ``lira.member`` (written once) and of every attack's spilled scores."""
    spill = lira.scores
    path = Path(spill.dir) / "member.npy"
    member = DiskRows.open(path) if path.exists() else file_ref(lira.member, path)
    return member, {a: DiskRows.open(spill.path(a)) for a in spill}


def metrics_piece(member: DiskRows, scores: DiskRows, masks: Mapping[str, np.ndarray], fprs: list[float],
                  block_bytes: int | None) -> tuple[dict, dict, dict]:
    """:func:`analysis.kernels.metrics.attack_metrics` of one attack, from its files."""
    return attack_metrics(member.mmap(), scores.mmap(), masks, fprs, threads=1, block_bytes=block_bytes)


def metrics_as_tasks(lira: AttackResult, client: Any, masks: Mapping[str, np.ndarray], fprs: list[float],
                     block_bytes: int | None) -> dict[str, tuple[dict, dict, dict]]:
    """``attack -> attack_metrics(...)`` for every attack of ``lira``, one task each on ``client``."""
    member, refs = _pair_refs(lira)
    return run_pieces(metrics_piece, {a: (member, ref, masks, fprs, block_bytes) for a, ref in refs.items()},
                      name="metrics", client=client)


def bootstrap_piece(attack: str, member: DiskRows, scores: DiskRows, challenge: Mapping[str, np.ndarray],
                    kw: Mapping[str, Any]) -> pd.DataFrame:
    """:func:`analysis.output.tables.attack_table` of one attack (its rows), from its files."""
    return attack_table({attack: (member.mmap(), scores.mmap())}, challenge, threads=1, **kw)


def bootstrap_as_tasks(lira: AttackResult, client: Any, challenge: Mapping[str, np.ndarray],
                       **kw: Any) -> pd.DataFrame:
    """``attack_table`` of every attack of ``lira``, one task per attack on ``client``: its rows are
    one attack's rows each, in the attacks' order, so the pieces' rows put together are the table."""
    member, refs = _pair_refs(lira)
    parts = run_pieces(bootstrap_piece, {a: (a, member, ref, challenge, kw) for a, ref in refs.items()},
                       name="bootstrap", client=client)
    first = next(iter(parts.values()))
    df = pd.concat(list(parts.values()))
    df.attrs = dict(first.attrs)
    return df

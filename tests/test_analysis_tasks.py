"""The heavy phases after the pass as dask tasks: same bytes as in-process, and really on the workers.

``analyze`` inside a dask distributed client runs LiRA's batches of targets as a few tasks
(:func:`analysis.attacks.lira.lira_piece`) and every scoring attack, every attack's metrics and
every attack's bootstrap table as one task each (:mod:`analysis.output.pieces`); these tests run it
on a local cluster of two single-threaded worker processes and compare every table file and LiRA's
scores with an in-process run's, byte for byte.
"""

from __future__ import annotations

import numpy as np
import pytest

from analysis import analyze
from analysis.attacks.lira import ATTACKS as LIRA_ATTACKS
from analysis.store_io.spill import DiskRows
from analysis.store_io.tasks import current_client, file_ref, run_pieces
from analysis.tools.synthetic_store import write_synthetic_store


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("store") / "store.zarr"
    # ties in the scores: few classes and a coarse separation give equal losses on some pairs
    write_synthetic_store(path, n_shadows=10, n_samples=240, n_test=48, n_queries=2, seed=5,
                          separation={"over": 0.5, "under": 3.0}, frac_under=0.3, offset_mean=0.0,
                          sample_chunk=64, analysis={"targets": 0, "fpr": [0.01, 0.1]})
    return path


def _files(folder):
    """Every table and the per-sample file: relative path -> bytes."""
    paths = sorted((folder / "tables").iterdir()) + [folder / "per_sample.csv", folder / "roc" / "roc.csv"]
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in paths}


def test_run_pieces_in_process_without_client():
    assert current_client() is None
    assert run_pieces(pow, {"a": (2, 3), "b": (3, 2)}, name="pow") == {"a": 8, "b": 9}


def test_file_ref_round_trip(tmp_path):
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    ref = file_ref(a, tmp_path / "a.npy")
    assert isinstance(ref, DiskRows) and ref.shape == (3, 4) and ref.dtype == np.float32
    np.testing.assert_array_equal(ref[1:], a[1:])


CASES = [(None, True), (1e-4, False)]


@pytest.fixture(scope="module")
def local(store, tmp_path_factory):
    """Each case's in-process outputs, made before the client exists (no default client)."""
    assert current_client() is None
    out = {}
    for memory_gb, extras in CASES:
        folder = tmp_path_factory.mktemp("local")
        res = analyze(store, folder, progress=False, memory_gb=memory_gb, extras=extras, threads=2)
        out[memory_gb, extras] = _files(folder), _lira_scores(res)
    return out


def _lira_scores(res):
    """LiRA's three (T, N_train) score arrays of an ``analyze`` result (as scores.zarr holds them)."""
    return {a: np.asarray(res["lira"].scores[a]) for a in LIRA_ATTACKS}


@pytest.fixture(scope="module")
def client():
    pytest.importorskip("distributed", reason="pip install distributed (pinned to dask's version)")
    from analysis.store_io.distributed import client_for

    with client_for(None, n_workers=2, threads_per_worker=1) as c:
        yield c
    assert current_client() is None


# the targets' arrays in memory with the paper's extras (the bootstrap tables), then on disk
# (a tiny budget: the signals are the pass' file) without them
@pytest.mark.parametrize("memory_gb, extras", CASES)
def test_analyze_as_tasks_same_bytes_and_on_workers(store, local, client, tmp_path, memory_gb, extras):
    from dask.distributed import get_task_stream

    cluster = tmp_path / "cluster"
    workers = set(client.scheduler_info()["workers"])
    with get_task_stream(client) as ts:
        res = analyze(store, cluster, progress=False, memory_gb=memory_gb, extras=extras, threads=2)
    (a, lira), b = local[memory_gb, extras], _files(cluster)
    assert a.keys() == b.keys() and ("tables/paper_attacks.csv" in a) == extras
    for name in a:
        assert a[name] == b[name], name
    for name, scores in _lira_scores(res).items():
        assert scores.tobytes() == lira[name].tobytes(), name
    # one task per scoring attack, per attack's metrics and per attack's bootstrap table, on the workers
    keys = {str(t["key"]): t["worker"] for t in ts.data}
    attacks = list(res["attacks"].index)
    for prefix, names in (("attack", ["yeom", "song", "sablayrolles", "rmia"]), ("metrics", attacks),
                          ("bootstrap", attacks if extras else [])):
        for n in names:
            ran = [w for k, w in keys.items() if k.startswith(f"{prefix}-{n}-")]
            assert len(ran) == 1 and ran[0] in workers, (prefix, n, ran)
    assert len({w for k, w in keys.items() if k.startswith("metrics-")}) == 2  # spread over both workers
    # LiRA: tasks "lira-{start}-{stop}-{tag}" of consecutive targets covering every target once, on
    # the workers; the tiny budget's one-target batches grouped into three tasks per worker thread
    lira_ran = {tuple(int(x) for x in k.split("-")[1:3]): w for k, w in keys.items() if k.startswith("lira-")}
    bounds = sorted(lira_ran)
    assert bounds[0][0] == 0 and bounds[-1][1] == len(res["lira"].targets), bounds
    assert all(prev[1] == nxt[0] for prev, nxt in zip(bounds, bounds[1:])), bounds
    assert set(lira_ran.values()) <= workers
    assert len(bounds) == (1 if memory_gb is None else 6), bounds
    # nothing left in the spill folder (keep, member and the signals' files included)
    assert not list(cluster.glob(".scores-spill-*"))


def test_disk_rows_disjoint_rows_from_two_processes(client, tmp_path):
    """LiRA's tasks write their rows of one scores file at once, from different worker processes:
    rows of 4,000 bytes share pages (4 KiB) with the rows of the other process, and none is lost;
    whole rows or a column block, both ways DiskRows.write goes."""
    workers = sorted(client.scheduler_info()["workers"])
    assert len(workers) == 2
    rows = DiskRows(tmp_path / "rows.npy", (64, 1000))
    want = np.random.default_rng(0).standard_normal((64, 1000)).astype(np.float32)
    futures = [client.submit(rows.write, r, want[r:r + 1], workers=[workers[r % 2]], pure=False)
               for r in range(32)]
    futures += [client.submit(rows.write, r, want[r:r + 1, c:c + 500], c, workers=[workers[(r + c // 500) % 2]],
                              pure=False) for r in range(32, 64) for c in (0, 500)]
    client.gather(futures)
    assert {w for f in futures for w in client.who_has(f)[f.key]} == set(workers)
    np.testing.assert_array_equal(rows[:], want)

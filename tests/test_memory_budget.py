"""The analysis' memory budget (``analyze --memory-gb``, issue #18): a budget so small that every
per-target array waits on disk and LiRA and the attacks score a target or two per batch gives the
same tables, byte for byte, as the default budget; a bad budget is refused in one line."""

from __future__ import annotations

import numpy as np
import pytest

from analysis import analyze
from analysis.store_io.spill import DiskRows
from analysis.tools.synthetic_store import write_synthetic_store
from mia_hpc.cli import main
from mia_hpc.contract.settings import memory_budget_bytes

TABLES = ("attacks.csv", "attacks.md", "attacks_per_target.csv", "attacks_per_target.md", "memorization.csv",
          "memorization.md", "accuracy.csv")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("budget") / "store.zarr"
    write_synthetic_store(path, n_shadows=8, n_samples=200, n_test=40, n_queries=3, seed=3)
    return path


@pytest.mark.parametrize("variant", ["ours", "reference"])
def test_tiny_budget_same_tables(store, tmp_path, variant, monkeypatch):
    import analysis.kernels.metrics as metrics

    bounded = []
    real = metrics.pooled_metrics
    monkeypatch.setattr(metrics, "pooled_metrics", lambda *a, **k: bounded.append(k["block_bytes"]) or real(*a, **k))
    import analysis.output.roc as roc

    streamed = []
    real_roc = roc.pooled_roc_points
    monkeypatch.setattr(roc, "pooled_roc_points", lambda *a, **k: streamed.append(1) or real_roc(*a, **k))
    big = analyze(store, tmp_path / "big", targets=0, extras=False, progress=False, lira_variant=variant, threads=2)
    # 1 KiB: the targets' phi, signals and scores go to disk, one target per LiRA/attack batch, and
    # the pooled metrics sort 4 KiB of keys at a time (analysis.kernels.pooled: several groups)
    small = analyze(store, tmp_path / "small", targets=0, extras=False, progress=False, lira_variant=variant,
                    threads=2, memory_gb=2**-20)
    for name in TABLES:
        assert (tmp_path / "small" / "tables" / name).read_bytes() == (tmp_path / "big" / "tables" / name).read_bytes(), name
    assert (tmp_path / "small" / "per_sample.csv").read_bytes() == (tmp_path / "big" / "per_sample.csv").read_bytes()
    # the pooled ROC curves were streamed in 4 KiB blocks (analysis.output.roc): the same points
    assert (tmp_path / "small" / "roc" / "roc.csv").read_bytes() == (tmp_path / "big" / "roc" / "roc.csv").read_bytes()
    for a in big["lira"].scores:
        np.testing.assert_array_equal(np.asarray(small["lira"].scores[a]), np.asarray(big["lira"].scores[a]))
    assert not list((tmp_path / "small").glob(".scores-spill-*"))  # the disk spill is removed
    assert bounded and max(bounded) <= 4 << 10  # only the small budget took the bounded pooled metrics
    assert streamed  # and the streamed ROC curves


def test_disk_rows_round_trip(tmp_path):
    d = DiskRows(tmp_path / "a.npy", (5, 3, 2))
    x = np.arange(30, dtype=np.float32).reshape(5, 3, 2)
    d.write(3, x[3:])
    d.write(0, x[:3])
    np.testing.assert_array_equal(d[1:4], x[1:4])
    np.testing.assert_array_equal(np.asarray(d), x)
    np.testing.assert_array_equal(d.mmap()[[0, 4]], x[[0, 4]])
    d.close()
    assert not (tmp_path / "a.npy").exists()


@pytest.mark.parametrize("shape", [(7, 5), (6, 3, 2), (9,)])
def test_disk_rows_whole_rows_same_bytes_as_assignment(tmp_path, shape):
    """Whole rows go to the file with a plain write (DiskRows.write), blocks of columns through its
    mapping: the file holds the bytes an assignment into a float32 array gives (float64 rounded)."""
    d = DiskRows(tmp_path / "a.npy", shape)
    want = np.zeros(shape, dtype=np.float32)
    x = np.random.default_rng(2).standard_normal(shape) * 1e3
    for s0, s1 in [(2, 5), (0, 2), (5, shape[0])]:
        d.write(s0, x[s0:s1])
        want[s0:s1] = x[s0:s1]
    assert d[:].tobytes() == want.tobytes()
    if len(shape) > 1:
        d.write(1, x[1:3, 1:] + 1, col=1)
        want[1:3, 1:] = x[1:3, 1:] + 1
        assert d[:].tobytes() == want.tobytes()
    with pytest.raises(IndexError):
        d.write(shape[0] - 1, x[:2])


@pytest.mark.parametrize("bad", ["0", "-1", "nan", "inf", "lots"])
def test_bad_budget_one_line(store, tmp_path, capsys, bad):
    assert main(["analyze", str(store), "--out", str(tmp_path / "o"), "--memory-gb", bad]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("mia-hpc: error: --memory-gb: "), err
    assert not (tmp_path / "o").exists()
    with pytest.raises(ValueError, match=r"^memory_gb: "):
        memory_budget_bytes(bad)
    with pytest.raises(ValueError, match=r"^memory_gb: "):
        analyze(store, tmp_path / "o2", memory_gb=bad, progress=False)


def test_tiny_budget_with_the_paper_extras_same_tables(store, tmp_path, monkeypatch):
    """With the extras (challenge sets, bootstrap, theory, the shadow-count sweep) a tiny budget also
    puts every shadow's phi on disk and the sweep reads it a block of samples at a time: every table
    and the per-sample frame are byte-identical to the default budget's. The bootstrap tables take
    their large-input path here (as at the paper's shape), whose sorted pairs wait on disk under the
    tiny budget."""
    import analysis.kernels.bootstrap as bs
    import analysis.studies.sweep as sweep

    blocks = []
    real = sweep.shadow_sweep
    monkeypatch.setattr(sweep, "shadow_sweep", lambda *a, **k: blocks.append(k.get("block_samples")) or real(*a, **k))
    monkeypatch.setattr(bs, "EXACT_BUDGET", 0)
    pools = []
    real_pool = bs._DiskPool.build
    monkeypatch.setattr(bs._DiskPool, "build", lambda *a, **k: pools.append(a[2]) or real_pool(*a, **k))
    analyze(store, tmp_path / "big", targets=0, progress=False, threads=2)
    assert not pools
    analyze(store, tmp_path / "small", targets=0, progress=False, threads=2, memory_gb=2**-20)
    assert blocks[0] is None and blocks[1] is not None and blocks[1] >= 1  # only the tiny budget read in blocks
    assert pools and max(pools) <= 4 << 10  # every attack's bootstrap pool waited on disk
    assert not list((tmp_path / "small").glob("bootstrap-*"))
    names = sorted(p.name for p in (tmp_path / "big" / "tables").glob("*.csv"))
    assert "sweep_raw.csv" in names and "theory.csv" in names and "paper_attacks.csv" in names
    for name in names:
        assert (tmp_path / "small" / "tables" / name).read_bytes() == (tmp_path / "big" / "tables" / name).read_bytes(), name
    assert (tmp_path / "small" / "per_sample.csv").read_bytes() == (tmp_path / "big" / "per_sample.csv").read_bytes()
    assert not list((tmp_path / "small").glob(".scores-spill-*"))


def test_phase_memory_is_each_phase_own_peak():
    """``phase_rss_gib`` is the largest RSS seen while each phase ran: a phase after a big one shows
    its own (lower) figure, where the cumulative ``peak_rss_gib`` keeps the earlier peak."""
    import time

    from analysis.output.report import _Phases

    phases = _Phases(sample_s=0.01)
    try:
        with phases("big"):
            block = np.ones(300 * 2**20 // 8)  # 300 MiB, touched
            time.sleep(0.2)
            del block
        with phases("small"):
            time.sleep(0.2)
    finally:
        phases.close()
    assert phases.phase_rss_gib["big"] - phases.phase_rss_gib["small"] > 0.2
    assert phases.peak_rss_gib["small"] >= phases.peak_rss_gib["big"] >= phases.phase_rss_gib["big"] - 0.01
    assert set(phases.seconds) == {"big", "small"}

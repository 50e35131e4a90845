"""Faults injected into real stores (a real ``mia-hpc run`` and ``mia-hpc synth-store``), through
the real CLI in subprocesses: every damage is named by ``status --verify``, reset by
``--reset-broken`` and redone by a re-run, and ``analyze`` refuses it with one line naming the
shadows, creating nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

import store_damage as sd

REPO = Path(__file__).resolve().parents[1]


def _one_line_error(res, *needles: str) -> str:
    """The command failed with exit 2 and exactly one line ``mia-hpc: error: ...`` holding ``needles``."""
    assert res.returncode == 2, res.stdout + res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mia-hpc: error: "), res.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A real run of jobs/smoke.toml (8 shadows, 2 shards, submitit worker processes), not analysed."""
    out = tmp_path_factory.mktemp("faults") / "run"
    res = sd.mia_hpc("run", str(REPO / "jobs" / "smoke.toml"), "--out", str(out), "--no-analyze")
    assert res.returncode == 0, res.stderr
    return out


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    return sd.make_synth_store(tmp_path_factory.mktemp("synth") / "good.zarr")


def test_deleted_chunk_of_done_shadow_named_refused_reset_and_redone(trained, tmp_path):
    """Issue 16.1: the deleted chunk used to pass --verify (exit 0) and read as NaN in analyze."""
    run = tmp_path / "run"
    shutil.copytree(trained, run, ignore=shutil.ignore_patterns("*.leases"))
    store = run / "store.zarr"
    before = np.asarray(zarr.open_group(str(store), mode="r")["logits"][5])
    (store / "logits" / "c" / "5" / "0" / "0" / "0").unlink()

    res = sd.mia_hpc("status", str(store), "--verify")
    assert res.returncode == 1, res.stdout
    assert "missing chunk logits/c/5/0/0/0: missing, but the shadow is marked done" in res.stdout
    assert "shadow 5 of shard 1" in res.stdout and "every chunk matches" not in res.stdout

    out = tmp_path / "analysis"
    _one_line_error(sd.mia_hpc("analyze", str(store), "--out", str(out), "--quick"), "shadow 5: marked done, but chunks of the outputs are missing")
    assert not out.exists()

    res = sd.mia_hpc("status", str(store), "--verify", "--reset-broken")
    assert res.returncode == 1 and "reset: shadows [5] marked not done" in res.stdout
    res = sd.mia_hpc("status", str(store))
    assert "7/8 shadows done" in res.stdout and "3/4  partial" in res.stdout

    res = sd.mia_hpc("run", str(REPO / "jobs" / "smoke.toml"), "--out", str(run), "--no-analyze")
    assert res.returncode == 0, res.stderr
    res = sd.mia_hpc("status", str(store), "--verify")
    assert res.returncode == 0 and "8/8 shadows done" in res.stdout, res.stdout
    # redone bit for bit (train.threads fixes the kernels' reduction order)
    np.testing.assert_array_equal(np.asarray(zarr.open_group(str(store), mode="r")["logits"][5]), before)


def test_chunks_moved_between_shadows_named(synth, tmp_path):
    """Two shadows' logits chunks swapped: each decodes and passes its crc32c, but not its digest."""
    store = sd.copy_store(synth, tmp_path / "s.zarr")
    a, b = store / "logits" / "c" / "1" / "0" / "0" / "0", store / "logits" / "c" / "2" / "0" / "0" / "0"
    da, db = a.read_bytes(), b.read_bytes()
    a.write_bytes(db)
    b.write_bytes(da)
    res = sd.mia_hpc("status", str(store), "--verify")
    assert res.returncode == 1
    assert "wrong contents shadow 1: outputs do not match the shadow's digest" in res.stdout
    assert "wrong contents shadow 2:" in res.stdout
    out = tmp_path / "analysis"
    line = _one_line_error(sd.mia_hpc("analyze", str(store), "--out", str(out)),
                           ": the outputs do not match their digest")
    assert "shadow 1:" in line or "shadow 2:" in line or "shadows 1, 2:" in line
    assert not out.exists()


def test_done_without_outputs_named(synth, tmp_path):
    store = sd.copy_store(synth, tmp_path / "s.zarr")
    for name in ("logits", "accuracy", "train_loss", "finished_at", "digest"):
        p = store / name / "c" / "3"
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    res = sd.mia_hpc("status", str(store), "--verify", "--reset-broken")
    assert res.returncode == 1
    for key in ("logits/c/3/0/0/0", "accuracy/c/3/0", "train_loss/c/3", "finished_at/c/3", "digest/c/3"):
        assert f"missing chunk {key}: missing, but the shadow is marked done" in res.stdout, res.stdout
    assert "reset: shadows [3] marked not done" in res.stdout
    assert "3/4 shadows done" in sd.mia_hpc("status", str(store)).stdout


def test_diverged_shadow_named_and_refused(synth, tmp_path):
    """Issue 16.9: a done shadow with non-finite logits (as a worker without the loss guard stored it)."""
    from mia_hpc.contract.store import open_store, write_shadow

    store = sd.copy_store(synth, tmp_path / "s.zarr")
    root = open_store(store)
    z = np.asarray(root["logits"][2]).copy()
    z[0, 0, 0] = np.nan
    z[3, 0, 1] = np.inf
    write_shadow(root, 2, z, np.asarray(root["accuracy"][2]), float("nan"))  # the real writer: done, digested
    res = sd.mia_hpc("status", str(store), "--verify")
    assert res.returncode == 1
    assert f"diverged shadow logits of shadow 2: 2 of {z.size} values are not finite (the shadow diverged)" in res.stdout
    out = tmp_path / "analysis"
    _one_line_error(sd.mia_hpc("analyze", str(store), "--out", str(out)), "shadow 2: non-finite logits (diverged)")
    assert not out.exists()


def test_edited_metadata_named(synth, tmp_path):
    store = sd.copy_store(synth, tmp_path / "s.zarr")
    meta = store / "logits" / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["fill_value"] = 0.0  # a missing chunk would now read as zeros: plausible logits
    meta.write_text(json.dumps(doc))
    res = sd.mia_hpc("status", str(store), "--verify")
    assert res.returncode == 1
    assert ("damaged metadata logits/zarr.json: differs from its copy in the root zarr.json (edited after creation)"
            in res.stdout)
    _one_line_error(sd.mia_hpc("analyze", str(store), "--out", str(tmp_path / "a")), "logits/zarr.json")


def test_edited_spec_named(synth, tmp_path):
    store = sd.copy_store(synth, tmp_path / "s.zarr")
    doc = json.loads((store / "zarr.json").read_text())
    spec = json.loads(doc["attributes"]["spec"])
    spec["seed"] += 1
    doc["attributes"]["spec"] = json.dumps(spec)
    (store / "zarr.json").write_text(json.dumps(doc))
    res = sd.mia_hpc("status", str(store), "--verify")
    assert res.returncode == 1 and "damaged metadata zarr.json: the root attr 'spec' hashes to" in res.stdout


def test_static_array_from_another_store_named(synth, tmp_path):
    """A keep chunk copied from a store of another seed: it decodes, but is not what was created."""
    other = sd.make_synth_store(tmp_path / "other.zarr", seed=1)
    store = sd.copy_store(synth, tmp_path / "s.zarr")
    shutil.copyfile(other / "keep" / "c" / "0" / "0", store / "keep" / "c" / "0" / "0")
    res = sd.mia_hpc("status", str(store), "--verify")
    assert res.returncode == 1
    assert "wrong contents keep: contents differ from the digest recorded at creation" in res.stdout
    assert "no re-run repairs" in res.stdout
    _one_line_error(sd.mia_hpc("analyze", str(store), "--out", str(tmp_path / "a")), "array keep differs")


def test_store_without_digests_still_reads(synth, tmp_path):
    """Stores written before digests existed: no digest array, no digests attr; verify and the
    analysis' reader work as before (checksums and missing chunks are still checked)."""
    from analysis.store_io.load import open_shadows
    from mia_hpc.contract.verify import verify_store

    store = sd.copy_store(synth, tmp_path / "s.zarr")
    shutil.rmtree(store / "digest")
    doc = json.loads((store / "zarr.json").read_text())
    doc["attributes"].pop("digests")
    doc["consolidated_metadata"]["metadata"].pop("digest")
    (store / "zarr.json").write_text(json.dumps(doc))
    assert verify_store(store, progress=False) == []
    data = open_shadows(store)
    assert data.digests is None and np.isfinite(data.logits_blocks(2).compute()).all()
    (store / "logits" / "c" / "0" / "0" / "0" / "0").unlink()
    assert [b.kind for b in verify_store(store, progress=False)] == ["missing"]

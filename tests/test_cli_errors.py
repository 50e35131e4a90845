"""Bad input and interruptions through the real ``mia-hpc`` CLI (subprocesses): one line
``mia-hpc: error: ...``, a non-zero exit, nothing created, never a traceback (issue 16.4, 16.6-8)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

import store_damage as sd

REPO = Path(__file__).resolve().parents[1]
SMOKE = str(REPO / "jobs" / "smoke.toml")


def _error(res, *needles: str) -> str:
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr + res.stdout
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mia-hpc: error: "), res.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    return sd.make_synth_store(tmp_path_factory.mktemp("synth") / "good.zarr")


def test_analyze_refusals_create_nothing(synth, tmp_path):
    out = tmp_path / "analysis"
    (tmp_path / "folder").mkdir()
    _error(sd.mia_hpc("analyze", str(tmp_path / "folder"), "--out", str(out)), "not a mia-hpc store (no zarr.json)")
    assert not out.exists()

    broken = sd.copy_store(synth, tmp_path / "broken.zarr")
    (broken / "zarr.json").write_text('{"zarr_format": 3, "node_type": "gro')
    _error(sd.mia_hpc("analyze", str(broken), "--out", str(out)), "broken.zarr/zarr.json: not valid JSON",
           "re-create the store")
    assert not out.exists()

    empty = sd.copy_store(synth, tmp_path / "empty.zarr")
    for p in (empty / "done" / "c").iterdir():
        p.unlink()
    _error(sd.mia_hpc("analyze", str(empty), "--out", str(out)), "only 0 of 4 shadows are done",
           "the analysis needs at least 2")
    assert not out.exists()

    flipped = sd.copy_store(synth, tmp_path / "flipped.zarr")
    chunk = flipped / "logits" / "c" / "1" / "0" / "0" / "0"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    _error(sd.mia_hpc("analyze", str(flipped), "--out", str(out)), "shadow 1: the logits do not decode",
           "checksum", "--verify --reset-broken")
    assert not out.exists()

    _error(sd.mia_hpc("analyze", str(synth), "--out", str(synth / "zarr.json")), "exists and is not a folder")


def test_status_on_broken_root_metadata(synth, tmp_path):
    broken = sd.copy_store(synth, tmp_path / "broken.zarr")
    (broken / "zarr.json").write_bytes(b"\x00\x01garbage")
    _error(sd.mia_hpc("status", str(broken)), "zarr.json: not valid JSON")
    _error(sd.mia_hpc("status", str(broken), "--verify"), "zarr.json: not valid JSON")
    doc = json.loads((synth / "zarr.json").read_text())
    doc["attributes"]["schema_version"] = 7
    (broken / "zarr.json").write_text(json.dumps(doc))
    _error(sd.mia_hpc("status", str(broken)), "schema_version 7 is not 1")


def test_run_out_and_parallel_refused_before_anything_is_written(tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    _error(sd.mia_hpc("run", SMOKE, "--out", str(a_file)), f"--out {a_file}: exists and is not a folder")
    _error(sd.mia_hpc("run", SMOKE, "--out", str(a_file / "run")), "cannot be created", "is not a folder")
    _error(sd.mia_hpc("run", SMOKE, "--out", "/proc/mia-hpc/run"), "cannot be created")
    _error(sd.mia_hpc("run", SMOKE, "--out", str(tmp_path / "r" / "s"), "--parallel", "-1"),
           "--parallel: must be >= 0")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]
    assert not Path("/proc/mia-hpc").exists()


def test_reset_broken_alone_verifies(synth, tmp_path):
    """Issue 16.6: --reset-broken without --verify used to do nothing and exit 0."""
    store = sd.copy_store(synth, tmp_path / "s.zarr")
    (store / "logits" / "c" / "2" / "1" / "0" / "0").unlink()
    res = sd.mia_hpc("status", str(store), "--reset-broken")
    assert res.returncode == 1, res.stdout + res.stderr
    assert "missing chunk logits/c/2/1/0/0" in res.stdout and "reset: shadows [2] marked not done" in res.stdout
    assert "3/4 shadows done" in sd.mia_hpc("status", str(store)).stdout


def test_finish_rate_known_answers():
    """Issue 16.7: a burst (a batch written at once, shards in step) gave e.g. 86099.8 shadows/h."""
    from mia_hpc.api import MIN_SPAN_S, finish_rate

    burst = 1.7e9 + np.array([0.0, 0.05, 0.1, 0.12, 0.2, 0.25, 0.3, 0.33])
    assert finish_rate(burst) is None  # was (8 - 1) / 0.33 s = 76,364 shadows/h
    assert finish_rate(np.array([0.0, MIN_SPAN_S - 1])) is None
    assert finish_rate(np.array([0.0, 1800.0, 3600.0, np.nan])) == 2.0
    # bursts of 4 every 10 minutes: the first marks the start; 8 shadows in 1200 s = 24 per hour
    t = np.concatenate([b + np.array([0.0, 0.1, 0.2, 0.3]) for b in (0.0, 600.0, 1200.0)])
    assert finish_rate(t) == pytest.approx(8 / 1200.3 * 3600)
    # the last hour only: a pause long ago does not dilute the present pace
    old = np.array([-100000.0, -99000.0])
    assert finish_rate(np.concatenate([old, t])) == pytest.approx(8 / 1200.3 * 3600)


def _start_run(out: Path) -> subprocess.Popen:
    """``mia-hpc run`` in its own process group, as a shell starts a foreground job.

    The smoke spec trained for 200 epochs instead of 2, so that the run is still training when the
    test sends Ctrl-C (the 2-epoch run could finish while ``status`` ran on a busy machine)."""
    spec = out.parent / "long-smoke.toml"
    text = Path(SMOKE).read_text()
    assert "epochs = 2\n" in text
    spec.write_text(text.replace("epochs = 2\n", "epochs = 200\n"))
    return subprocess.Popen([*sd.cli_command(), "run", str(spec), "--out", str(out), "--no-analyze"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _wait_for(cond, timeout: float = 300.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.3)


def test_ctrl_c_during_run_one_message_running_shards_shown(tmp_path):
    """Issue 16.4 (Ctrl-C) and 16.7 (running shards): SIGINT to the run's whole process group, as a
    terminal's Ctrl-C sends it, used to print two submitit KeyboardInterrupt tracebacks."""
    out = tmp_path / "run"
    proc = _start_run(out)
    try:
        leases = out / "store.zarr.leases"
        _wait_for(lambda: len(list(leases.glob("shard-*.json"))) == 2 or proc.poll() is not None)
        assert proc.poll() is None, proc.communicate()
        st = sd.mia_hpc("status", str(out / "store.zarr"))
        assert st.stdout.count("running (pid") == 2, st.stdout  # was "pending"
        os.killpg(proc.pid, signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    assert stderr.rstrip().endswith("mia-hpc: interrupted; finished shadows are kept, re-run the same command "
                                    "to resume"), stderr
    # the workers end with the driver: no shard stays "running"
    _wait_for(lambda: "running" not in sd.mia_hpc("status", str(out / "store.zarr")).stdout, timeout=30)


def test_run_leaves_no_literal_job_id_folder(tmp_path):
    """Issue 16.8: every run's logs/ got a folder named '%j' (submitit's folder template)."""
    out = tmp_path / "run"
    res = sd.mia_hpc("run", SMOKE, "--out", str(out), "--no-analyze")
    assert res.returncode == 0, res.stderr
    logs = sorted(p.name for p in (out / "logs").iterdir())
    assert "%j" not in logs and logs and all(n.isdigit() for n in logs), logs
    st = sd.mia_hpc("status", str(out / "store.zarr"))
    assert "8/8 shadows done" in st.stdout and "running" not in st.stdout

"""Slurm execution against a real single-node cluster: submitit arrays, plain sbatch, re-submits.

The session fixture uses a running cluster (``sinfo`` answers with an idle node) or starts the test
cluster with ``.ci/slurm.sh``. Without Slurm these tests skip locally and FAIL under ``CI=true``.
Quoting and profile-validation tests need no cluster.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mia_hpc import api
from mia_hpc.launch.profile import Profile, load_profile, profile_from_dict
from mia_hpc.launch.sbatch import render_sbatch
from mia_hpc.contract.spec import SpecError, load_spec
from mia_hpc.contract.store import done_mask, open_store

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "jobs" / "smoke.toml"
LOCAL = REPO / "slurm" / "profiles" / "local-test.toml"
SLURM_DIR = Path(os.environ.get("MIA_SLURM_DIR", "/tmp/mia-slurm"))
# same tolerance as tests/test_end_to_end.py: thread counts differ between processes (~1e-7)
ATOL = 1e-5
JOB_TIMEOUT = 180
HOSTILE = 'x"; touch pwned; "'


# --- cluster fixture ----------------------------------------------------------------------------

def _node_state(env: dict[str, str]) -> str:
    if shutil.which("sinfo") is None:
        return ""
    try:
        p = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=15, env=env)
    except subprocess.TimeoutExpired:
        return ""
    return p.stdout.split()[0] if p.returncode == 0 and p.stdout.split() else ""


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: Slurm tests must run, not skip)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def slurm_cluster():
    """SLURM_CONF of a usable cluster: the running one, or the test cluster started here."""
    saved = os.environ.get("SLURM_CONF")
    env = dict(os.environ)
    if _node_state(env) in ("idle", "mix", "alloc"):
        yield saved or "/etc/slurm/slurm.conf"
        return
    if shutil.which("slurmctld") is None and not Path("/usr/sbin/slurmctld").exists():
        _unavailable("Slurm not installed; run `sudo bash .ci/slurm.sh` to enable")
    conf = str(SLURM_DIR / "slurm.conf")
    env["SLURM_CONF"] = conf
    if _node_state(env) not in ("idle", "mix", "alloc"):
        if os.geteuid() != 0:
            _unavailable("Slurm test cluster not running and not root; run `sudo bash .ci/slurm.sh` to enable")
        p = subprocess.run(["bash", str(REPO / ".ci" / "slurm.sh"), str(SLURM_DIR)], capture_output=True,
                           text=True, timeout=600)
        if p.returncode:
            pytest.fail(f".ci/slurm.sh failed ({p.returncode}): {p.stderr.strip()[-2000:]}", pytrace=False)
    os.environ["SLURM_CONF"] = conf
    try:
        yield conf
    finally:
        if saved is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = saved


def _queued(prefixes: set[str]) -> dict[str, str]:
    from mia_hpc.launch.slurm import _ALIVE, alive_jobs

    return {j: s for j, s in alive_jobs().items() if j.split("_")[0] in prefixes and s in _ALIVE}


def wait_gone(job_ids, timeout: float = JOB_TIMEOUT) -> None:
    """Wait until none of the jobs (array ids or task ids) is queued or running."""
    prefixes = {str(j).split("_")[0] for j in job_ids if j}
    deadline = time.monotonic() + timeout
    while (left := _queued(prefixes)):
        if time.monotonic() > deadline:
            subprocess.run(["scancel", *sorted(prefixes)], check=False)
            pytest.fail(f"jobs still queued/running after {timeout}s: {left}")
        time.sleep(0.5)


def submitit_result(job):
    """A finished submitit job's result, without submitit's sacct polling (no accounting here)."""
    if not job.paths.result_pickle.exists():
        err = job.paths.stderr.read_text()[-3000:] if job.paths.stderr.exists() else "(no log)"
        pytest.fail(f"job {job.job_id} left no result; stderr:\n{err}")
    return job.result()


# --- stores -------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def reference_store(tmp_path_factory) -> Path:
    """jobs/smoke.toml trained in this process (executor 'debug')."""
    out = tmp_path_factory.mktemp("reference")
    return api.run(SMOKE, out, executor="debug", analyze=False, progress=False)["store"]


def assert_same_store(store: Path, ref: Path) -> None:
    a, b = open_store(store), open_store(ref)
    assert done_mask(a).all(), f"{store}: shadows not done: {np.flatnonzero(~done_mask(a))}"
    assert a.attrs["spec_hash"] == b.attrs["spec_hash"]
    np.testing.assert_array_equal(a["keep"][...], b["keep"][...])
    np.testing.assert_allclose(a["logits"][...], b["logits"][...], atol=ATOL, rtol=0)
    np.testing.assert_allclose(a["accuracy"][...], b["accuracy"][...], atol=ATOL, rtol=0)
    np.testing.assert_allclose(a["train_loss"][...], b["train_loss"][...], atol=ATOL, rtol=0)


# --- submitit -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def submitted(slurm_cluster, tmp_path_factory):
    """jobs/smoke.toml submitted through submitit (array + dependent analysis), run to the end."""
    from mia_hpc.launch.slurm import submit

    out = tmp_path_factory.mktemp("submitit")
    t0 = time.monotonic()
    res = submit(SMOKE, out, LOCAL)
    assert time.monotonic() - t0 < 60  # returns at once, does not wait for the jobs
    wait_gone([res.shadows_job, res.analysis_job])
    return res


def test_submit_array_and_analysis_equal_local_run(submitted, reference_store):
    spec = load_spec(SMOKE)
    res = submitted
    assert res.shards == list(range(spec.shadows.shards))
    assert len(res.jobs) == spec.shadows.shards  # one array job, one task per shard
    assert {str(j.job_id).split("_")[0] for j in res.jobs} == {res.shadows_job}
    trained = sorted(s for j in res.jobs for s in submitit_result(j))
    assert trained == list(range(spec.shadows.count))
    assert_same_store(res.store, reference_store)
    # the analysis ran after the array (afterok) and wrote its report
    summary = submitit_result(res.analysis)
    assert Path(summary) == res.out / "analysis" / "analysis.json" and Path(summary).is_file()
    script = (res.out / "slurm" / "submitit" / res.analysis_job / f"{res.analysis_job}_submission.sh").read_text()
    assert f"#SBATCH --dependency=afterok:{res.shadows_job}" in script


def test_resubmit_of_finished_run_submits_nothing(submitted):
    from mia_hpc.launch.slurm import submit

    again = submit(SMOKE, submitted.out, LOCAL)
    assert (again.shards, again.shadows_job, again.analysis_job) == ([], None, None)
    assert "shadows: nothing to submit" in again.lines()


def test_resubmit_submits_only_unfinished_shards(slurm_cluster, reference_store, tmp_path):
    from mia_hpc.pipeline.experiment import prepare_store
    from mia_hpc.launch.slurm import submit
    from mia_hpc.launch.worker import train_shard

    spec = load_spec(SMOKE)
    store = tmp_path / "store.zarr"
    prepare_store(spec, store)
    train_shard(store, 0, spec.shadows.shards, progress=False)  # shard 0 finished before submitting
    res = submit(SMOKE, tmp_path, LOCAL)
    assert res.shards == [1] and res.analysis_job
    # submitted again while shard 1 and the analysis are still queued/running: nothing new
    again = submit(SMOKE, tmp_path, LOCAL)
    assert (again.shards, again.skipped_in_flight, again.shadows_job, again.analysis_job) == ([], [1], None, None)
    assert again.analysis_in_flight == res.analysis_job
    wait_gone([res.shadows_job, res.analysis_job])
    assert submitit_result(res.jobs[0]) == list(range(4, 8))
    assert_same_store(store, reference_store)
    assert (tmp_path / "analysis" / "analysis.json").is_file()
    final = submit(SMOKE, tmp_path, LOCAL)
    assert (final.shards, final.skipped_in_flight, final.shadows_job, final.analysis_job) == ([], [], None, None)


def test_sbatch_refusal_is_one_line_error(slurm_cluster, tmp_path):
    from mia_hpc.launch.slurm import SlurmError, submit

    with pytest.raises(SlurmError) as info:
        submit(SMOKE, tmp_path, profile_from_dict({"partition": "no-such-partition"}))
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("sbatch refused the shadows' array job: ") and "partition" in msg
    assert not (tmp_path / "slurm" / "jobs.json").exists()


# --- plain sbatch -------------------------------------------------------------------------------

def _sbatch(*args: str) -> str:
    p = subprocess.run(["sbatch", "--parsable", *args], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return p.stdout.strip().split(";")[0]


def test_rendered_sbatch_scripts_produce_the_same_store(slurm_cluster, reference_store, tmp_path):
    shadows, analysis = render_sbatch(SMOKE, tmp_path, LOCAL)
    text = shadows.read_text()
    assert "#SBATCH --array=0-1%2" in text
    assert "-m mia_hpc.cli train-shard" in text and '--shard "$SLURM_ARRAY_TASK_ID" --of 2' in text
    array = _sbatch(str(shadows))
    dep = _sbatch(f"--dependency=afterok:{array}", str(analysis))
    wait_gone([array, dep])
    logs = sorted((tmp_path / "slurm" / "logs").iterdir())
    assert done_mask(open_store(tmp_path / "store.zarr")).all(), \
        "\n".join(f"{p.name}:\n{p.read_text()[-1500:]}" for p in logs)
    assert_same_store(tmp_path / "store.zarr", reference_store)
    assert (tmp_path / "analysis" / "analysis.json").is_file(), \
        "\n".join(f"{p.name}:\n{p.read_text()[-1500:]}" for p in logs if p.name.startswith("analysis"))


# --- checkpoint / requeue ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def slow_spec(tmp_path_factory):
    """Smoke with one shadow per batch and more epochs (~1.5 s per shadow), and shard 1 trained here."""
    from mia_hpc.pipeline.experiment import prepare_store
    from mia_hpc.launch.worker import train_shard

    d = tmp_path_factory.mktemp("slow")
    path = d / "slow.toml"
    path.write_text(SMOKE.read_text().replace("batch = 4", "batch = 1").replace("epochs = 2", "epochs = 12"))
    ref = d / "ref" / "store.zarr"
    prepare_store(load_spec(path), ref)
    train_shard(ref, 1, 2, progress=False, threads=1)
    return path, ref


def _interrupt_when_partly_done(store: Path, interrupt, timeout: float = 120) -> np.ndarray:
    """Call ``interrupt()`` as soon as shard 1 (shadows 4-7) has finished its first shadow."""
    root = open_store(store)
    deadline = time.monotonic() + timeout
    while (done := done_mask(root)[4:8]).sum() < 1:
        if time.monotonic() > deadline:
            pytest.fail(f"shard 1 finished no shadow within {timeout}s")
        time.sleep(0.05)
    interrupt()
    assert done.sum() < 4, "shard 1 finished before it could be interrupted: make slow_spec slower"
    return done


def _restarts(task_id: str) -> int:
    p = subprocess.run(["scontrol", "-o", "show", "job", task_id], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    return int(p.stdout.split("Restarts=")[1].split()[0])


def _assert_shard1_equal(store: Path, ref: Path) -> None:
    a, b = open_store(store), open_store(ref)
    assert done_mask(a).all()
    np.testing.assert_allclose(a["logits"][4:8], b["logits"][4:8], atol=ATOL, rtol=0)
    np.testing.assert_allclose(a["train_loss"][4:8], b["train_loss"][4:8], atol=ATOL, rtol=0)


def test_submitit_checkpoint_requeues_and_continues(slurm_cluster, slow_spec, tmp_path):
    from mia_hpc.launch.slurm import ShardTask, submit

    spec_path, ref = slow_spec
    res = submit(spec_path, tmp_path, LOCAL, analyze=False)
    task = res.jobs[1]
    assert res.shards == [0, 1] and isinstance(task.submission().function, ShardTask)
    before = _interrupt_when_partly_done(res.store, lambda: task._interrupt(timeout=True))
    wait_gone([res.shadows_job])
    assert _restarts(task.job_id) >= 1
    assert "Requeued" in task.paths.stderr.read_text() or "requeue" in task.paths.stderr.read_text().lower()
    # the requeued task trained only what was left, not the whole shard again
    again = submitit_result(task)
    assert again and set(again) <= set(range(4, 8)) - set(4 + np.flatnonzero(before)), (before, again)
    _assert_shard1_equal(res.store, ref)


def test_sbatch_script_requeues_on_usr1_and_continues(slurm_cluster, slow_spec, tmp_path):
    spec_path, ref = slow_spec
    shadows, _ = render_sbatch(spec_path, tmp_path, LOCAL)
    array = _sbatch(str(shadows))
    signal = ["scancel", "--batch", "--signal=USR1", f"{array}_1"]
    _interrupt_when_partly_done(tmp_path / "store.zarr", lambda: subprocess.run(signal, check=True))
    wait_gone([array])
    assert _restarts(f"{array}_1") >= 1
    log = "".join(p.read_text() for p in (tmp_path / "slurm" / "logs").glob(f"shadows_{array}_1.*"))
    assert "requeueing shard 1" in log, log
    _assert_shard1_equal(tmp_path / "store.zarr", ref)


def _sigkill_task(array: str, index: str) -> None:
    """SIGKILL the python process(es) of one array task, as the OOM killer or a node failure would."""
    import signal

    killed = []
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
            env = set((proc / "environ").read_bytes().split(b"\0"))
        except (OSError, ValueError):
            continue
        if (b"submitit.core._submit" in cmd and f"SLURM_ARRAY_JOB_ID={array}".encode() in env
                and f"SLURM_ARRAY_TASK_ID={index}".encode() in env):
            os.kill(int(proc.name), signal.SIGKILL)
            killed.append(int(proc.name))
    assert killed, f"no process of task {array}_{index} found"


def test_hard_killed_task_is_noticed_and_only_its_shard_resubmitted(slurm_cluster, slow_spec, tmp_path):
    """SIGKILL (no checkpoint): submitit sees the task failed (via sacct); a re-submit finishes it."""
    import submitit

    from mia_hpc.launch.slurm import submit

    if subprocess.run(["sacct", "-n", "-X", "-j", "1"], capture_output=True, timeout=30).returncode:
        _unavailable("sacct does not work on this cluster (no slurmdbd); start it with .ci/slurm.sh")
    spec_path, ref = slow_spec
    res = submit(spec_path, tmp_path, LOCAL, analyze=False)
    task = res.jobs[1]
    array, index = str(task.job_id).split("_")
    _interrupt_when_partly_done(res.store, lambda: _sigkill_task(array, index))
    wait_gone([res.shadows_job])
    deadline = time.monotonic() + 60
    while not task.done(force_check=True):  # submitit asks sacct: the task left no result
        assert time.monotonic() < deadline, f"submitit never noticed the killed task (state {task.state})"
        time.sleep(1)
    assert task.state in ("FAILED", "CANCELLED", "NODE_FAIL") or task.state.startswith("CANCELLED"), task.state
    task._results_timeout_s = 0  # submitit's wait for a slow shared filesystem: not needed here
    with pytest.raises(submitit.core.utils.UncompletedJobError, match="has not produced any output"):
        task.result()
    assert submitit_result(res.jobs[0]) == list(range(4))
    partial = done_mask(open_store(res.store))
    assert partial[:4].all() and 1 <= partial[4:].sum() < 4
    from mia_hpc import api

    st = api.status(res.store)
    assert st.failed == [1], st.lines()
    assert "FAILED" in st.lines()[2] and str(task.job_id) in st.lines()[2]
    again = submit(spec_path, tmp_path, LOCAL, analyze=False)
    assert again.shards == [1]
    wait_gone([again.shadows_job])
    assert set(submitit_result(again.jobs[0])) == set(4 + np.flatnonzero(~partial[4:]))
    _assert_shard1_equal(res.store, ref)


# --- quoting ------------------------------------------------------------------------------------

def _hostile_spec(tmp_path: Path) -> Path:
    p = tmp_path / "hostile.toml"
    p.write_text(SMOKE.read_text().replace('name = "smoke"', f"name = '{HOSTILE}'"))
    return p


def _pwned(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith("pwned")] + \
        [p for p in Path.cwd().glob("pwned*")]


def test_hostile_strings_in_rendered_scripts_stay_data(tmp_path):
    out = tmp_path / f"o {HOSTILE} $(touch pwned2) `touch pwned3` 'q"
    prof = profile_from_dict({
        "partition": "debug",
        "setup": [f"echo {HOSTILE}", "echo $(touch pwned4) `touch pwned5` ${HOME}"],
        "sbatch_options": [f"--comment={HOSTILE}"],
        "python": f"echo '{HOSTILE}'",  # prints the command it was given instead of running it
    })
    shadows, analysis = render_sbatch(_hostile_spec(tmp_path), out, prof)
    store = out / "store.zarr"
    assert store.is_dir()
    for script in (shadows, analysis):
        assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
        assert subprocess.run(["bash", "-n", str(script)], cwd=tmp_path).returncode == 0
    env = {**os.environ, "SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_JOB_ID": "7"}
    p = subprocess.run(["bash", str(shadows)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    # the setup lines ran, with every word passed through verbatim
    assert lines[0] == HOSTILE.replace('"', "")
    assert lines[1] == "$(touch pwned4) `touch pwned5` ${HOME}"
    # the store path and the python words arrive as single, unchanged arguments
    assert lines[2] == f"{HOSTILE} -m mia_hpc.cli train-shard {store} --shard 1 --of 2 --threads 1"
    p = subprocess.run(["bash", str(analysis)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[-1] == f"{HOSTILE} -m mia_hpc.cli analyze {store} --out {out / 'analysis'}"
    # the job name on the #SBATCH line is reduced to safe characters; the comment is quoted
    text = shadows.read_text()
    assert "#SBATCH --job-name=mia-x___touch_pwned___-shadows" in text
    assert f"#SBATCH --comment={shlex.quote(HOSTILE)}" in text
    # a hostile container prefix is one (missing) command, not shell code
    prof2 = profile_from_dict({"container": HOSTILE + " --bind /x", "setup": [HOSTILE]})
    shadows2, _ = render_sbatch(_hostile_spec(tmp_path), out, prof2)
    assert shlex.quote(HOSTILE.replace('"', "")) in shadows2.read_text()
    p = subprocess.run(["bash", str(shadows2)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 127 and "command not found" in p.stderr
    assert _pwned(tmp_path) == []


def test_hostile_setup_in_submitit_script_stays_data(tmp_path):
    from submitit.slurm.slurm import _make_sbatch_string

    prof = profile_from_dict({"setup": [f"echo {HOSTILE}"], "sbatch_options": [f"--comment={HOSTILE}"],
                              "container": f"echo {HOSTILE}"})
    text = _make_sbatch_string(command=f"{prof.python_command()} -u -m submitit.core._submit {tmp_path}",
                               folder=tmp_path, setup=prof.setup_lines(),
                               additional_parameters=prof.sbatch_flags())
    assert subprocess.run(["bash", "-n"], input=text, text=True).returncode == 0
    setup = text.split("# setup\n", 1)[1].split("\n# command", 1)[0]
    p = subprocess.run(["bash", "-c", setup], cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert p.returncode == 0 and p.stdout.rstrip("\n") == HOSTILE.replace('"', ""), p.stderr
    assert _pwned(tmp_path) == []


def test_output_dir_with_newline_is_refused(tmp_path):
    with pytest.raises(SpecError, match="--out: must not contain control characters"):
        render_sbatch(SMOKE, tmp_path / "a\nb", LOCAL)
    assert not (tmp_path / "a\nb").exists()


# --- profiles -----------------------------------------------------------------------------------

def test_shipped_profiles_load():
    gpu = load_profile(REPO / "slurm" / "profiles" / "generic-gpu.toml")
    assert gpu.gpus_per_task == 1 and gpu.partition == "gpu"
    local = load_profile(LOCAL)
    assert local.gpus_per_task == 0 and local.cpus_per_task == 1
    assert local.python_words() == [sys.executable]
    boxed = Profile(container="apptainer exec --nv --bind /scratch /img/mia.sif")
    assert boxed.python_words() == ["apptainer", "exec", "--nv", "--bind", "/scratch", "/img/mia.sif", "python"]


@pytest.mark.parametrize("text, key", [
    ('partitionn = "gpu"', "partitionn: unknown key"),
    ("cpus_per_task = 0", "cpus_per_task: must be an integer >= 1"),
    ("gpus_per_task = true", "gpus_per_task: must be an integer"),
    ('mem_gb = "4G"', "mem_gb: must be a finite number"),
    ("time_min = 1.5", "time_min: must be an integer"),
    ("array_parallelism = -1", "array_parallelism: must be an integer >= 1"),
    ('sbatch_options = "--qos=x"', "sbatch_options: must be a list of"),
    ("sbatch_options = [1]", "sbatch_options[0]: must be a string"),
    ('sbatch_options = ["-p gpu"]', "sbatch_options[0]: must be a long sbatch option"),
    ('sbatch_options = ["--array=0-3"]', "sbatch_options[0]: --array is set by mia-hpc itself"),
    ('sbatch_options = ["--qos=a", "--qos=b"]', "sbatch_options[1]: --qos is given twice"),
    ('sbatch_options = ["--comment=a\\nb"]', "sbatch_options[0]: must not contain control characters"),
    ("setup = ['echo \"unbalanced']", "setup[0]: cannot be split into words"),
    ("container = \"apptainer exec 'x\"", "container: cannot be split into words"),
    ('partition = "gpu; rm -rf /"', "partition: must be a Slurm name"),
    ('python = "   "', "python: must name a command"),
    ("[partition]\nname = 'gpu'", "partition: must be a string"),
    ("partition = ", "invalid TOML"),
])
def test_malformed_profile_is_one_line_error_naming_file_and_key(tmp_path, text, key):
    path = tmp_path / "bad.toml"
    path.write_text(text + "\n")
    with pytest.raises(SpecError) as info:
        load_profile(path)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"{path}: ") and key in msg, msg


def test_missing_profile_and_cli_errors(tmp_path):
    import argparse

    from mia_hpc.commands.slurm_cli import register

    with pytest.raises(SpecError, match="profile file not found"):
        load_profile(tmp_path / "nope.toml")
    parser = argparse.ArgumentParser()
    handlers = register(parser.add_subparsers(dest="cmd"))
    assert set(handlers) == {"submit", "render-sbatch"}
    bad = tmp_path / "bad.toml"
    bad.write_text("cpus_per_task = 0\n")
    for cmd in ("render-sbatch", "submit"):
        args = parser.parse_args([cmd, str(SMOKE), "--profile", str(bad), "--out", str(tmp_path / "o")])
        with pytest.raises(SpecError, match="cpus_per_task"):
            handlers[cmd](args)
    assert not (tmp_path / "o").exists()  # nothing is created for a bad profile
    args = parser.parse_args(["render-sbatch", str(SMOKE), "--profile", str(LOCAL), "--out", str(tmp_path / "r")])
    assert handlers["render-sbatch"](args) == 0
    assert (tmp_path / "r" / "slurm" / "shadows.sbatch").is_file()


def test_generated_scripts_and_cluster_script_pass_shellcheck(tmp_path):
    if shutil.which("shellcheck") is None:
        _unavailable("shellcheck not installed; install it (apt-get install shellcheck; .ci/run does)")
    scripts = [*render_sbatch(SMOKE, tmp_path, REPO / "slurm" / "profiles" / "generic-gpu.toml"),
               REPO / ".ci" / "slurm.sh"]
    p = subprocess.run(["shellcheck", "-s", "bash", *map(str, scripts)], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout


@pytest.mark.parametrize("script", ["submitit", "sbatch"])
def test_failing_setup_line_stops_the_job_script(tmp_path, script):
    """A setup line that fails (not only an ``exit``) ends the job script with its status and names
    the line; the lines after it and the task itself never run. submitit's script has no ``set -e``."""
    from submitit.slurm.slurm import _make_sbatch_string

    prof = profile_from_dict({"setup": ["touch before", "ls /no/such/dir", "touch after"],
                              "python": "touch ran"})
    if script == "submitit":
        text = _make_sbatch_string(command=f"{prof.python_command()} -u -m submitit.core._submit {tmp_path}",
                                   folder=tmp_path, setup=prof.setup_lines())
    else:
        shadows, _ = render_sbatch(SMOKE, tmp_path / "out", prof)
        text = shadows.read_text()
    env = {**os.environ, "SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_JOB_ID": "7", "SLURM_JOB_ID": "7"}
    p = subprocess.run(["bash", "-c", text], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2, p.stderr  # ls' status for a missing file
    assert "mia-hpc: profile setup line failed: ls /no/such/dir (exit 2)" in p.stderr
    assert (tmp_path / "before").exists()
    assert not (tmp_path / "after").exists() and not (tmp_path / "ran").exists()


# --- the tiny form through Slurm ------------------------------------------------------------------

DEMO = REPO / "jobs" / "demo.toml"


def test_render_sbatch_tiny_prepares_the_tiny_store(tmp_path, capsys):
    """``render-sbatch --tiny``: the store and the scripts are the spec's tiny form (mia_hpc.pipeline.tiny)."""
    from mia_hpc.cli import main
    from mia_hpc.pipeline.tiny import tiny_spec

    tiny = tiny_spec(load_spec(DEMO))
    assert main(["render-sbatch", str(DEMO), "--tiny", "--profile", str(LOCAL), "--out", str(tmp_path)]) == 0
    store = open_store(tmp_path / "store.zarr")
    assert store.attrs["spec_hash"] == tiny.hash() != load_spec(DEMO).hash()
    assert store["keep"].shape[0] == tiny.shadows.count < load_spec(DEMO).shadows.count
    text = (tmp_path / "slurm" / "shadows.sbatch").read_text()
    assert f"--of {tiny.shadows.shards}" in text and f"#SBATCH --array=0-{tiny.shadows.shards - 1}" in text


def test_cli_submit_tiny_runs_the_tiny_form_to_an_analysis(slurm_cluster, tmp_path, capsys):
    """``mia-hpc submit SPEC --tiny``: a smoke test of a cluster setup with any spec, in a minute."""
    from mia_hpc.cli import main
    from mia_hpc.launch.slurm import _read_jobs
    from mia_hpc.pipeline.tiny import tiny_spec

    assert main(["submit", str(DEMO), "--tiny", "--profile", str(LOCAL), "--out", str(tmp_path)]) == 0
    assert "analysis: job" in capsys.readouterr().out
    jobs = _read_jobs(tmp_path)
    wait_gone([*jobs["shards"].values(), jobs["analysis"]])
    store = open_store(tmp_path / "store.zarr")
    assert store.attrs["spec_hash"] == tiny_spec(load_spec(DEMO)).hash()
    assert done_mask(store).all()
    summary = json.loads((tmp_path / "analysis" / "analysis.json").read_text())
    assert summary["n_shadows_done"] == store["keep"].shape[0]


# --- racing array tasks ---------------------------------------------------------------------------

RACE_TASK = """#!/bin/bash
#SBATCH --array=0-1%2
#SBATCH --cpus-per-task=1
#SBATCH --mem=1G
#SBATCH --time=10
#SBATCH --output={logs}/task_%a.out
#SBATCH --error={logs}/task_%a.err
# four workers per array task, two per shard: 8 racing processes on a two-core node
for i in 0 1 2 3; do
  shard=$(( (SLURM_ARRAY_TASK_ID + i) % 2 ))
  {python} -m mia_hpc.cli train-shard {store} --shard "$shard" --of 2 --device cpu \\
    > {logs}/w${{SLURM_ARRAY_TASK_ID}}_$i.log 2>&1 &
done
for pid in $(jobs -p); do wait "$pid"; echo "rc $?"; done
"""


def test_eight_workers_in_a_slurm_array_train_each_shadow_once(slurm_cluster, reference_store, tmp_path):
    """Two array tasks with four ``train-shard`` workers each race for smoke's two shards: every shadow
    is trained once (the others refuse, naming the lease's owner), the store equals a serial run's bit for bit."""
    store = tmp_path / "store.zarr"
    from mia_hpc.pipeline.experiment import prepare_store

    prepare_store(load_spec(SMOKE), store)
    logs = tmp_path / "logs"
    logs.mkdir()
    script = tmp_path / "race.sbatch"
    script.write_text(RACE_TASK.format(logs=shlex.quote(str(logs)), python=shlex.quote(sys.executable),
                                       store=shlex.quote(str(store))))
    env_before = os.environ.get("MIA_HPC_STALL_AT")
    os.environ["MIA_HPC_STALL_AT"] = "train+3"  # sbatch exports it: each winner holds its lease 3 s first
    try:
        array = _sbatch(str(script))
    finally:
        if env_before is None:
            os.environ.pop("MIA_HPC_STALL_AT")
        else:
            os.environ["MIA_HPC_STALL_AT"] = env_before
    wait_gone([array])
    texts = {p.name: p.read_text() for p in sorted(logs.glob("w*.log"))}
    assert len(texts) == 8, sorted(logs.iterdir())
    rcs = [ln for t in logs.glob("task_*.out") for ln in t.read_text().split("\n") if ln.startswith("rc ")]
    assert len(rcs) == 8 and set(rcs) <= {"rc 0", "rc 1"}, rcs
    for name, text in texts.items():
        assert "Traceback" not in text and ("is being trained by pid" in text or "shard " in text), f"{name}:\n{text}"
    starts = [int(s) for t in texts.values() for line in t.splitlines() if "trains shadows" in line
              for s in line.split("[", 1)[1].rstrip("]").split(", ")]
    assert sorted(starts) == list(range(8)), "\n".join(f"{k}:\n{v}" for k, v in texts.items())
    assert rcs.count("rc 1") >= 2, "the racers never met"
    a, b = open_store(store), open_store(reference_store)
    assert done_mask(a).all()
    for name in ("logits", "accuracy", "train_loss"):  # train.threads fixes the arithmetic: bit for bit
        assert np.asarray(a[name][...]).tobytes() == np.asarray(b[name][...]).tobytes(), name

"""Multi-stage experiments (paper §6 (b), (c)): memorization oracle -> selection -> attack -> analysis.

Local runs use jobs/staged-smoke.toml (MLP, 200 samples, 8 oracle shadows, 4 attack shadows: seconds).
The Slurm test uses the cluster fixture of tests/test_slurm.py: it skips locally without Slurm and
FAILS under ``CI=true``.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from mia_hpc import api
from mia_hpc.cli import main
from mia_hpc.contract.spec import SpecError, load_spec, spec_from_dict
from mia_hpc.contract.store import done_mask, open_store, read_strings
from test_slurm import slurm_cluster, wait_gone  # noqa: F401 (the cluster fixture: skip locally, fail under CI)

REPO = Path(__file__).resolve().parents[1]
STAGED = REPO / "jobs" / "staged-smoke.toml"
LOCAL_PROFILE = REPO / "slurm" / "profiles" / "local-test.toml"


def _oracle_singletons(oracle: Path, threshold: float) -> np.ndarray:
    """Candidate indices with oracle mem > threshold, recomputed with the analysis side only."""
    from analysis.studies.groups import singletons
    from analysis.store_io.load import open_shadows
    from analysis.studies.memorization import memorization

    data = open_shadows(oracle)
    assert data.n_shadows == data.n_total  # every oracle shadow finished
    mem, _ = memorization(data.correct().values, data.keep.values)
    train = data.split == "train"
    cand = np.flatnonzero((data.group == "under") & train)
    mask = singletons(mem, data.group, threshold, train=train)
    assert np.all(mem[mask] > threshold)
    return np.flatnonzero(mask[cand])


def _static(root) -> dict[str, np.ndarray]:
    return {"image": np.asarray(root["image"][...]), "label": np.asarray(root["label"][...]),
            "source": np.asarray(root["source"][...]), "group": read_strings(root, "group"),
            "split": read_strings(root, "split")}


def _assert_attack_store_is_selection(out: Path, indices: list[int]) -> None:
    o, a = _static(open_store(out / "oracle" / "store.zarr")), _static(open_store(out / "store.zarr"))
    o_cand = np.flatnonzero((o["group"] == "under") & (o["split"] == "train"))
    a_cand = np.flatnonzero((a["group"] == "under") & (a["split"] == "train"))
    assert len(a_cand) == len(indices)
    # D_U of the attack store = exactly the selected oracle candidates, in order, byte for byte
    for k in ("image", "label", "source"):
        np.testing.assert_array_equal(a[k][a_cand], o[k][o_cand[indices]])
    # everything else (pool D_O, test D_O, test D_U) is the oracle's, unchanged
    rest_o = np.setdiff1d(np.arange(len(o["label"])), o_cand)
    rest_a = np.setdiff1d(np.arange(len(a["label"])), a_cand)
    for k in o:
        np.testing.assert_array_equal(a[k][rest_a], o[k][rest_o])


def test_staged_singletons_run_through_cli_and_rerun_trains_nothing(tmp_path, capsys):
    out = tmp_path / "staged"
    spec = load_spec(STAGED)
    assert main(["run", str(STAGED), "--out", str(out), "--executor", "debug"]) == 0
    printed = capsys.readouterr().out
    assert f"{spec.shadows.count}/{spec.shadows.count} shadows done" in printed and "lira-online" in printed

    sel = json.loads((out / "selection.json").read_text())
    oracle = out / "oracle" / "store.zarr"
    assert done_mask(open_store(oracle)).all() and len(done_mask(open_store(oracle))) == spec.selection.oracle_shadows
    expected = _oracle_singletons(oracle, spec.selection.threshold)
    assert 0 < len(expected) < sel["n_candidates"] == spec.n_under  # a real selection, not all / none
    assert sel["indices"] == expected.tolist() and sel["n_selected"] == len(expected)
    assert sel["kind"] == "singletons" and sel["spec_hash"] == spec.hash()
    assert not list(out.glob(".selection.json.*"))  # written atomically, no temporary left

    _assert_attack_store_is_selection(out, sel["indices"])
    root = open_store(out / "store.zarr")
    assert root.attrs["selection"]["hash"] == sel["hash"] and root.attrs["selection"]["indices"] == sel["indices"]
    assert root.attrs["spec_hash"] == spec.hash() and done_mask(root).all()
    ds = xr.open_zarr(out / "store.zarr")
    keep, pool = ds.keep.values, ds.split.values == "train"
    assert (keep[:, pool].sum(0) == spec.shadows.count // 2).all() and not keep[:, ~pool].any()
    assert (out / "analysis" / "analysis.json").is_file()
    assert main(["stages", str(out)]) == 0  # every stage finished
    shown = capsys.readouterr().out
    assert f"{sel['n_selected']} of {sel['n_candidates']} D_U candidates" in shown and "analysis:  done" in shown

    logits = np.asarray(root["logits"][...])
    mtime = (out / "selection.json").stat().st_mtime_ns
    again = api.run(STAGED, out, executor="debug", analyze=False, progress=False)
    assert again["oracle_trained"] == [] and again["trained"] == []  # nothing new trained
    assert (out / "selection.json").stat().st_mtime_ns == mtime  # selection reused, not redone
    np.testing.assert_array_equal(np.asarray(open_store(out / "store.zarr")["logits"][...]), logits)


def test_staged_subpopulation_selects_the_smallest_cluster(tmp_path):
    from analysis.studies.groups import store_features, subpopulation
    from analysis.store_io.load import open_shadows

    p = tmp_path / "sub.toml"
    p.write_text(STAGED.read_text().replace('kind = "singletons"', 'kind = "subpopulation"'))
    spec = load_spec(p)
    res = api.run(p, tmp_path / "sub", executor="debug", analyze=False, progress=False)
    data = open_shadows(res["oracle"])
    train = data.split == "train"
    mask = subpopulation(store_features(data.ds), data.group, train=train, seed=spec.seed)
    cand = np.flatnonzero((data.group == "under") & train)
    assert res["selection"]["indices"] == np.flatnonzero(mask[cand]).tolist()
    assert res["selection"]["n_selected"] >= 1
    _assert_attack_store_is_selection(tmp_path / "sub", res["selection"]["indices"])


def test_candidates_and_oracle_overrides(tmp_path):
    from mia_hpc.pipeline.stages import oracle_spec

    base = load_spec(STAGED)
    raw = base.to_dict()
    raw["selection"].update(candidates=25, oracle_epochs=2, oracle_shadows=6)
    spec = spec_from_dict(raw)
    o = oracle_spec(spec)
    assert (o.n_over, o.n_under) == (spec.n_over, 25)
    assert (o.shadows.count, o.train.epochs, o.selection.kind) == (6, 2, "none")
    assert o.seed == spec.seed and o.data.under == spec.data.under
    # data differs between oracle settings, so they are part of the hash; kind "none" keeps old hashes
    assert spec.hash() != base.hash()
    plain = dict(base.to_dict(), selection={"kind": "none"})
    no_table = base.to_dict()
    no_table.pop("selection")
    assert spec_from_dict(plain).hash() == spec_from_dict(no_table).hash()


@pytest.mark.parametrize("change, key", [
    ({"data": {"size": 200, "alpha": 1.0, "under": {"kind": "none"}}, "selection": {"kind": "singletons"}},
     "selection.kind"),
    ({"selection": {"kind": "singletons", "candidates": 5}}, "selection.candidates"),
    ({"selection": {"kind": "singletons", "oracle_shadows": 3}}, "selection.oracle_shadows"),
    ({"selection": {"kind": "singleton"}}, "selection.kind"),
    ({"selection": {"kind": "singletons", "treshold": 0.5}}, "selection.treshold"),
])
def test_bad_selection_tables_refused(change, key):
    with pytest.raises(SpecError) as err:
        spec_from_dict(change)
    assert str(err.value).startswith(key)


def test_staged_spec_cannot_be_built_in_one_step(tmp_path):
    from mia_hpc.pipeline.experiment import prepare_store

    with pytest.raises(SpecError, match="staged"):
        prepare_store(load_spec(STAGED), tmp_path / "s.zarr")
    assert not (tmp_path / "s.zarr").exists()


def test_too_few_selected_fails_the_selection_stage(tmp_path):
    from mia_hpc.pipeline.stages import StageError

    p = tmp_path / "none.toml"
    p.write_text(STAGED.read_text().replace("threshold = 0.4", "threshold = 1.0"))
    with pytest.raises(StageError, match="min_selected"):
        api.run(p, tmp_path / "n", executor="debug", analyze=False, progress=False)
    assert done_mask(open_store(tmp_path / "n" / "oracle" / "store.zarr")).all()  # the oracle is kept
    assert not (tmp_path / "n" / "selection.json").exists() and not (tmp_path / "n" / "store.zarr").exists()


def test_staged_out_of_another_spec_refused(tmp_path, capsys):
    api.run(STAGED, tmp_path / "r", executor="debug", analyze=False, progress=False)
    other = tmp_path / "other.toml"
    other.write_text(STAGED.read_text().replace("threshold = 0.4", "threshold = 0.3"))
    assert main(["run", str(other), "--out", str(tmp_path / "r"), "--executor", "debug"]) == 2
    assert "different spec" in capsys.readouterr().err


def test_restrict_under_keeps_order_and_refuses_bad_indices():
    from mia_hpc.data.selection import restrict_under
    from mia_hpc.contract.store import StaticData

    group = np.array(["over", "under", "under", "under", "over", "under"])
    split = np.array(["train", "train", "train", "train", "test", "test"])
    d = StaticData(image=np.arange(6, dtype=np.float32).reshape(6, 1, 1, 1), label=np.arange(6), group=group,
                   split=split, source=np.arange(6) * 10, dataset=np.array(["x"] * 6), n_classes=10)
    r = restrict_under(d, [2, 0])
    assert r.source.tolist() == [0, 10, 30, 40, 50]
    assert restrict_under(d, []).source.tolist() == [0, 40, 50]
    for bad in ([3], [-1], [1, 1]):
        with pytest.raises(ValueError):
            restrict_under(d, bad)


# --- Slurm: every stage submitted at once ------------------------------------------------------

def _sacct(ids: list[str]) -> dict[str, tuple[str, str, str]]:
    p = subprocess.run(["sacct", "-n", "-P", "-X", "-o", "JobID,State,Start,End", "-j", ",".join(ids)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    out = {}
    for line in p.stdout.splitlines():
        jid, state, start, end = line.split("|")
        out[jid] = (state.split()[0], start, end)
    return out


def _final_sacct(ids: list[str], timeout: float = 60) -> dict[str, tuple[str, str, str]]:
    """sacct states once no job is still pending/running: slurmdbd records a job's end a moment
    after squeue drops it."""
    deadline = time.monotonic() + timeout
    while True:
        states = _sacct(ids)
        if all(st[0] not in ("PENDING", "RUNNING", "COMPLETING") for st in states.values()) \
                or time.monotonic() > deadline:
            return states
        time.sleep(1)


def test_staged_submit_chains_every_stage_with_afterok(slurm_cluster, tmp_path):
    from mia_hpc.api import submit
    from mia_hpc.launch.slurm import SlurmError

    out = tmp_path / "staged-slurm"
    t0 = time.monotonic()
    res = submit(STAGED, out, LOCAL_PROFILE)
    assert time.monotonic() - t0 < 60  # everything submitted at once, nothing waited for
    ids = [res.oracle_job, res.selection_job, res.shadows_job, res.analysis_job]
    assert all(ids), res
    # the dependency chain, as Slurm holds it while the later stages wait
    p = subprocess.run(["squeue", "-h", "-o", "%i|%E", "-j", ",".join(ids)], capture_output=True, text=True,
                       timeout=60)
    deps = {line.split("|")[0]: line.split("|")[1] for line in p.stdout.splitlines()}
    # the analysis cannot have started yet (it waits for three stages): Slurm holds its dependency
    assert deps.get(res.analysis_job, "").startswith(f"afterok:{res.shadows_job}_"), deps

    def script(job: str) -> str:  # submitit's sbatch script of a job (an array's: one per array)
        return (out / "slurm" / "submitit" / job / f"{job}_submission.sh").read_text()

    for job, after in ((res.selection_job, res.oracle_job), (res.shadows_job, res.selection_job),
                       (res.analysis_job, res.shadows_job)):
        for j, d in deps.items():  # those still waiting must wait on exactly the previous stage
            if j.split("_")[0] == job and d not in ("", "(null)"):
                assert d.startswith(f"afterok:{after}_") or d.startswith(f"afterok:{after}("), (job, d)
        text = script(job)
        assert f"#SBATCH --dependency=afterok:{after}\n" in text
        assert "#SBATCH --kill-on-invalid-dep=yes" in text
    assert "--dependency" not in script(res.oracle_job)

    with pytest.raises(SlurmError, match="still queued/running"):  # no second chain while this one runs
        submit(STAGED, out, LOCAL_PROFILE)
    wait_gone(ids, timeout=300)
    states = _final_sacct(ids)
    assert {states[j][0] for j in (res.selection_job, res.analysis_job)} == {"COMPLETED"}, states
    tasks = {j: s for j, s in states.items() if j.split("_")[0] in (res.oracle_job, res.shadows_job)}
    assert tasks and all(s[0] == "COMPLETED" for s in tasks.values()), states
    # afterok held: each stage started after the previous one ended
    oracle_end = max(s[2] for j, s in tasks.items() if j.startswith(res.oracle_job))
    attack_start = min(s[1] for j, s in tasks.items() if j.startswith(res.shadows_job))
    attack_end = max(s[2] for j, s in tasks.items() if j.startswith(res.shadows_job))
    assert oracle_end <= states[res.selection_job][1] and states[res.selection_job][2] <= attack_start
    assert attack_end <= states[res.analysis_job][1]

    spec = load_spec(STAGED)
    sel = json.loads((out / "selection.json").read_text())
    assert sel["indices"] == _oracle_singletons(out / "oracle" / "store.zarr", spec.selection.threshold).tolist()
    _assert_attack_store_is_selection(out, sel["indices"])
    assert done_mask(open_store(out / "store.zarr")).all()
    assert (out / "analysis" / "analysis.json").is_file()
    # a re-submit of the finished run submits nothing (plain path on the attack store)
    again = submit(STAGED, out, LOCAL_PROFILE)
    assert again.plain is not None and again.shadows_job is None and again.analysis_job is None


def test_failed_selection_cancels_the_later_stages(slurm_cluster, tmp_path, capsys):
    p = tmp_path / "none.toml"
    p.write_text(STAGED.read_text().replace("threshold = 0.4", "threshold = 1.0"))  # nothing qualifies
    out = tmp_path / "fail"
    assert main(["submit", str(p), "--profile", str(LOCAL_PROFILE), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    jobs = json.loads((out / "slurm" / "stages.json").read_text())
    assert f"selection: job {jobs['selection']} (after the oracle)" in printed
    ids = [jobs[k] for k in ("oracle", "selection", "shadows", "analysis")]
    wait_gone(ids, timeout=300)
    states = _final_sacct(ids)
    assert states[jobs["selection"]][0] == "FAILED", states
    later = {j: s for j, s in states.items() if j.split("_")[0] in (jobs["shadows"], jobs["analysis"])}
    assert later and all(s[0] == "CANCELLED" for s in later.values()), states  # kill-on-invalid-dep
    assert done_mask(open_store(out / "oracle" / "store.zarr")).all()
    assert not (out / "selection.json").exists() and not (out / "store.zarr").exists()
    assert main(["stages", str(out)]) == 1
    assert "selection: not done" in capsys.readouterr().out

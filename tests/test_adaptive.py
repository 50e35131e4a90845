"""Adaptive shadow budget: waves double, keep masks stay balanced per prefix, the stop rule works,
the watched values are the report's, and Slurm runs the same waves to the same numbers as a local run."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import xarray as xr

from analysis.studies.watch import parse_watch
from mia_hpc.pipeline.adaptive import replay_adaptive, run_adaptive
from mia_hpc.contract.waves import MIN_COUNTED, check_adaptive, wave_sizes
from mia_hpc.cli import main
from mia_hpc.contract.spec import SpecError, spec_from_dict
from test_slurm import slurm_cluster, wait_gone  # noqa: F401 (the cluster fixture: skip locally, fail under CI)

REPO = Path(__file__).resolve().parents[1]
LOCAL_PROFILE = REPO / "slurm" / "profiles" / "local-test.toml"
WATCH = ["lira-online/AUROC Under", "mem/mean singletons"]


def _spec_dict(tolerance: float, count: int = 32, **adaptive) -> dict:
    return {
        "name": "adaptive-tiny", "seed": 5,
        "data": {"size": 200, "alpha": 0.8, "test_under": 20, "under": {"n_fractals": 8}},
        "model": {"arch": "mlp", "width": 32},
        "train": {"epochs": 8, "batch_size": 32, "optimizer": "adam", "lr": 0.01},
        "shadows": {"count": count, "batch": 4, "shards": 2, "keep_block": 4},
        "queries": {"shift": 0},
        "analysis": {"singleton_threshold": 0.5},
        "adaptive": {"first_wave": 4, "tolerance": tolerance, "watch": WATCH, **adaptive},
    }


def _spec(tolerance: float, count: int = 32, **adaptive):
    return spec_from_dict(_spec_dict(tolerance, count, **adaptive))


@pytest.fixture(scope="module")
def one_thread():
    """Slurm tasks of the local-test profile train with one torch thread: the local reference does too,
    so both produce bit-identical logits (and therefore identical numbers)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, one_thread):
    """The tiny spec run adaptively on this machine: stops at 16 of 32 shadows."""
    out = tmp_path_factory.mktemp("adaptive-local")
    res = run_adaptive(_spec(0.15), out, executor="debug", progress=False, extras=False)
    return out, res


def test_wave_sizes_and_prefix_balance_check():
    assert wave_sizes(_spec(0.1)) == [4, 8, 16, 32]
    assert wave_sizes(spec_from_dict({"shadows": {"count": 24, "keep_block": 6},
                                      "adaptive": {"first_wave": 6}})) == [6, 12, 24]
    with pytest.raises(SpecError, match="shadows.keep_block: --adaptive needs"):
        check_adaptive(spec_from_dict({"shadows": {"count": 16}, "adaptive": {"first_wave": 4}}), parse_watch)


def test_stops_early_with_balanced_prefix_and_report(local_run):
    out, res = local_run
    assert res.converged and res.used == 16 and res.saved_fraction == 0.5
    assert [w.shadows for w in res.waves] == [4, 8, 16]
    # a change from a wave below MIN_COUNTED shadows is not evidence of convergence: none at 8
    assert MIN_COUNTED == 6 and res.waves[1].changes == {} and set(res.waves[2].changes) == set(WATCH)
    assert all(abs(c) <= 0.15 for c in res.waves[2].changes.values())
    ds = xr.open_zarr(out / "store.zarr")
    assert ds.done.values[:16].all() and not ds.done.values[16:].any()  # nothing trained past the stop
    pool = ds.split.values == "train"
    assert (ds.keep.values[:16][:, pool].sum(0) == 8).all()  # every sample IN for half of the prefix
    summary = json.loads((out / "adaptive.json").read_text())
    assert summary["finished"] and summary["status"] == "converged" and summary["shadows_used"] == 16
    assert summary["first_within_tolerance"] == {k: 16 for k in WATCH}
    for w in summary["waves"]:  # every value with its bootstrap interval around it
        for k, v in w["values"].items():
            lo, hi = w["intervals"][k]
            assert v is None or lo - 1e-12 <= v <= hi + 1e-12, (w["shadows"], k)
    assert json.loads((out / "waves" / "000004.json").read_text())["shadows"] == 4
    # the report of the shadows used: the 16-shadow prefix, and its attack table is the watched value
    an = json.loads((out / "analysis" / "analysis.json").read_text())
    assert an["n_shadows_done"] == 16
    table = pd.read_csv(out / "analysis" / "tables" / "attacks.csv", index_col=0)
    assert table.loc["lira-online", "AUROC Under"] == pytest.approx(res.waves[-1].values["lira-online/AUROC Under"],
                                                                    abs=1e-12)


def test_watched_values_equal_the_full_report(tmp_path):
    """Challenge-set cells and memorization equal the report's paper tables for the same shadows."""
    from analysis.output.report import analyze
    from analysis.tools.synthetic_store import write_synthetic_store
    from analysis.studies.watch import watch_values

    store = tmp_path / "s.zarr"
    write_synthetic_store(store, n_shadows=12, n_samples=200, separation={"over": 0.5, "under": 2.5},
                          frac_under=0.3, seed=3, analysis={"singleton_threshold": 0.3})
    keys = ["lira-online/AUROC random", "lira-online/TPR@0.1% singletons", "lira-offline/AUROC singletons",
            "yeom/AUROC All", "lira-fixed-variance/TPR@1% Under", "mem/mean under", "mem/mean over"]
    w = watch_values(store, keys)
    res = analyze(store, tmp_path / "an", progress=False)
    paper, attacks, memo = res["paper_attacks"], res["attacks"], res["memorization"]
    assert w.values["lira-online/AUROC random"].value == pytest.approx(
        paper.loc[("lira-online", "random"), "AUROC Under"], abs=1e-12)
    assert w.values["lira-online/AUROC random"].lo == pytest.approx(
        paper.loc[("lira-online", "random"), "AUROC Under lo"], abs=1e-12)  # same bootstrap too
    assert w.values["lira-online/TPR@0.1% singletons"].value == pytest.approx(
        paper.loc[("lira-online", "singletons"), "TPR@0.1% Under"], abs=1e-12)
    assert w.values["lira-offline/AUROC singletons"].value == pytest.approx(
        paper.loc[("lira-offline", "singletons"), "AUROC Under"], abs=1e-12)
    assert w.values["yeom/AUROC All"].value == pytest.approx(attacks.loc["yeom", "AUROC All"], abs=1e-12)
    assert w.values["lira-fixed-variance/TPR@1% Under"].value == pytest.approx(
        attacks.loc["lira-fixed-variance", "TPR@1% Under"], abs=1e-12)
    for g in ("under", "over"):
        assert w.values[f"mem/mean {g}"].value == pytest.approx(memo.loc[g, "mean mem"], abs=1e-12)
    assert w.set_sizes["singletons"] == res["summary"]["challenge_sets"]["singletons"] > 0


def test_tight_tolerance_trains_everything_compares_and_replays(tmp_path, capsys, one_thread):
    res = run_adaptive(_spec(1e-9, count=16), tmp_path, executor="debug", progress=False, compare_full=True,
                       analyze=False)
    assert not res.converged and res.used == 16
    assert [w.shadows for w in res.waves] == [4, 8, 16]
    assert res.full == res.waves[-1].values  # the full run is the last wave here
    assert not (tmp_path / "analysis").exists()
    # replaying the rule on the finished store's prefixes gives the run's numbers
    replay = replay_adaptive(tmp_path / "store.zarr", _spec(1e-9, count=16))
    assert [w.values for w in replay.waves] == [w.values for w in res.waves]
    assert [w.intervals for w in replay.waves] == [w.intervals for w in res.waves]
    # the figure command: one PNG per watched metric family, the curve at every block, the stops table
    fig = tmp_path / "fig"
    assert main(["adaptive-figure", str(tmp_path / "store.zarr"), "--out", str(fig), "--tolerance", "0.5"]) == 0
    printed = capsys.readouterr().out
    assert "lira-online/AUROC Under: no stop before the full run of 16" in printed
    assert sorted(p.name for p in fig.glob("*.png")) == ["adaptive_lira_online_auroc.png", "adaptive_mem_mean.png"]
    curve = pd.read_csv(fig / "adaptive_curve.csv")
    assert sorted(curve["shadows"].unique()) == [4, 8, 12, 16]
    c16 = curve[(curve["shadows"] == 16) & (curve["key"] == "lira-online/AUROC Under")]["value"].iloc[0]
    assert c16 == pytest.approx(res.waves[-1].values["lira-online/AUROC Under"], abs=1e-12)
    assert "| lira-online/AUROC Under |" in (fig / "adaptive_stops.md").read_text()


@pytest.mark.parametrize("watch,adaptive,match", [
    (["lira-online/AUROC Nope"], {}, r"adaptive.watch\[0\]: 'lira-online/AUROC Nope': unknown group 'Nope'"),
    (["nosuch/AUROC Under"], {}, r"unknown attack 'nosuch'"),
    (["lira-online/AUC Under"], {}, r"metric must be 'AUROC' or 'TPR@<x>%'"),
    (["mem/AUROC Under"], {}, r"memorization is watched as 'mem/mean GROUP'"),
    (["lira-online/TPR@0% Under"], {}, r"strictly between 0% and 100%"),
    (["mem/mean samples"], {}, r"adaptive.samples: adaptive.watch\[0\]"),
    (["mem/mean samples"], {"samples": [3, 5000]}, r"adaptive.samples: indices must be pool"),
])
def test_bad_watch_is_a_one_line_error_before_anything_is_written(tmp_path, capsys, watch, adaptive, match):
    spec = spec_from_dict(_spec_dict(0.5, watch=watch, **adaptive))
    with pytest.raises(SpecError, match=match):
        run_adaptive(spec, tmp_path / "run", executor="debug", progress=False)
    assert not (tmp_path / "run").exists()
    toml = tmp_path / "bad.toml"
    toml.write_text(f'[shadows]\ncount = 16\nkeep_block = 4\n[adaptive]\nfirst_wave = 4\nwatch = {json.dumps(watch)}\n'
                    + (f"samples = {adaptive['samples']}\n" if adaptive else ""))
    assert main(["run", str(toml), "--out", str(tmp_path / "cli"), "--adaptive", "--executor", "debug"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mia-hpc: error: ") and "\n" not in err and not (tmp_path / "cli").exists()


def test_adaptive_status_cli(local_run, tmp_path, capsys):
    out, _ = local_run
    assert main(["adaptive-status", str(out)]) == 0
    assert "converged with 16 of 32 shadows (50% of the training compute saved" in capsys.readouterr().out
    assert main(["adaptive-status", str(tmp_path)]) == 2
    assert "no adaptive run recorded here" in capsys.readouterr().err


# --- Slurm ----------------------------------------------------------------------------------------



def test_slurm_waves_stop_and_equal_the_local_run(slurm_cluster, local_run, tmp_path):
    """Each wave an array job, a step job afterok of it that evaluates, then stops or submits the next
    wave; the run stops where the local one did, with the same numbers and the same report."""
    from mia_hpc.pipeline.adaptive import submit_adaptive, wait_adaptive

    local_out, _ = local_run
    spec_file = tmp_path / "tiny.toml"
    spec_file.write_text(_toml(_spec_dict(0.15)))
    out = tmp_path / "run"
    res = submit_adaptive(spec_file, out, LOCAL_PROFILE, extras=False)
    assert (res.wave, res.evaluated) == (4, []) and res.array_job and res.step_job
    ids = [res.array_job, res.step_job]
    try:
        done = wait_adaptive(out, timeout=300, poll=1.0)
    finally:
        rec = json.loads((out / "slurm" / "adaptive.json").read_text())
        ids += [j for w in rec["waves"].values() for j in (w["array"], w["step"]) if j]
        wait_gone(ids, timeout=120)
    assert done.converged and done.used == 16
    assert sorted(int(k) for k in rec["waves"]) == [4, 8, 16]  # the stop at 16: no wave of 32 submitted
    for size, w in rec["waves"].items():  # every step job waited for its own wave's array
        script = (out / "slurm" / "submitit" / w["step"] / f"{w['step']}_submission.sh").read_text()
        assert f"#SBATCH --dependency=afterok:{w['array']}\n" in script, size
        assert "#SBATCH --kill-on-invalid-dep=yes" in script
    # same seed -> same shadows -> the same numbers, stop and report as the local run
    assert json.loads((out / "adaptive.json").read_text()) == json.loads((local_out / "adaptive.json").read_text())
    for name in ("attacks.csv", "memorization.csv", "accuracy.csv"):
        assert (out / "analysis" / "tables" / name).read_text() == \
            (local_out / "analysis" / "tables" / name).read_text(), name
    ds = xr.open_zarr(out / "store.zarr")
    assert ds.done.values[:16].all() and not ds.done.values[16:].any()
    # a re-submit of the finished run submits nothing
    again = submit_adaptive(spec_file, out, LOCAL_PROFILE, extras=False)
    assert again.wave is None and "finished already" in again.lines()[-1]


def test_slurm_failed_wave_cancels_its_step_and_wait_says_so(slurm_cluster, tmp_path):
    """A wave whose array tasks fail: its step job never runs (afterok, kill-on-invalid-dep), the
    attached launcher raises naming the jobs instead of waiting forever, and no shadow looks done."""
    from mia_hpc.pipeline.adaptive import read_state, submit_adaptive, wait_adaptive
    from mia_hpc.launch.slurm import SlurmError

    # the test cluster's profile with a setup command that fails (a failing command, not an exit):
    # every task of the wave fails
    prof = tmp_path / "failing.toml"
    prof.write_text(LOCAL_PROFILE.read_text().replace("setup = []", 'setup = ["false"]'))
    spec_file = tmp_path / "tiny.toml"
    spec_file.write_text(_toml(_spec_dict(0.15)))
    out = tmp_path / "run"
    res = submit_adaptive(spec_file, out, prof, extras=False)
    ids = [res.array_job, res.step_job]
    try:
        with pytest.raises(SlurmError, match="stopped without finishing") as err:
            wait_adaptive(out, timeout=240, poll=1.0)
    finally:
        wait_gone(ids, timeout=120)
    assert str(res.step_job) in str(err.value) and str(res.array_job) in str(err.value)
    assert not (out / "waves").exists() or not list((out / "waves").iterdir())  # the step never evaluated
    assert not (read_state(out) or {}).get("finished")
    assert not xr.open_zarr(out / "store.zarr").done.values.any()


def _toml(d: dict, prefix: str = "") -> str:
    """A minimal TOML writer for the spec dicts used here (tables, strings, numbers, lists)."""
    lines, tables = [], []
    for k, v in d.items():
        if isinstance(v, dict):
            tables.append((k, v))
        else:
            lines.append(f"{k} = {json.dumps(v)}")
    text = "\n".join(lines) + "\n"
    for k, v in tables:
        name = f"{prefix}.{k}" if prefix else k
        text += f"\n[{name}]\n" + _toml(v, name)
    return text

"""``mia-hpc plan``: known answers on a synthetic store (a highly separated group needs fewer shadows,
a target above a group's ceiling is unreachable), the CLI end to end, and one-line errors."""

from __future__ import annotations

import json
import math

import pytest

from analysis.studies.planner import plan_from_pilot
from analysis.tools.synthetic_store import write_synthetic_store
from mia_hpc.cli import main
from mia_hpc.contract.store import spec_of
from mia_hpc.contract.store import open_store, shadow_digest
from test_adaptive import _toml


@pytest.fixture(scope="module")
def pilot(tmp_path_factory):
    """16 shadows; under-represented samples separated by 3 (Bayes AUROC 0.983), the rest by 1 (0.760).

    Offsets near the decision boundary, so that training on a sample flips its argmax often: the
    under group is memorized (mean mem ~0.6), the over group much less (~0.2).
    """
    d = tmp_path_factory.mktemp("pilot")
    info = write_synthetic_store(d / "pilot.zarr", n_shadows=16, n_samples=300, separation={"over": 1.0, "under": 3.0},
                                 frac_under=0.3, seed=1, n_test=40, offset_mean=-3.0, offset_std=1.5)
    assert info["analytic_auroc"]["over"] == pytest.approx(0.760, abs=1e-3)
    _pace(d / "pilot.zarr", every_s=10.0)
    return d / "pilot.zarr"


def _pace(path, every_s: float) -> None:
    """Finish times one shadow every ``every_s`` seconds, as a pilot that trained them one by one
    would have recorded (the synthetic writer finishes all in one burst, which has no rate), with
    each shadow's digest rewritten to match."""
    root = open_store(path)
    t0 = float(root["finished_at"][0])
    for i in range(root["done"].shape[0]):
        t = t0 + i * every_s
        root["finished_at"][i] = t
        root["digest"][i] = shadow_digest(i, root["logits"][i], root["accuracy"][i], float(root["train_loss"][i]), t)


@pytest.fixture(scope="module")
def spec_file(pilot, tmp_path_factory):
    """The planned experiment: the pilot's recipe with 64 shadows."""
    d = spec_of(open_store(pilot)).to_dict()
    d["shadows"] = {**d["shadows"], "count": 64}
    p = tmp_path_factory.mktemp("spec") / "planned.toml"
    p.write_text(_toml(d))
    return p


def test_separated_group_needs_fewer_shadows(pilot):
    res = plan_from_pilot(pilot, target=0.7, repeats=5, n_boot=100)
    t = res.table
    assert t.loc["random", "mean mem"] > t.loc["over", "mean mem"] + 0.2  # under-represented: memorized more
    assert t.loc["random", "mean H2"] > t.loc["over", "mean H2"]
    for pred in ("cor1-mem", "cor1-h2", "fit"):
        assert t.loc["random", f"m {pred}"] < t.loc["over", f"m {pred}"], pred
        assert t.loc["random", f"shadows {pred}"] < t.loc["over", f"shadows {pred}"], pred
    assert t.loc["random", "m pilot"] == 1  # the pilot's one reference per side already does it
    # intervals bracket the point and come from the bootstrap over shadows and samples
    assert t.loc["random", "mean mem lo"] <= t.loc["random", "mean mem"] <= t.loc["random", "mean mem hi"]


def test_target_above_a_groups_ceiling_is_unreachable(pilot):
    res = plan_from_pilot(pilot, target=0.9, repeats=5, n_boot=100)
    t = res.table
    assert t.loc["random", "reachable"] and t.loc["random", "m fit"] <= 2
    # the over group's Bayes-optimal AUROC is 0.760: no number of shadows reaches 0.9
    assert not t.loc["over", "reachable"] and math.isinf(t.loc["over", "shadows fit"])
    assert 0.65 < t.loc["over", "ceiling A"] < 0.85


def test_plan_cli_end_to_end_with_bench(pilot, spec_file, tmp_path, capsys):
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"device": "cpu", "arch": "cnn32", "epochs": 5, "auto_backend": "sequential",
                                 "trainers": {"sequential": {"seconds_per_shadow": 1.5}}}))
    out = tmp_path / "plan.json"
    assert main(["plan", str(spec_file), "--pilot", str(pilot), "--target", "0.7", "--repeats", "3",
                 "--bench", str(bench), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "plan: lira-online auroc >= 0.7" in printed and "(M = 64)" in printed
    assert any(line.startswith("random ") for line in printed.splitlines())
    epochs = spec_of(open_store(pilot)).train.epochs
    assert f"time: {1.5 * epochs / 5:.1f} s per shadow, from bench" in printed
    doc = json.loads(out.read_text())
    rows = {r["group"]: r for r in doc["groups"]}
    assert rows["random"]["shadows_to_train"] < rows["over"]["shadows_to_train"]
    assert rows["over"]["hours"] == pytest.approx(rows["over"]["shadows_to_train"] * 1.5 * epochs / 5 / 3600)
    # without --bench: the pilot's own finishing rate (its shadows' finished_at), TPR target
    assert main(["plan", str(spec_file), "--pilot", str(pilot), "--metric", "tpr@1%", "--target", "0.2",
                 "--repeats", "2"]) == 0
    printed = capsys.readouterr().out
    # 16 shadows one per 10 s: the first marks the start, 15 more in 150 s = 360 shadows/h
    assert "plan: lira-online tpr@1% >= 0.2" in printed
    assert "from the pilot's finishing rate (360.0 shadows/h" in printed


@pytest.mark.parametrize("args,match", [
    (["--pilot", "{tmp}/nope"], "--pilot {tmp}/nope: not a mia-hpc store"),
    (["--metric", "f1"], "--metric: must be 'auroc' or 'tpr@<x>%'"),
    (["--target", "0.4"], "--target: an AUROC target must exceed 0.5"),
    (["--bench", "{tmp}/missing.json"], "--bench {tmp}/missing.json: file not found"),
    (["--bench", "{tmp}/b.json", "--measure"], "--bench and --measure: give one"),
    (["--pilot-shadows", "4"], "--pilot-shadows: the pilot needs >= 6 shadows"),
    (["--attack", "yeom"], "--attack: the sweep runs LiRA only"),
])
def test_bad_input_is_one_line_exit_2(pilot, spec_file, tmp_path, capsys, args, match):
    argv = ["plan", str(spec_file), "--pilot", str(pilot), "--repeats", "2"]
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if args[0] == "--pilot":
        argv = ["plan", str(spec_file), *args]
    else:
        argv += args
    out_json = tmp_path / "never.json"
    assert main([*argv, "--json", str(out_json)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mia-hpc: error: ") and "\n" not in err, err
    assert match.replace("{tmp}", str(tmp_path)) in err
    assert not out_json.exists()  # nothing half-written


def test_pilot_of_another_recipe_is_refused(pilot, spec_file, tmp_path, capsys):
    other = tmp_path / "other.toml"
    other.write_text(spec_file.read_text().replace("lr = 0.02", "lr = 0.5"))
    assert main(["plan", str(other), "--pilot", str(pilot)]) == 2
    err = capsys.readouterr().err
    assert "is not a pilot of this spec: train.lr (0.02 in the pilot, 0.5 in the spec)" in err

"""benchmarks/recipe_stability.py's candidate recipes (``--try``): parsed as TOML values, applied on
top of the spec's [train] and nothing else, refused with a one-line message when wrong."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def rs(load_benchmark):
    return load_benchmark("recipe_stability")


def _args(rs, tries):
    return argparse.Namespace(over=100, under=10, test_over=50, test_under=10, data_root="/nowhere", width=0,
                              epochs=3, seed_list=[0, 1], tries=rs.parse_tries(tries))


def test_a_try_changes_only_the_values_it_names(rs):
    base = rs.scaled_spec(REPO / "jobs/paper/mnist-augmnist-random.toml", _args(rs, None), "spec").train
    tried = rs.scaled_spec(REPO / "jobs/paper/mnist-augmnist-random.toml",
                           _args(rs, [["wide", "lr=0.1", "clip_grad_norm=10", "augment_flip=true"]]), "wide").train
    assert (tried.lr, tried.clip_grad_norm, tried.augment_flip) == (0.1, 10.0, True)
    assert {k: v for k, v in vars(tried).items() if k not in ("lr", "clip_grad_norm", "augment_flip")} == \
        {k: v for k, v in vars(base).items() if k not in ("lr", "clip_grad_norm", "augment_flip")}


@pytest.mark.parametrize("tries, message", [
    ([["spec", "lr=0.1"]], "give a new variant name"),
    ([["x"]], "at least one KEY=VALUE"),
    ([["x", "lr"]], "'lr' is not KEY=VALUE"),
    ([["x", "lr=fast"]], "lr='fast' is not a TOML value"),
])
def test_bad_tries_are_one_line_errors(rs, tries, message):
    with pytest.raises(SystemExit, match=message):
        rs.parse_tries(tries)


def test_a_try_of_an_unknown_field_names_the_fields_there_are(rs):
    with pytest.raises(SystemExit, match=r"--try x: \['lrate'\] not in \[train\]; use one of"):
        rs.scaled_spec(REPO / "jobs/paper/mnist-augmnist-random.toml", _args(rs, [["x", "lrate=0.1"]]), "x")


def test_append_adds_seeds_keeps_the_first_date_and_refuses_another_scale(rs, tmp_path, mnist_root):
    """Seeds run in chunks (``--seeds 0-1``, then ``--seeds 2 --append``) make one run: every seed's rows,
    the commands joined, the dates spanning first start to latest (not the latest alone)."""
    import json

    import pandas as pd

    out = tmp_path / "st"
    args = ["--data-root", str(mnist_root), "--over", "120", "--under", "20", "--test-over", "40", "--test-under",
            "10", "--epochs", "4", "--width", "2", "--max-steps", "3", "--variants", "spec", "--threads", "1",
            "--out", str(out)]
    assert rs.main([*args, "--seeds", "0-1"]) == 0
    first = json.loads((out / "stability_meta.json").read_text())
    assert " to " not in first["date"]
    assert rs.main([*args, "--seeds", "2", "--append"]) == 0
    meta = json.loads((out / "stability_meta.json").read_text())
    assert meta["date"].startswith(first["date"] + " to ") and meta["date"].count(" to ") == 1
    assert meta["scale"]["seeds"] == "0-1,2" and meta["command"].count(" ; ") == 1
    assert set(meta["seconds"]) == {"spec 0-1", "spec 2"}
    summary = pd.read_csv(out / "stability_summary.csv")
    assert summary["seed"].tolist() == [0, 1, 2] and (summary["steps"] == 3).all()
    assert sorted(pd.read_csv(out / "stability_curves.csv")["seed"].unique()) == [0, 1, 2]
    assert (out / "stability.png").stat().st_size > 0  # drawn again with every seed
    # a third chunk keeps the first start, not the second's
    assert rs.main([*args, "--seeds", "3", "--append"]) == 0
    assert json.loads((out / "stability_meta.json").read_text())["date"].split(" to ")[0] == first["date"]
    # another scale is another run: refused, nothing rewritten
    before = (out / "stability_summary.csv").read_text()
    assert rs.main([*args[:-2], "--epochs", "5", "--out", str(out), "--seeds", "4", "--append"]) == 2
    assert (out / "stability_summary.csv").read_text() == before

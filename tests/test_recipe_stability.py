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

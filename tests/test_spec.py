"""Spec validation: malformed specs are refused with one line naming file and key, exit 2,
and nothing is written to disk."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mia_hpc.cli import main
from mia_hpc.contract.spec import SpecError, load_spec, spec_from_dict

REPO = Path(__file__).resolve().parents[1]

# (TOML text, fragment the one-line message must contain)
BAD_SPECS = [
    ("nmae = 'x'\n", "nmae: unknown key"),
    ("[train]\nepochz = 3\n", "train.epochz: unknown key"),
    ("[train]\nepochs = 'ten'\n", "train.epochs: must be an integer"),
    ("[train]\nepochs = 0\n", "train.epochs: must be an integer >= 1"),
    ("[train]\nepochs = 2.5\n", "train.epochs: must be an integer"),
    ("[train]\nlr = -1.0\n", "train.lr: must be a number > 0"),
    ("[train]\nlr = nan\n", "train.lr: must be a finite number"),
    ("[shadows]\ncount = 7\n", "shadows.count: must be an integer >= 2"),
    ("[shadows]\ncount = 8\nshards = 9\n", "shadows.shards: must be <= shadows.count"),
    ("[shadows]\ncount = 8\nkeep_block = 6\n", "shadows.keep_block: must divide shadows.count"),
    ("[model]\narch = 'resnet1000'\n", "model.arch: must be one of 'cnn32', 'cnn64', 'mlp'"),
    ("[data]\nalpha = 1.5\n", "data.alpha: must be a number > 0 and <= 1"),
    ("[data]\nsize = 20\nalpha = 0.3\n", "data.alpha: leaves 6 D_O samples"),
    ("train = 3\n", "train: must be a table"),
    ("[queries]\nmirror = 'yes'\n", "queries.mirror: must be true or false"),
    ("[analysis]\nfpr = [0.001, 2.0]\n", "analysis.fpr[1]: must be a number > 0 and < 1"),
    ("[analysis]\nfpr = 0.001\n", "analysis.fpr: must be a list"),
    ("[data.under]\nmixing_severity = true\n", "data.under.mixing_severity: must be a finite number"),
    ("[train\nepochs = 3\n", "invalid TOML"),
    ("seed = -1\n", "seed: must be an integer >= 0"),
]


@pytest.mark.parametrize("text,fragment", BAD_SPECS, ids=[b[1].split(":")[0] for b in BAD_SPECS])
def test_bad_spec_refused_by_cli_nothing_written(tmp_path, capsys, text, fragment):
    spec = tmp_path / "bad.toml"
    spec.write_text(text)
    out = tmp_path / "run"
    rc = main(["run", str(spec), "--out", str(out), "--executor", "debug"])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1, err
    assert str(spec) in err and fragment in err, err
    assert not out.exists()


def test_missing_spec_file(tmp_path, capsys):
    rc = main(["run", str(tmp_path / "nope.toml"), "--out", str(tmp_path / "o")])
    assert rc == 2
    assert "spec file not found" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_exit_code_from_real_process(tmp_path):
    spec = tmp_path / "bad.toml"
    spec.write_text("[train]\nepochs = -3\n")
    p = subprocess.run([sys.executable, "-m", "mia_hpc.cli", "run", str(spec), "--out", str(tmp_path / "o")],
                       capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 2
    assert p.stderr.strip().startswith("mia-hpc: error:") and "Traceback" not in p.stderr
    assert not (tmp_path / "o").exists()


def test_shipped_specs_valid():
    for path in sorted((REPO / "jobs").glob("*.toml")):
        load_spec(path)


def test_defaults_and_hash():
    a = spec_from_dict({})
    assert a.n_over + a.n_under == a.data.size
    b = spec_from_dict({"analysis": {"targets": 3}, "name": "other"})
    assert a.hash() == b.hash()  # analysis settings and name do not change the store's content
    c = spec_from_dict({"train": {"epochs": 3}})
    assert a.hash() != c.hash()
    assert spec_from_dict(a.to_dict()) == a  # normalized form round-trips


def test_error_type():
    with pytest.raises(SpecError):
        spec_from_dict({"train": {"batch_size": 0}})

"""The command line's one grammar, over every subcommand the parser has (not a hand list).

A spec is a positional SPEC, never ``--spec``; a command that writes files takes ``--out``; every
argument has a help text without reStructuredText markup; ``--help`` of every command works;
usage errors name what the user typed, never an internal name. ``import mia_hpc.cli`` imports no
heavy package (that is what keeps ``mia-hpc --help`` fast; its time is measured, not asserted).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import mia_hpc
from mia_hpc.cli import _parser, main

ROOT = Path(__file__).resolve().parents[1]

# Every command that writes files, and so takes --out. A new command must be added to one of the two
# sets (the test below fails otherwise): deciding whether it writes is part of adding it.
WRITERS = {"run", "analyze", "submit", "render-sbatch", "import-lira", "export-lira", "synth-store",
           "adaptive-figure", "compare-mem", "bench analyze", "report"}
# Commands that only read (or write into the store or folder they are given: train-shard, status
# --reset-broken; --json FILE of bench train and plan is an extra copy of what they print).
READERS = {"status", "train-shard", "bench train", "spec", "stages", "adaptive-status", "plan"}

RST = re.compile(r"``|:(func|mod|class|meth|attr|data|ref|doc|obj|exc):`|`[^`]+`_")


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """``(words, parser)`` of every command, nested ones (``bench train``) included, leaves only."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield " ".join(path), parser
    for sub in subs:
        for name, child in sub.choices.items():
            yield from _commands(child, (*path, name))


def _all_parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    yield path, parser
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            for name, child in a.choices.items():
                yield from _all_parsers(child, (*path, name))


PARSER = _parser()
COMMANDS = dict(_commands(PARSER))


def test_every_command_is_classified_as_writer_or_reader():
    unclassified, gone = set(COMMANDS) - WRITERS - READERS, (WRITERS | READERS) - set(COMMANDS)
    assert not unclassified and not gone, f"unclassified: {sorted(unclassified)}; gone: {sorted(gone)}"
    assert not WRITERS & READERS


@pytest.mark.parametrize("path", [p for p, _ in _all_parsers(PARSER)], ids=lambda p: " ".join(p) or "mia-hpc")
def test_help_exits_0_and_every_argument_has_plain_help(path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*path, "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: mia-hpc {' '.join(path)}".rstrip())
    parser = dict(_all_parsers(PARSER))[path]
    assert parser.description, f"{' '.join(path)}: no description at the top of its --help"
    helps = [parser.description]
    for action in parser._actions:
        name = "/".join(action.option_strings) or action.dest
        assert action.help and action.help.strip(), f"mia-hpc {' '.join(path)}: {name} has no help"
        helps.append(action.help)
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                assert choice.help and choice.help.strip(), f"mia-hpc {' '.join(path)} {choice.dest}: no help"
                helps.append(choice.help)
        if not action.option_strings:  # a positional shows as its metavar, in capitals: SPEC, STORE, RUN_DIR
            assert action.metavar and action.metavar == action.metavar.upper(), f"{name}: metavar {action.metavar}"
    for h in helps:
        assert not RST.search(h), f"mia-hpc {' '.join(path)}: reStructuredText markup in help: {h!r}"


@pytest.mark.parametrize("cmd", sorted(COMMANDS))
def test_a_spec_is_positional_and_writers_take_out(cmd):
    parser = COMMANDS[cmd]
    options = {s for a in parser._actions for s in a.option_strings}
    assert "--spec" not in options, f"mia-hpc {cmd}: the spec is positional (SPEC), not --spec"
    for action in parser._actions:
        if action.dest == "spec":
            assert not action.option_strings and action.metavar == "SPEC", f"mia-hpc {cmd}: spec as {action}"
        if action.dest == "out" and not action.option_strings:  # a positional read directory, shown as such
            assert action.metavar in ("RUN_DIR", "ANALYSIS_DIR"), f"mia-hpc {cmd}: positional out as {action.metavar}"
    if cmd in WRITERS:
        assert "--out" in options, f"mia-hpc {cmd} writes files: it takes --out"
    else:
        assert "--out" not in options, f"mia-hpc {cmd} is listed as a reader but takes --out"


def test_spec_taking_commands_are_the_expected_ones():
    """The spec-taking commands found from the parser (so a test above checked each)."""
    takes_spec = {cmd for cmd, p in COMMANDS.items() if any(a.dest == "spec" for a in p._actions)}
    assert takes_spec == {"run", "submit", "render-sbatch", "bench train", "spec", "plan", "adaptive-figure"}


def test_version_prints_the_package_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"mia-hpc {mia_hpc.__version__}"
    assert mia_hpc.__version__ == importlib.metadata.version("mia-hpc")


@pytest.mark.parametrize("argv, message", [
    ([], "mia-hpc: error: a command is required: run, status, analyze,"),
    (["bench"], "mia-hpc bench: error: a benchmark is required: train, analyze"),
    (["frobnicate"], "argument COMMAND: invalid choice: 'frobnicate'"),
    (["stages"], "mia-hpc stages: error: the following arguments are required: RUN_DIR"),
    (["run", "--out", "x"], "mia-hpc run: error: the following arguments are required: SPEC"),
])
def test_usage_errors_name_what_the_user_typed(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    words = {w for path, _ in _all_parsers(PARSER) for w in path}  # command names may be named, of course
    internal = {a.dest for _, p in _all_parsers(PARSER) for a in p._actions if not a.option_strings} - words
    assert {"cmd", "what", "out", "store"} <= internal
    said = err.strip().splitlines()[-1].split("error:", 1)[1]
    assert not any(re.search(rf"(?<![\w-]){re.escape(d)}(?![\w-])", said) for d in internal), said


@pytest.mark.parametrize("argv, new", [
    (["bench", "train", "--spec", "jobs/demo.toml"], "mia-hpc bench train SPEC"),
    (["adaptive-figure", "s.zarr", "--out", "f", "--spec", "jobs/demo.toml"], "adaptive-figure STORE [SPEC]"),
    (["bench", "analyze", "--store", "s.zarr"], "mia-hpc bench analyze [STORE]"),
    (["bench", "analyze", "--workdir", "w"], "bench analyze --out DIR"),
    (["synth-store", "s.zarr", "--shadows", "4", "--samples", "20"], "synth-store --out STORE"),
])
def test_an_old_spelling_fails_in_one_line_that_says_the_new_one(argv, new, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and new in err and "error:" in err, err


def test_importing_the_cli_imports_no_heavy_package():
    """What keeps ``mia-hpc --help`` fast: the heavy packages load inside the command that needs them."""
    heavy = ["zarr", "numpy", "torch", "xarray", "pandas", "dask", "numba", "submitit", "analysis", "scipy",
             "matplotlib"]
    code = ("import sys, mia_hpc.cli, mia_hpc.commands; "
            "mia_hpc.cli._parser(); "
            f"print([m for m in {heavy!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]", f"imported at start: {out.stdout.strip()}"


def test_spec_prints_non_ascii_as_text(tmp_path, capsys):
    text = (ROOT / "jobs" / "smoke.toml").read_text()
    name = "Übung-π-数据"
    text, n = re.subn(r'(?m)^name\s*=\s*"[^"]*"', f'name = "{name}"', text)
    assert n == 1, "jobs/smoke.toml has no top-level name line to change"
    spec = tmp_path / "unicode.toml"
    spec.write_text(text, encoding="utf-8")
    assert main(["spec", str(spec)]) == 0
    out = capsys.readouterr().out
    assert name in out and "\\u" not in out
    assert json.loads(out.split("\n# spec hash")[0])["name"] == name


def test_report_out_writes_elsewhere_with_links_back_into_the_analysis(tmp_path):
    from analysis.tools.synthetic_store import write_synthetic_store
    from mia_hpc.cli import main

    store = tmp_path / "store.zarr"
    write_synthetic_store(store, n_shadows=8, n_samples=60, n_classes=3, seed=0)
    assert main(["analyze", str(store), "--out", str(tmp_path / "a"), "--quick"]) == 0
    assert main(["report", str(tmp_path / "a"), "--out", str(tmp_path / "elsewhere")]) == 0
    page = (tmp_path / "elsewhere" / "index.html").read_text()
    links = re.findall(r'<a href="([^"#][^"]*)"', page)
    assert links, "the report links no files"
    for link in links:  # every file link resolves from where the page was written
        assert (tmp_path / "elsewhere" / link).resolve().is_file(), link
    assert main(["report", str(tmp_path / "nowhere")]) == 2

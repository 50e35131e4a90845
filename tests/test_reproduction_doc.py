"""The recipe-stability verdict of docs/reproduction.md is counted from the runs' folders, not typed.

Two fake ``benchmarks/recipe_stability.py`` output folders (the real CSV/JSON layout it writes) with a
known answer: which seeds diverged, how many reached the first 100 steps, the full-length median.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest



@pytest.fixture(scope="module")
def repro(load_benchmark):
    return load_benchmark("reproduce_mnist")


def _run(folder: Path, rows: list[tuple], over: int = 8000, under: int = 400, seconds: float = 0.0,
         recipe: dict | None = None, tries: dict | None = None, width: int = 0) -> None:
    """A stability run: rows of (variant, seed, steps, diverged, max_grad_norm, test_acc_over), trained
    with ``recipe``'s lr / warm-up / clip (default: the committed mnist-cnn recipe's)."""
    from mia_hpc.contract.recipes import RECIPES

    r = {k: RECIPES["mnist-cnn"][k] for k in ("lr", "warmup", "clip_grad_norm")} | (recipe or {})
    folder.mkdir(parents=True)
    pd.DataFrame([{"variant": v, **r, "seed": s, "steps": n,
                   "of_steps": 495, "diverged": d, "first_bad_step": 7 if d else -1, "max_grad_norm": g,
                   "last_loss": 0.3, "test_acc_over": a, "test_acc_under": 60.0} for v, s, n, d, g, a in rows]
                 ).to_csv(folder / "stability_summary.csv", index=False)
    (folder / "stability_meta.json").write_text(json.dumps({"command": "python x", "scale": {"over": over, "under": under, "width": width},
                                                            "seconds": {"spec a": seconds / 2, "spec b": seconds / 2},
                                                            "tries": tries or {}}))


def test_verdict_counts_seeds_divergences_and_the_full_length_median(repro, tmp_path):
    docs = tmp_path / "docs"
    _run(docs / "reproduction" / "first-100", [("spec", 0, 100, False, 40.0, 88.0), ("spec", 1, 100, False, 80.5, 87.0),
                                               ("spec", 2, 100, True, 900.0, 10.0), ("old", 3, 100, True, 5.0, 10.0)])
    _run(docs / "reproduction" / "full", [("spec", 0, 495, False, 30.0, 96.0), ("spec", 1, 495, False, 35.0, 98.0),
                                          ("spec", 4, 60, False, 20.0, 70.0)], seconds=3 * 600)
    text = "\n".join(repro.stability_verdict(docs))
    assert "**4 seeds, 1 diverged** (seeds 2)" in text  # the old recipe's seed 3 is not the committed one
    assert "3 of them ran at least the first 100 of 495 steps" in text
    assert "gradient norms up to 900" in text
    assert "2 ran the full 495 steps, D_O test accuracy median 97.0% [96.0, 98.0]" in text
    assert "4,200-sample shadow training sets" in text
    assert "a full-length CNN32 shadow took 10 min on average" in text  # 30 min for the full run's 3 seeds


def test_verdict_counts_only_runs_of_the_committed_recipe(repro, tmp_path):
    """A run of an earlier recipe (its 'spec' had other values) is history, not evidence; a --try of
    exactly the committed values counts; a --try that also changed an unrecorded value does not, nor
    does a run of another width (CNN64 is not CNN32)."""
    from mia_hpc.contract.recipes import RECIPES

    docs = tmp_path / "docs"
    lr = RECIPES["mnist-cnn"]["lr"]
    _run(docs / "reproduction" / "earlier", [("spec", 0, 495, True, 900.0, 10.0)], recipe={"lr": 2 * lr})
    _run(docs / "reproduction" / "tried", [("same", 1, 495, False, 5.0, 97.0), ("wd", 2, 495, False, 5.0, 99.0)],
         tries={"same": {"lr": lr}, "wd": {"lr": lr, "weight_decay": 0.0}})
    _run(docs / "reproduction" / "cnn64", [("spec", 5, 495, False, 5.0, 99.0)], width=64)  # another model
    text = "\n".join(repro.stability_verdict(docs))
    assert "**1 seed, 0 diverged**" in text and "median 97.0% [97.0, 97.0]" in text
    for run in ("tried", "cnn64"):
        (docs / "reproduction" / run / "stability_summary.csv").unlink()
    assert repro.stability_verdict(docs) == ["No run of the committed recipe is recorded yet."]


def test_stability_only_rewrites_that_section_and_keeps_the_rest(repro, tmp_path):
    docs = tmp_path / "docs"
    _run(docs / "reproduction" / "r", [("spec", 5, 495, False, 12.0, 97.5)])
    doc = tmp_path / "reproduction.md"
    doc.write_text(f"# Title\n\nTables the long run wrote.\n\n{repro.STABILITY_HEADING}\n\nAn old verdict.\n")
    repro.rewrite_stability(doc, docs)
    text = doc.read_text()
    assert text.startswith("# Title\n\nTables the long run wrote.\n\n" + repro.STABILITY_HEADING)
    assert "An old verdict" not in text and "**1 seed, 0 diverged**" in text and "### `reproduction/r`" in text


def test_stability_only_refuses_a_document_without_the_section(repro, tmp_path):
    doc = tmp_path / "reproduction.md"
    doc.write_text("# Something else\n")
    with pytest.raises(SystemExit, match="--stability-only: .* has no '## §4: recipe stability"):
        repro.rewrite_stability(doc, tmp_path)
    assert doc.read_text() == "# Something else\n"


def test_the_range_test_table_gives_each_recipe_its_worst_seed_margin(repro, tmp_path):
    docs = tmp_path / "docs"
    folder = docs / "reproduction" / repro.LR_RANGE
    assert repro.lr_range_lines(docs) == []  # no run, no section
    folder.mkdir(parents=True)
    row = {"spec": "s", "arch": "a", "input": "1x28x28", "batch": 128, "clip_grad_norm": 0.0}
    pd.DataFrame([{**row, "case": "cnn32", "peak_lr": 0.02, "seed": 0, "lr_best": 0.1, "lr_break": 0.5,
                   "lr_undone": 0.9},
                  {**row, "case": "cnn32", "peak_lr": 0.02, "seed": 1, "lr_best": 0.3, "lr_break": 0.3,
                   "lr_undone": 0.4},
                  {**row, "case": "resnet9", "peak_lr": 0.2, "seed": 0, "lr_best": 2.0, "lr_break": float("inf"),
                   "lr_undone": 1.0}]
                 ).to_csv(folder / "summary.csv", index=False)
    (folder / "meta.json").write_text(json.dumps({"command": "python b", "ramp": {"lr_min": 0.001, "lr_max": 10,
                                                                                  "steps": 60, "over": 8000,
                                                                                  "break_ratio": 4}}))
    text = "\n".join(repro.lr_range_lines(docs))
    assert "| cnn32 | s | a | 1x28x28 | 128 | 0 | 0.02 | 2 | 0.2 | 0.3 | 0.4 | 15.0x |" in text  # the worst seed
    assert "| resnet9 | s | a | 1x28x28 | 128 | 0 | 0.2 | 1 | 2 | none up to 10 | 1 | > 50x |" in text
    assert "from lr 0.001 to 10" in text and "60 steps" in text and "8,000 real train digits" in text


def _full_length(docs: Path, accs: list[float], diverged: tuple[int, ...] = ()) -> None:
    _run(docs / "reproduction" / "full", [("spec", s, 495, s in diverged, 30.0, a) for s, a in enumerate(accs)],
         seconds=600.0 * len(accs))


def test_the_bar_is_met_only_with_32_full_length_seeds_none_diverged_and_a_median_of_97(repro, tmp_path):
    _full_length(tmp_path / "met", [96.0] * 15 + [97.0, 97.2] + [98.0] * 15)  # median 97.1
    met = "\n".join(repro.stability_verdict(tmp_path / "met"))
    assert "**Bar met**: 32 seeds at full length, none diverged, D_O test accuracy median 97.1%" in met
    assert "the full-length median over 32" not in met  # no longer listed as unverified

    _full_length(tmp_path / "few", [98.0] * 31)
    few = "\n".join(repro.stability_verdict(tmp_path / "few"))
    assert "**Bar not met yet**: only 31 of the 32 seeds ran at full length." in few
    assert "the full-length median over 32 seeds" in few

    _full_length(tmp_path / "low", [96.0] * 17 + [98.0] * 15, diverged=(3,))
    low = "\n".join(repro.stability_verdict(tmp_path / "low"))
    assert "**Bar not met yet**: 1 seed diverged; the median is 96.0%, under 97%." in low

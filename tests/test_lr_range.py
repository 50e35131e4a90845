"""benchmarks/lr_range.py: the range test's smoothing and break point (known answers), its input
shapes per case, and a tiny run on real digits (needs real MNIST; under CI=true it must run)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest



@pytest.fixture(scope="module")
def lr_range(load_benchmark):
    return load_benchmark("lr_range")


def test_smoothing_is_exact_on_a_constant_and_stops_at_the_first_non_finite_loss(lr_range):
    loss = np.array([[2.0, 1.0], [2.0, np.inf], [2.0, 0.5], [2.0, 0.5]])
    sm = lr_range.smooth(loss)
    assert np.allclose(sm[:, 0], 2.0)  # the bias correction makes a constant its own average
    assert sm[0, 1] == 1.0 and np.isnan(sm[1:, 1]).all()  # a seed that blew up stays blown up


def test_smoothing_matches_the_bias_corrected_moving_average(lr_range):
    x = np.array([3.0, 1.0, 2.0])
    b = lr_range.BETA
    avg, want = 0.0, []
    for t, v in enumerate(x):
        avg = b * avg + (1 - b) * v
        want.append(avg / (1 - b ** (t + 1)))
    assert np.allclose(lr_range.smooth(x[:, None])[:, 0], want)


def test_break_is_the_first_lr_after_the_minimum_above_the_ratio_or_non_finite(lr_range):
    lrs = np.array([0.1, 0.2, 0.4, 0.8, 1.6, 3.2])
    # a spike before the minimum does not count; after it, 4.1 > 4 x 1.0 does; back at the start (5.0) never
    assert lr_range.find_break(lrs, np.array([5.0, 9.0, 1.0, 3.9, 4.1, 2.0])) == (0.4, 1.6, float("inf"))
    assert lr_range.find_break(lrs, np.array([5.0, 2.0, 1.0, np.nan, np.nan, np.nan])) == (0.4, 0.8, 0.8)
    assert lr_range.find_break(lrs, np.array([5.0, 4.0, 3.0, 2.0, 1.5, 1.0])) == (3.2, float("inf"), float("inf"))
    assert lr_range.find_break(lrs, np.full(6, np.nan))[1:] == (0.1, 0.1)  # broken from the first step


def test_undone_catches_a_short_ramp_whose_minimum_is_still_high(lr_range):
    """A ResNet-18 shape: the loss falls only from 2.4 to 1.6 before rising to 3.8x that, under the
    4x rule, but above where it started: all progress lost."""
    lrs = np.geomspace(0.01, 1, 6)
    best, brk, undone = lr_range.find_break(lrs, np.array([2.4, 2.0, 1.6, 2.3, 2.5, 6.1]))
    assert (best, brk) == (lrs[2], float("inf")) and undone == lrs[4]


@pytest.mark.usefixtures("one_torch_thread")
def test_a_tiny_range_test_on_real_digits_writes_each_case_at_its_input_shape(lr_range, tmp_path, mnist_root):
    root = mnist_root
    out = tmp_path / "lr"
    args = ["--data-root", str(root), "--cases", "cnn32,resnet9", "--over", "200", "--steps", "6",
            "--lr-min", "0.001", "--lr-max", "1", "--width", "4", "--seeds", "0-1", "--threads", "1", "--out", str(out)]
    assert lr_range.main(args) == 0
    summary = pd.read_csv(out / "summary.csv")
    assert summary.groupby("case")["input"].first().to_dict() == {"cnn32": "1x28x28", "resnet9": "3x32x32"}
    # the recipe is the case's spec's, only the schedule is replaced
    from mia_hpc.contract.recipes import RECIPES
    assert summary.groupby("case")["peak_lr"].first().to_dict() == {"cnn32": RECIPES["mnist-cnn"]["lr"],
                                                                    "resnet9": RECIPES["cifar10-resnet"]["lr"]}
    curves = pd.read_csv(out / "curves.csv")
    lrs = curves[(curves["case"] == "cnn32") & (curves["seed"] == 0)]["lr"].to_numpy()
    assert np.allclose(lrs, np.geomspace(0.001, 1, 6))  # the exponential ramp, one step per lr
    assert len(curves) == 2 * 2 * 6 and np.isfinite(curves["loss"]).all()
    assert (out / "lr_range.png").stat().st_size > 0
    assert json.loads((out / "meta.json").read_text())["ramp"]["steps"] == 6
    # --append replaces only the cases it runs
    first = json.loads((out / "meta.json").read_text())["date"]
    assert lr_range.main([*args[:3], "cnn32", *args[4:], "--append"]) == 0
    assert len(pd.read_csv(out / "summary.csv")) == 4
    assert json.loads((out / "meta.json").read_text())["date"].startswith(first + " to ")  # the runs' span
    assert lr_range.main([*args[:3], "cnn32", *args[4:], "--append", "--steps", "5"]) == 2  # another ramp
    # the summary is a function of the curves: rebuilt without training, it is the same
    before = pd.read_csv(out / "summary.csv")
    (out / "summary.csv").unlink()
    assert lr_range.main(["--out", str(out), "--summary-only"]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(out / "summary.csv"), before)


def test_bad_input_is_one_line_naming_the_flag(lr_range, tmp_path, capsys, mnist_root):
    assert lr_range.main(["--out", str(tmp_path), "--summary-only"]) == 2
    assert "--summary-only: " in capsys.readouterr().err
    assert lr_range.main(["--data-root", str(tmp_path)]) == 2
    assert "--data-root" in capsys.readouterr().err
    root = mnist_root
    assert lr_range.main(["--data-root", str(root), "--cases", "vgg"]) == 2
    assert "--cases: unknown ['vgg']" in capsys.readouterr().err
    assert lr_range.main(["--data-root", str(root), "--lr-min", "1", "--lr-max", "0.1"]) == 2
    assert "--lr-min" in capsys.readouterr().err

"""The vectorised per-target metrics equal the per-row sklearn path (roc_curve + auc + tpr_at_fpr)."""

from __future__ import annotations

import numpy as np
import pytest

from analysis.kernels.metrics import _one, attack_metrics, per_target_metrics

FPRS = [0.0, 0.001, 0.01, 0.1, 0.25, 0.5, 1.0]


def _reference(member, score, fprs, mask=None):
    if mask is not None:
        member, score = member[:, mask], score[:, mask]
    return np.array([_one(member[t], score[t], fprs) for t in range(member.shape[0])]).reshape(
        member.shape[0], 1 + len(fprs))


def _check(member, score, fprs=FPRS, mask=None, **kw):
    got = per_target_metrics(member, score, fprs, mask, **kw)
    ref = _reference(member, score, fprs, mask)
    assert got.shape == ref.shape
    np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12, equal_nan=True)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("levels", [2, 3, 5, 20, 0])
def test_random_with_ties(seed, levels):
    rng = np.random.default_rng(seed)
    t, n = 23, int(rng.integers(1, 300))
    member = rng.random((t, n)) < rng.uniform(0.05, 0.95)
    noise = rng.integers(0, levels, (t, n)).astype(float) if levels else rng.normal(size=(t, n))
    score = noise + member * rng.uniform(0, 2)
    member[0] = True       # degenerate rows: no negatives / no positives
    member[1] = False
    mask = rng.random(n) < 0.6
    _check(member, score)
    _check(member, score, mask=mask)
    _check(member, score, mask=np.zeros(n, dtype=bool))
    _check(member, score, mask=np.ones(n, dtype=bool))
    _check(member, score, mask=mask, block_elems=max(1, n * 3))  # several row blocks


def test_collinear_points_dropped_like_sklearn():
    # Tie groups of one member and one non-member: sklearn drops the collinear middle points, so
    # the TPR at a budget between two kept points is the lower one.
    score = np.repeat(np.arange(10.0)[::-1], 2)[None, :]
    member = np.tile([True, False], 10)[None, :]
    _check(member, score, fprs=[0.05, 0.1, 0.15, 0.3, 0.55, 0.95])
    _check(np.vstack([member, ~member]), np.vstack([score, score]))


def test_single_threshold_and_float32():
    rng = np.random.default_rng(1)
    member = rng.random((5, 40)) < 0.5
    _check(member, np.zeros((5, 40)))
    s32 = rng.normal(size=(5, 40)).astype(np.float32)
    _check(member, s32)


def test_attack_metrics_per_target_unchanged():
    rng = np.random.default_rng(3)
    member = rng.random((30, 200)) < 0.5
    score = np.round(rng.normal(size=(30, 200)) + member, 1)
    under = rng.random(200) < 0.2
    masks = {"All": np.ones(200, dtype=bool), "Under": under}
    _, mean, std = attack_metrics(member, score, masks, [0.001, 0.01])
    for g, mask in masks.items():
        ref = _reference(member, score, [0.001, 0.01], mask)
        for i, name in enumerate(["AUROC", "TPR@0.1%", "TPR@1%"]):
            assert mean[f"{name} {g}"] == pytest.approx(np.nanmean(ref[:, i]), abs=1e-12)
            assert std[f"{name} {g}"] == pytest.approx(np.nanstd(ref[:, i], ddof=1), abs=1e-12)


def test_non_finite_scores_raise():
    member = np.array([[True, False, True]])
    with pytest.raises(ValueError):
        per_target_metrics(member, np.array([[0.0, np.nan, 1.0]]), [0.1])


def test_pooled_equals_sklearn_on_all_pairs():
    rng = np.random.default_rng(4)
    member = rng.random((17, 150)) < 0.5
    score = np.round(rng.normal(size=(17, 150)) + member, 2)
    score[:, :5] = -0.0  # signed zeros tie with +0.0, as in sklearn
    score[3, :5] = 0.0
    under = rng.random(150) < 0.3
    pooled, _, _ = attack_metrics(member, score, {"All": np.ones(150, dtype=bool), "Under": under}, [0.001, 0.05])
    for g, mask in {"All": np.ones(150, dtype=bool), "Under": under}.items():
        ref = _one(member[:, mask], score[:, mask], [0.001, 0.05])
        for i, name in enumerate(["AUROC", "TPR@0.1%", "TPR@5%"]):
            assert pooled[f"{name} {g}"] == pytest.approx(ref[i], abs=1e-12)

"""Memorization (Feldman-Zhang) and privacy score on hand-built inputs with hand-computed answers."""

from __future__ import annotations

import math

import dask.array as da
import numpy as np
import pytest
import xarray as xr

from analysis.studies.memorization import memorization, memorization_counts, memorization_from_counts
from analysis.studies.privacy import privacy_score, privacy_score_from_stats

T, F = True, False

# 6 shadows (rows) x 4 samples (columns)
KEEP = np.array([
    [T, T, F, T],
    [T, T, F, F],
    [F, T, F, T],
    [F, F, F, F],
    [F, F, F, T],
    [F, F, F, F],
])
CORRECT = np.array([
    [T, T, T, T],
    [T, T, F, T],
    [F, F, T, T],
    [T, F, F, T],
    [F, F, T, T],
    [F, T, T, T],
])


def test_memorization_and_se_by_hand():
    mem, se = memorization(CORRECT, KEEP)
    # sample 0: IN = shadows 0,1 (both correct): p_in = 1; OUT = 2..5, correct 3 only: p_out = 1/4
    #   mem = 3/4; se = sqrt(0 + (1/4)(3/4)/4) = sqrt(3/64)
    # sample 1: IN = 0,1,2 (T,T,F): p_in = 2/3; OUT = 3,4,5 (F,F,T): p_out = 1/3
    #   mem = 1/3; se = sqrt(2 * (2/9)/3) = sqrt(4/27)
    # sample 2: never IN (a test sample): undefined
    # sample 3: IN = 0,2,4, OUT = 1,3,5, all correct: mem = 0, se = 0
    np.testing.assert_allclose(mem[[0, 1, 3]], [0.75, 1 / 3, 0.0], rtol=0, atol=1e-12)
    np.testing.assert_allclose(se[[0, 1, 3]], [math.sqrt(3 / 64), math.sqrt(4 / 27), 0.0], rtol=0, atol=1e-12)
    assert np.isnan(mem[2]) and np.isnan(se[2])


def test_memorization_counts_and_lazy_inputs_agree():
    c = memorization_counts(CORRECT, KEEP)
    np.testing.assert_array_equal(c.n_in, [2, 3, 0, 3])
    np.testing.assert_array_equal(c.c_in, [2, 2, 0, 3])
    np.testing.assert_array_equal(c.n_out, [4, 3, 6, 3])
    np.testing.assert_array_equal(c.c_out, [1, 1, 4, 3])
    # dask and xarray inputs give lazy counts with the same values
    cx = memorization_counts(xr.DataArray(da.from_array(CORRECT, chunks=(1, 2)), dims=("shadow", "sample")),
                             xr.DataArray(da.from_array(KEEP, chunks=(2, 4)), dims=("shadow", "sample")))
    assert hasattr(cx.n_in, "compute")
    mem_l, se_l = memorization_from_counts(cx.n_in, cx.c_in, cx.n_out, cx.c_out)
    mem, se = memorization(CORRECT, KEEP)
    np.testing.assert_array_equal(mem_l, mem)
    np.testing.assert_array_equal(se_l, se)


def test_memorization_rejects_shadow_not_first():
    with pytest.raises(ValueError, match="shadow"):
        memorization(xr.DataArray(CORRECT.T, dims=("sample", "shadow")), KEEP)


def test_memorization_undefined_when_always_in():
    mem, se = memorization(np.ones((2, 1), bool), np.ones((2, 1), bool))
    assert np.isnan(mem[0]) and np.isnan(se[0])


def test_privacy_score_by_hand():
    # 5 shadows x 3 samples of identity-query phi
    phi = np.array([
        [1.0, 5.0, 9.0],
        [3.0, 5.0, 1.0],
        [-1.0, 8.0, 2.0],
        [1.0, 1.0, 3.0],
        [0.0, 2.0, 4.0],
    ])
    keep = np.array([
        [T, T, T],
        [T, T, F],
        [F, T, F],
        [F, F, F],
        [F, F, F],
    ])
    # sample 0: IN {1, 3}: mu 2, sd (ddof=1) sqrt(2); OUT {-1, 1, 0}: mu 0, sd 1 -> 2 / (sqrt(2) + 1)
    # sample 1: IN {5, 5, 8}: mu 6, sd sqrt(3); OUT {1, 2}: mu 1.5, sd sqrt(0.5) -> 4.5 / (sqrt(3) + sqrt(.5))
    # sample 2: a single IN value: no IN spread -> NaN
    got = privacy_score(phi, keep)
    np.testing.assert_allclose(got[:2], [2 / (math.sqrt(2) + 1), 4.5 / (math.sqrt(3) + math.sqrt(0.5))],
                               rtol=1e-12)
    assert np.isnan(got[2])


def test_privacy_score_is_shift_invariant_and_from_stats():
    rng = np.random.default_rng(0)
    phi = rng.normal(size=(8, 5))
    keep = np.tile(np.array([T, F])[:, None], (4, 5))
    # a large common offset must not change the score (the sums are shifted internally)
    np.testing.assert_allclose(privacy_score(phi + 1e6, keep), privacy_score(phi, keep), rtol=1e-6)
    mi, mo = phi[keep[:, 0]].mean(0), phi[~keep[:, 0]].mean(0)
    si, so = phi[keep[:, 0]].std(0, ddof=1), phi[~keep[:, 0]].std(0, ddof=1)
    np.testing.assert_allclose(privacy_score(phi, keep), np.abs(mi - mo) / (si + so), rtol=1e-10)
    assert privacy_score_from_stats(1.0, 0.5, 3.0, 1.5) == pytest.approx(1.0)

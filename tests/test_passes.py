"""analysis.passes.one_pass: everything the report needs from one read of the logits equals what the
separate readers compute (sums, partners, counts, Song histograms, target signals, the theory's
Gaussian fits, the OOD means, every shadow's phi)."""

from __future__ import annotations

import numpy as np
import pytest

from analysis.attacks import AttackContext
from analysis.load import open_shadows
from analysis.ood import ood_scores_from_store
from analysis.passes import one_pass, reduce_over_shadows
from analysis.synthetic import write_synthetic_store
from analysis.theory import gauss_fits


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("passes") / "s.zarr"
    # several queries (the multivariate fits), a test split, sample chunks smaller than N
    write_synthetic_store(path, n_shadows=10, n_samples=700, n_test=150, n_queries=3, seed=5, sample_chunk=256)
    return open_shadows(path)


def _eq(a, b, **kw):
    np.testing.assert_allclose(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64), **kw)


@pytest.mark.parametrize("budget", [0, 2**30])
def test_one_pass_equals_the_separate_readers(data, budget):
    t = 4
    p = one_pass(data, t, phi_budget=budget)
    sums, part, counts = reduce_over_shadows(data)
    for f in ("shift", "n_in", "s1_in", "s2_in", "n_out", "s1_out", "s2_out"):
        _eq(getattr(p.sums, f), getattr(sums, f), rtol=1e-10, atol=1e-9)
    for f in ("first_in", "first_out", "x_in", "x_out"):
        _eq(getattr(p.partner, f), getattr(part, f), rtol=1e-12, atol=0)
    for f in ("n_in", "c_in", "n_out", "c_out"):
        np.testing.assert_array_equal(getattr(p.counts, f), getattr(counts, f))

    ctx = AttackContext.from_shadows(data, t)
    ss, sp, hist, edges = ctx.signal_sums()
    for f in ("shift", "s1_in", "s2_in", "s1_out", "s2_out"):
        _eq(getattr(p.sig_sums, f), getattr(ss, f), rtol=1e-10, atol=1e-9)
    _eq(p.sig_partner.x_in, sp.x_in, rtol=1e-12, atol=0)
    np.testing.assert_array_equal(p.hist, hist)
    np.testing.assert_array_equal(p.edges, edges)
    _eq(p.target_signals, ctx.target_signals(slice(0, t)), rtol=0, atol=0)  # same float32 values

    phi = data.phi().values
    _eq(p.target_phi, phi[:t], rtol=0, atol=0)
    if budget:
        _eq(p.phi_all, phi, rtol=0, atol=0)
    else:
        assert p.phi_all is None

    fits = gauss_fits(phi, data.keep.values)
    for f in ("n_in", "mu_in", "cov_in", "n_out", "mu_out", "cov_out"):
        _eq(getattr(p.fits, f), getattr(fits, f), rtol=1e-9, atol=1e-9)
    assert p.fits.cov_in.shape == (phi.shape[1], 3, 3)

    ood = ood_scores_from_store(data, t)
    for k in ("msp", "energy"):
        _eq(p.ood[k], ood[k], rtol=1e-12, atol=1e-12)

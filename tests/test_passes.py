"""analysis.store_io.passes: the one reducer, checked against direct numpy recomputations over all shadows
(sums, partners, counts, Song histograms, target signals, the theory's Gaussian fits, the OOD
means, every shadow's phi), and its three views (one_pass, reduce_over_shadows, signal_sums)."""

from __future__ import annotations

import numpy as np
import pytest

from analysis.attacks import AttackContext
from analysis.attacks._common import signals_from_logits, song_histogram
from analysis.store_io.load import open_shadows
from analysis.studies.memorization import memorization_counts
from analysis.studies.ood import energy_score, msp_score
from analysis.store_io.passes import one_pass, reduce_over_shadows
from analysis.kernels.stats import gaussian_sums, partners
from analysis.tools.synthetic_store import write_synthetic_store
from analysis.studies.theory import gauss_fits


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("passes") / "s.zarr"
    # several queries (the multivariate fits), a test split, sample chunks smaller than N
    write_synthetic_store(path, n_shadows=10, n_samples=700, n_test=150, n_queries=3, seed=5, sample_chunk=256)
    return open_shadows(path)


def _eq(a, b, rtol=1e-10, atol=1e-9):
    np.testing.assert_allclose(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64), rtol=rtol, atol=atol)


def _same_sums(got, want):
    for f in ("shift", "n_in", "s1_in", "s2_in", "n_out", "s1_out", "s2_out"):
        _eq(getattr(got, f), getattr(want, f))


def _same_partners(got, want):
    for f in ("first_in", "first_out", "x_in", "x_out"):
        _eq(getattr(got, f), getattr(want, f), rtol=0, atol=0)


@pytest.mark.parametrize("budget", [0, 2**30])
def test_one_pass_equals_direct_recomputation(data, budget):
    t = 4
    z = data.logits.values  # (M, N, Q, C): small enough to hold here
    keep = data.keep.values
    label = np.asarray(data.label)
    train = np.asarray(data.split) == "train"
    p = one_pass(data, t, phi_budget=budget)

    phi = data.phi().values
    _same_sums(p.sums, gaussian_sums(phi, keep, phi[0]))
    _same_partners(p.partner, partners(phi, keep))
    c = memorization_counts(z[:, :, 0, :].argmax(-1) == label[None, :], keep)
    for f in ("n_in", "c_in", "n_out", "c_out"):
        np.testing.assert_array_equal(getattr(p.counts, f), getattr(c, f))

    sig = signals_from_logits(z[:, :, 0, :], label[None, :])
    _same_sums(p.sig_sums, gaussian_sums(sig, keep, sig[0]))
    _same_partners(p.sig_partner, partners(sig, keep))
    edges = np.unique(np.quantile(sig[0][train, 2], np.linspace(0, 1, 513)))
    np.testing.assert_array_equal(p.edges, edges)
    np.testing.assert_array_equal(p.hist, song_histogram(sig[..., 2], keep, label, train, edges, z.shape[-1]))

    _eq(p.target_phi, phi[:t], rtol=0, atol=0)  # float32-rounded values, exactly
    _eq(p.target_signals, sig[:t], rtol=0, atol=0)
    if budget:
        _eq(p.phi_all, phi, rtol=0, atol=0)
    else:
        assert p.phi_all is None

    fits = gauss_fits(phi, keep)
    for f in ("n_in", "mu_in", "cov_in", "n_out", "mu_out", "cov_out"):
        _eq(getattr(p.fits, f), getattr(fits, f), rtol=1e-9, atol=1e-9)
    assert p.fits.cov_in.shape == (phi.shape[1], 3, 3)

    _eq(p.ood["msp"], msp_score(z[:t, :, 0, :]).mean(0), rtol=1e-12, atol=1e-12)
    _eq(p.ood["energy"], energy_score(z[:t, :, 0, :]).mean(0), rtol=1e-12, atol=1e-12)


def test_the_views_equal_the_full_pass(data):
    p = one_pass(data, 3)
    sums, part, counts = reduce_over_shadows(data)
    _same_sums(sums, p.sums)
    _same_partners(part, p.partner)
    for f in ("n_in", "c_in", "n_out", "c_out"):
        np.testing.assert_array_equal(getattr(counts, f), getattr(p.counts, f))
    ss, sp, hist, edges = AttackContext.from_shadows(data, 3).signal_sums()
    _same_sums(ss, p.sig_sums)
    _same_partners(sp, p.sig_partner)
    np.testing.assert_array_equal(hist, p.hist)
    np.testing.assert_array_equal(edges, p.edges)


@pytest.mark.parametrize("holes", [False, True])
def test_logits_blocks_read_the_done_shadows_like_xarray(tmp_path, holes):
    # the pass reads blocks of whole shadows straight from the zarr array; they must be exactly the
    # done shadows xarray selects, in order, whether the done shadows are a run or have gaps
    import zarr

    path = tmp_path / "s.zarr"
    write_synthetic_store(path, n_shadows=10, n_samples=300, n_queries=2, seed=3, sample_chunk=128)
    if holes:
        done = zarr.open_group(str(path), mode="r+")["done"]
        flags = np.asarray(done[:])
        flags[[0, 4, 5]] = False
        done[:] = flags
    for limit in (None, 7):
        data = open_shadows(path, shadow_limit=limit)
        want = data.logits.values
        for per in (1, 2, 4, 64):
            blocks = data.logits_blocks(per)
            assert blocks.chunks[0][0] == min(per, data.n_shadows)
            np.testing.assert_array_equal(blocks.compute(), want)
    assert data.positions.tolist() == ([1, 2, 3, 6] if holes else list(range(7)))


def _fields(p):
    """Every array a pass returns, by name (the targets' arrays read whole, from memory or disk)."""
    out = {"hist": p.hist, "edges": p.edges, "ood_msp": p.ood["msp"], "ood_energy": p.ood["energy"]}
    for name, obj in (("sums", p.sums), ("partner", p.partner), ("counts", p.counts), ("sig_sums", p.sig_sums),
                      ("sig_partner", p.sig_partner), ("fits", p.fits)):
        for f, v in vars(obj).items():
            out[f"{name}.{f}"] = v
    out["target_phi"], out["target_signals"] = np.asarray(p.target_phi[:]), np.asarray(p.target_signals[:])
    out["phi_all"] = None if p.phi_all is None else np.asarray(p.phi_all[:])
    for k, v in (p.target_scores or {}).items():
        out[f"scores.{k}"] = np.asarray(v[:])
    return out


@pytest.mark.parametrize("spill", [False, True])
def test_sample_blocks_and_threads_change_no_bit_of_the_pass(data, monkeypatch, tmp_path, spill):
    """The pass folds each sample block's tiles in shadow order: how many blocks (here 1 vs 256 vs
    7 samples per block, every block boundary inside the store's chunks too), the threads and
    whether the targets' arrays wait on disk change no bit of any result."""
    import analysis.store_io.passes as passes

    train = np.asarray(data.split) == "train"
    scorer = {"mean_feature": lambda f, pos: f.mean(-1).astype(np.float32) + pos[:, None].astype(np.float32)}
    runs = []
    for block, threads in ((10**6, 1), (256, 2), (7, 3)):
        monkeypatch.setattr(passes, "PASS_SAMPLES", block)
        spill_dir = tmp_path / f"spill-{block}" if spill else None
        runs.append(_fields(one_pass(data, 4, train=train, phi_budget=2**30, scorers=scorer, threads=threads,
                                     spill_dir=spill_dir)))
    for other in runs[1:]:
        assert other.keys() == runs[0].keys()
        for k, v in runs[0].items():
            if v is None:
                assert other[k] is None, k
            else:
                np.testing.assert_array_equal(np.asarray(other[k]), np.asarray(v), err_msg=k)
    # the scorer saw each target's own train columns, in place
    feats = np.asarray(runs[0]["scores.mean_feature"])
    assert feats.shape == (4, int(train.sum())) and np.isfinite(feats).all()

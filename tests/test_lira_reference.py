"""LiRA as the reference code scores it (analysis.attacks.lira_reference, analysis.lira_variant = "reference").

The expected values are the reference's formulas (tensorflow/privacy research/mi_lira_2021,
plot.py: generate_ours / generate_ours_offline) written here from their definitions, one target
and one sample at a time with plain numpy/scipy, on a real synthetic store.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import norm

from analysis.attacks.lira import ATTACKS, LIRA_VARIANTS
from analysis.attacks.lira_reference import reference_target_scores, run_lira_reference
from analysis.store_io.load import open_shadows
from analysis.tools.synthetic_store import synthetic_keep, write_synthetic_store


def _expected(phi: np.ndarray, keep: np.ndarray, t: int) -> dict[str, np.ndarray]:
    """The reference's three predictions for target t, negated into "higher = member"."""
    refs = [s for s in range(phi.shape[0]) if s != t]  # every other model, in order
    n = phi.shape[1]
    dat_in = [[phi[s, i] for s in refs if keep[s, i]] for i in range(n)]
    dat_out = [[phi[s, i] for s in refs if not keep[s, i]] for i in range(n)]
    in_size = min(len(d) for d in dat_in)
    out_size = min(len(d) for d in dat_out)
    dat_in = np.array([d[:in_size] for d in dat_in])  # (N, in_size, Q): padded to the minimum by truncation
    dat_out = np.array([d[:out_size] for d in dat_out])
    mean_in, mean_out = np.median(dat_in, 1), np.median(dat_out, 1)
    std_in, std_out = np.std(dat_in, 1), np.std(dat_out, 1)
    sc = phi[t]
    online = (-norm.logpdf(sc, mean_in, std_in + 1e-30)) - (-norm.logpdf(sc, mean_out, std_out + 1e-30))
    fixed_std = np.std(dat_in)  # generate_ours(fix_variance=True): the IN std on both sides
    fixed = (-norm.logpdf(sc, mean_in, fixed_std + 1e-30)) - (-norm.logpdf(sc, mean_out, fixed_std + 1e-30))
    offline = norm.logpdf(sc, mean_out, std_out + 1e-30)
    # the reference's ROC ranks -prediction: ours ("higher = member") is the negated prediction
    return {"lira-online": -online.mean(1), "lira-fixed-variance": -fixed.mean(1), "lira-offline": -offline.mean(1)}


def _unbalanced(m=11, n=30, q=3, seed=0):
    """Masks whose IN counts differ per sample (so the truncation matters) and an odd M."""
    rng = np.random.default_rng(seed)
    keep = rng.random((m, n)) < np.linspace(0.3, 0.7, n)
    keep[0, :], keep[1, :] = True, False  # at least 1 IN and 1 OUT for every sample besides any target
    keep[2, :], keep[3, :] = True, False
    phi = 5.0 + rng.normal(0, 2, size=(1, n, 1)) + 1.5 * keep[..., None] + rng.normal(size=(m, n, q)) \
        * rng.uniform(0.5, 2.0, size=(1, n, 1))
    return phi, keep


def test_variants_are_the_spec_values():
    import typing

    from mia_hpc.contract.spec import AnalysisSpec

    assert typing.get_args(typing.get_type_hints(AnalysisSpec)["lira_variant"]) == LIRA_VARIANTS
    assert AnalysisSpec().lira_variant == "ours"


@pytest.mark.parametrize("block_bytes", [64 * 2**20, 200])  # one block, and one or two samples per block
def test_target_scores_equal_the_reference_formulas(block_bytes):
    phi, keep = _unbalanced()
    for t in (0, 4, 10):
        got = reference_target_scores(phi, keep, t, block_bytes=block_bytes)
        exp = _expected(phi, keep, t)
        for a in ATTACKS:
            np.testing.assert_allclose(got[a], exp[a], rtol=1e-9, atol=1e-9, err_msg=f"{a}, target {t}")


def test_the_truncation_is_the_references_first_values():
    # moving a shadow that lies beyond in_size for some sample changes nothing there: only the first
    # in_size IN values of each sample count
    phi, keep = _unbalanced(seed=1)
    t = 5
    base = reference_target_scores(phi, keep, t)
    n_in = keep.sum(0) - keep[t]
    in_size = n_in.min()
    rich = int(np.argmax(n_in))
    assert n_in[rich] > in_size
    last_in = [s for s in range(phi.shape[0]) if s != t and keep[s, rich]][-1]
    phi2 = phi.copy()
    phi2[last_in, rich] += 100.0
    moved = reference_target_scores(phi2, keep, t)
    assert moved["lira-online"][rich] == base["lira-online"][rich]
    # while a change to the first IN value does move it
    first_in = [s for s in range(phi.shape[0]) if s != t and keep[s, rich]][0]
    phi2[first_in, rich] += 100.0
    assert reference_target_scores(phi2, keep, t)["lira-online"][rich] != base["lira-online"][rich]


def test_one_reference_per_side_gives_huge_not_infinite_scores():
    # std 0 + 1e-30: the reference's only guard; stored clipped to float32, never inf or NaN
    rng = np.random.default_rng(2)
    keep = synthetic_keep(4, 6, 0, rng)
    phi = rng.normal(size=(4, 6, 1))
    r = run_lira_reference(phi, keep, np.ones(6, bool), 4)
    for a in ATTACKS:
        assert np.isfinite(r.scores[a]).all()
    assert np.abs(r.scores["lira-online"]).max() == np.finfo(np.float32).max
    assert r.n_neutral == {a: 0 for a in ATTACKS}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("ref") / "s.zarr"
    write_synthetic_store(path, n_shadows=12, n_samples=120, n_queries=3, frac_under=0.3,
                          separation={"over": 0.5, "under": 3.0}, seed=4, sample_chunk=64, n_test=20)
    return path


def test_run_on_a_store_equals_the_reference_per_target(store):
    data = open_shadows(store)
    phi = np.asarray(data.phi().values, dtype=np.float64)
    keep = np.asarray(data.keep.values, dtype=bool)
    train = data.split == "train"
    assert (~train).any()  # test-split samples exist and must not enter in_size or the fixed std
    r = run_lira_reference(phi, keep, train, 5, shadow_ids=data.ds["shadow"].values,
                           sample_ids=data.ds["sample"].values)
    assert r.member.shape == (5, int(train.sum())) and (r.member == keep[:5][:, train]).all()
    for t in range(5):
        exp = _expected(phi[:, train], keep[:, train], t)
        for a in ATTACKS:
            assert r.scores[a].dtype == np.float32
            np.testing.assert_allclose(r.scores[a][t], exp[a], rtol=1e-6, atol=1e-6, err_msg=f"{a}, target {t}")


def test_analyze_with_the_reference_variant(store, tmp_path):
    from analysis.output.report import analyze

    ours = analyze(store, tmp_path / "ours", targets=4, progress=False, extras=False)
    ref = analyze(store, tmp_path / "ref", targets=4, progress=False, extras=False, lira_variant="reference")
    data = open_shadows(store)
    phi = np.asarray(data.phi().values, dtype=np.float32).astype(np.float64)  # the pass keeps phi as float32
    keep = np.asarray(data.keep.values, dtype=bool)
    train = data.split == "train"
    for t in range(4):
        exp = _expected(phi[:, train], keep[:, train], t)
        for a in ATTACKS:
            np.testing.assert_allclose(np.asarray(ref["lira"].scores[a][t]), exp[a], rtol=1e-6, atol=1e-6)
    s_ours = json.loads((tmp_path / "ours" / "analysis.json").read_text())
    s_ref = json.loads((tmp_path / "ref" / "analysis.json").read_text())
    assert s_ours["lira_variant"] == "ours" and s_ref["lira_variant"] == "reference"
    assert "reference" in (tmp_path / "ref" / "tables" / "attacks.md").read_text()
    # the variant changes LiRA only
    a_ours, a_ref = ours["attacks"], ref["attacks"]
    # "higher = member": the well-separated group is found (a sign error would put it near 0)
    assert (a_ref.loc[list(ATTACKS), "AUROC Under"] > 0.9).all()
    assert (a_ours.loc["yeom"] == a_ref.loc["yeom"]).all()
    assert not np.allclose(a_ours.loc["lira-offline"].to_numpy(float), a_ref.loc["lira-offline"].to_numpy(float))


def test_bad_variant_is_one_line_naming_the_field(tmp_path):
    from mia_hpc.contract.spec import SpecError, spec_from_dict

    with pytest.raises(SpecError, match=r"^analysis\.lira_variant: must be one of 'ours', 'reference', got 'carlini'$"):
        spec_from_dict({"analysis": {"lira_variant": "carlini"}})
    assert spec_from_dict({"analysis": {"lira_variant": "reference"}}).analysis.lira_variant == "reference"


def test_the_spec_field_and_the_cli_flag_choose_the_variant(tmp_path, capsys):
    from mia_hpc.cli import main

    store = tmp_path / "s.zarr"
    write_synthetic_store(store, n_shadows=6, n_samples=60, n_queries=2, seed=5, sample_chunk=16,
                          analysis={"lira_variant": "reference"})
    assert main(["analyze", str(store), "--out", str(tmp_path / "a"), "--quick", "--targets", "2"]) == 0
    assert json.loads((tmp_path / "a" / "analysis.json").read_text())["lira_variant"] == "reference"
    assert main(["analyze", str(store), "--out", str(tmp_path / "b"), "--quick", "--targets", "2",
                 "--lira-variant", "ours"]) == 0
    assert json.loads((tmp_path / "b" / "analysis.json").read_text())["lira_variant"] == "ours"
    capsys.readouterr()
    with pytest.raises(SystemExit) as err:
        main(["analyze", str(store), "--out", str(tmp_path / "c"), "--lira-variant", "carlini"])
    assert err.value.code == 2 and "--lira-variant: invalid choice: 'carlini'" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()

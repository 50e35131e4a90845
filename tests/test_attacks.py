"""analysis.attacks: known answers on synthetic stores, leave-one-out statistics against direct
recomputation, RMIA against brute force, Shokri's cross-fitting, and the report's attack table."""

from __future__ import annotations

import numpy as np
import pytest

from analysis.attacks import ATTACKS, AttackContext, run_attacks
from analysis.attacks._common import SIGNALS, mentr_from_logits, signals_from_logits, song_histogram
from analysis.attacks.rmia import population, run_rmia
from analysis.attacks.sablayrolles import run_sablayrolles, sablayrolles_thresholds
from analysis.attacks.shokri import run_shokri, shokri_folds
from analysis.attacks.song import run_song, song_thresholds
from analysis.attacks.yeom import run_yeom
from analysis.store_io.load import loss_from_logits, open_shadows
from analysis.kernels.metrics import auroc
from analysis.output.report import analyze
from analysis.kernels.stats import gaussian_sums, partners
from analysis.tools.synthetic_store import synthetic_keep, write_synthetic_store

FAST = {"shokri": {"k": 2, "max_rows": 3000, "max_iter": 100}}  # two small attack MLPs per store


def _ctx(path):
    data = open_shadows(path)
    return AttackContext.from_shadows(data, data.n_shadows)  # every shadow a target


@pytest.fixture(scope="module")
def null_result(tmp_path_factory):
    # membership does not change the outputs: every attack must be at chance
    path = tmp_path_factory.mktemp("null") / "s"
    write_synthetic_store(path, n_shadows=8, n_samples=2000, n_test=300, seed=11,
                          separation={"over": 0.0, "under": 0.0})
    return run_attacks(_ctx(path), params=FAST)


@pytest.fixture(scope="module")
def separated_result(tmp_path_factory):
    # IN shifts phi by 20 with noise sd 0.3 and offsets sd 1: IN and OUT never overlap, per sample or pooled
    path = tmp_path_factory.mktemp("sep") / "s"
    write_synthetic_store(path, n_shadows=8, n_samples=600, n_test=200, seed=12, sigma=0.3, offset_mean=0.0,
                          offset_std=1.0, separation={"over": 20.0, "under": 20.0})
    return run_attacks(_ctx(path), params=FAST)


@pytest.mark.parametrize("name", list(ATTACKS))
def test_no_separation_gives_chance(null_result, name):
    # 8 targets x 2000 samples = 16,000 pairs (8,000 each side): an independent-pairs AUROC has sd
    # 0.0046 under the null. Measured over 10 seeds: |AUROC - 0.5| <= 0.017 for every attack, sd
    # 0.002-0.006 (Shokri and Sablayrolles the widest), so 0.03 is 5 sd of the worst. With
    # only 8 shadows, any leak of membership through reference counts would show (plain leave-one-out
    # LiRA gives 0.34 here).
    r = null_result
    assert r.scores[name].shape == (8, 2000) and r.member.shape == (8, 2000)
    assert np.isfinite(r.scores[name]).all()
    assert abs(auroc(r.member, r.scores[name]) - 0.5) < 0.03, (name, auroc(r.member, r.scores[name]))


@pytest.mark.parametrize("name", list(ATTACKS))
def test_perfect_separation_is_found(separated_result, name):
    r = separated_result
    assert auroc(r.member, r.scores[name]) > 0.995, (name, auroc(r.member, r.scores[name]))
    assert r.n_neutral[name] == 0


# --- signals and the shared pass ------------------------------------------------------------

def _random_case(m=6, n_train=40, n_test=12, c=4, q=2, seed=0):
    rng = np.random.default_rng(seed)
    keep = synthetic_keep(m, n_train, n_test, rng)
    label = rng.integers(0, c, n_train + n_test)
    z = rng.normal(0, 2, size=(m, n_train + n_test, q, c))
    z[..., 0, :] += 2.5 * (keep[..., None] * (np.arange(c) == label[:, None]))  # members more confident
    split = np.array(["train"] * n_train + ["test"] * n_test)
    return z.astype(np.float32), keep, label, split


def test_mentr_matches_the_formula_and_is_stable():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 3, size=(200, 7))
    y = rng.integers(0, 7, 200)
    f = np.exp(z - z.max(1, keepdims=True))
    f /= f.sum(1, keepdims=True)
    fy = f[np.arange(200), y]
    other = np.where(np.arange(7) == y[:, None], 0.0, f * np.log(1 - f)).sum(1)
    np.testing.assert_allclose(mentr_from_logits(z, y), -(1 - fy) * np.log(fy) - other, rtol=1e-9, atol=1e-12)
    ext = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 0.0], [0.0, 0.0, 0.0]])
    m = mentr_from_logits(ext, np.array([0, 0, 2]))
    assert np.isfinite(m).all() and m[0] >= 0 and m[1] > 1e3  # confident right ~ 0, confident wrong huge
    s = signals_from_logits(z, y)
    np.testing.assert_allclose(s[:, SIGNALS.index("loss")], loss_from_logits(z, y), rtol=1e-7)  # signals are float32-rounded
    np.testing.assert_allclose(s[:, SIGNALS.index("prob")], fy, rtol=1e-7)


def test_signal_pass_equals_direct_sums():
    z, keep, label, split = _random_case()
    ctx = AttackContext(z, keep, label, split, 3, song_bins=16)
    sums, part, hist, edges = ctx.signal_sums()
    x = signals_from_logits(z[:, :, 0, :].astype(np.float64), label[None, :])
    want = gaussian_sums(x, keep, shift=x[0])
    for f in ("n_in", "n_out"):
        np.testing.assert_array_equal(getattr(sums, f), getattr(want, f))
    for f in ("s1_in", "s2_in", "s1_out", "s2_out"):
        np.testing.assert_allclose(getattr(sums, f), getattr(want, f), rtol=1e-10, atol=1e-10)
    p = partners(x, keep)
    np.testing.assert_array_equal(part.first_in, p.first_in)
    np.testing.assert_allclose(part.x_out, p.x_out)
    np.testing.assert_array_equal(hist, song_histogram(x[..., 2], keep, label, split == "train", edges, 4))
    assert hist.sum() == keep.shape[0] * (split == "train").sum()


# --- leave-one-out statistics against direct recomputation ---------------------------------

def _partner(keep, t, i):
    """The shadow removed with target t for sample i: the first one on the other side."""
    other = ~keep[:, i] if keep[t, i] else keep[:, i]
    return np.flatnonzero(other)[0]


def test_sablayrolles_thresholds_equal_direct_recomputation():
    z, keep, label, split = _random_case(m=8)
    ctx = AttackContext(z, keep, label, split, 8)
    loss = loss_from_logits(z[:, :, 0, :], label[None, :])
    tr = np.flatnonzero(split == "train")
    for t in (0, 3, 7):
        tau = sablayrolles_thresholds(ctx, slice(t, t + 1))[0]
        tau_out = sablayrolles_thresholds(ctx, slice(t, t + 1), tau="out")[0]
        for j, i in enumerate(tr):
            use = (np.arange(8) != t) & (np.arange(8) != _partner(keep, t, i))
            li, lo = loss[use & keep[:, i], i], loss[use & ~keep[:, i], i]
            assert len(li) == keep[:, i].sum() - 1 and len(lo) == (~keep[:, i]).sum() - 1
            assert tau[j] == pytest.approx((li.mean() + lo.mean()) / 2, rel=1e-6)  # signals are float32-rounded
            assert tau_out[j] == pytest.approx(lo.mean(), rel=1e-6)
    r = run_sablayrolles(ctx)
    np.testing.assert_allclose(r.scores["sablayrolles"][3], sablayrolles_thresholds(ctx, slice(3, 4))[0] - loss[3, tr], atol=1e-6)


def test_song_thresholds_equal_a_direct_search():
    z, keep, label, split = _random_case(m=6, n_train=60, c=3)
    ctx = AttackContext(z, keep, label, split, 6, song_bins=20)
    _, _, _, edges = ctx.signal_sums()
    mentr = mentr_from_logits(z[:, :, 0, :].astype(np.float64), label[None, :])
    tr = split == "train"
    # the same grid search on the other shadows' raw values: candidate k predicts "member iff
    # mentr < edges[k]" (k = 0: nobody, k = B: everybody, the grid's end bins being open)
    nb = len(edges) - 1

    def bacc_of(v, k, j):
        pred = np.zeros_like(v, bool) if j == 0 else np.ones_like(v, bool) if j == nb else v < edges[j]
        return 0.5 * (pred[k].mean() + (~pred[~k]).mean())

    for t in (0, 2, 5):
        thr = song_thresholds(ctx, slice(t, t + 1))[0]
        others = np.arange(6) != t
        for c in range(3):
            sel = tr & (label == c)
            v, k = mentr[others][:, sel], keep[others][:, sel]
            baccs = [bacc_of(v, k, j) for j in range(nb + 1)]
            got = int(np.flatnonzero(edges == thr[c])[0])
            assert baccs[got] == pytest.approx(max(baccs), abs=1e-12), (t, c)
            assert max(baccs) > 0.5  # the members' higher confidence is found
    r = run_song(ctx)
    t = 2
    want = song_thresholds(ctx, slice(t, t + 1))[0][label[tr]] - mentr[t, tr]
    np.testing.assert_allclose(r.scores["song"][t], want, rtol=1e-6)


def _rmia_brute(z, keep, label, split, t, a, gamma, zidx):
    """O(N Z) RMIA for target t, with explicit loops over reference shadows and population samples."""
    m = z.shape[0]
    logp = -loss_from_logits(z[:, :, 0, :].astype(np.float64), label[None, :])
    p = np.exp(logp)
    tr = np.flatnonzero(split == "train")

    def pr(i, refs):
        return 0.5 * ((1 + a) * p[refs, i].mean() + (1 - a))

    lr_z = []
    for i in zidx:
        refs = [s for s in range(m) if s != t and not keep[s, i]]
        lr_z.append(p[t, i] / pr(i, refs))
    out = []
    for i in tr:
        refs = [s for s in range(m) if s != t and s != _partner(keep, t, i) and not keep[s, i]]
        lr_x = p[t, i] / pr(i, refs)
        out.append(sum(lr_x / lz >= gamma for lz in lr_z) / len(lr_z))
    return np.array(out)


@pytest.mark.parametrize("a,gamma", [(0.3, 1.0), (0.0, 2.0), (1.0, 0.5)])
def test_rmia_equals_brute_force(a, gamma):
    z, keep, label, split = _random_case(m=6, n_train=30, n_test=12)
    ctx = AttackContext(z, keep, label, split, 6)
    zidx, fixed = population(ctx)
    assert fixed and (split[zidx] == "test").all() and len(zidx) == 12
    exact = run_rmia(ctx, a=a, gamma=gamma, tiebreak=False).scores["rmia"]
    broken = run_rmia(ctx, a=a, gamma=gamma).scores["rmia"]
    for t in range(6):
        want = _rmia_brute(z, keep, label, split, t, a, gamma, zidx)
        np.testing.assert_allclose(exact[t], want, atol=1e-12)
        np.testing.assert_array_equal(np.floor(broken[t] * 13), np.round(want * 12))  # same counts
    # the tie-break orders samples of equal count by LR_x, never across counts
    assert len(np.unique(broken)) > len(np.unique(exact))


def test_shokri_never_trains_on_its_targets():
    folds = shokri_folds(n_shadows=20, n_targets=13, k=4, max_shadows=6)
    seen = []
    for f, (targets, train) in folds.items():
        assert (targets % 4 == f).all() and (train % 4 != f).all()  # no shadow of the fold trains its model
        assert not set(targets) & set(train) and len(train) == 6
        seen += list(targets)
    assert sorted(seen) == list(range(13))  # every target scored by exactly one classifier
    z, keep, label, split = _random_case(m=6, n_train=60)
    ctx = AttackContext(z, keep, label, split, 6)
    r = run_shokri(ctx, k=3, max_rows=600, max_iter=50)
    for t, f in r.info["fold_of_target"].items():
        assert t not in r.info["train_shadows"][f] and all(s % 3 != t % 3 for s in r.info["train_shadows"][f])
    assert r.scores["shokri"].shape == (6, 60) and np.isfinite(r.scores["shokri"]).all()


def test_yeom_is_minus_the_loss_and_batches_do_not_matter():
    z, keep, label, split = _random_case()
    one = AttackContext(z, keep, label, split, 5)
    many = AttackContext(z, keep, label, split, 5, batch_bytes=1)  # one target per batch
    assert len(many.target_batches()) == 5
    want = -loss_from_logits(z[:5, :, 0, :], label[None, :])[:, split == "train"]
    np.testing.assert_allclose(run_yeom(one).scores["yeom"], want, rtol=1e-7)
    for f in (run_song, run_sablayrolles, run_rmia, run_yeom):
        a, b = f(one), f(many)
        (name,) = a.scores
        np.testing.assert_allclose(a.scores[name], b.scores[name], rtol=1e-12, err_msg=name)


def test_rmia_without_test_split_uses_known_non_members():
    z, keep, label, split = _random_case(n_test=0)
    ctx = AttackContext(z, keep, label, split, 6)
    zidx, fixed = population(ctx)
    assert not fixed and (split[zidx] == "train").all()
    r = run_rmia(ctx)
    assert np.isfinite(r.scores["rmia"]).all() and ((r.scores["rmia"] >= 0) & (r.scores["rmia"] <= 1)).all()


def test_unknown_attack_is_refused():
    z, keep, label, split = _random_case()
    with pytest.raises(ValueError, match="unknown attack"):
        run_attacks(AttackContext(z, keep, label, split, 2), ["nope"])


def test_analyze_tabulates_every_attack(tmp_path):
    path = tmp_path / "store.zarr"
    write_synthetic_store(path, n_shadows=8, n_samples=200, n_test=60, seed=3, frac_under=0.25,
                          separation={"over": 0.0, "under": 4.0}, analysis={"targets": 4, "fpr": [0.001, 0.01]})
    res = analyze(path, tmp_path / "out", progress=False)
    df = res["attacks"]
    assert list(df.index) == list(ATTACKS)
    assert list(df.columns) == ["AUROC All", "AUROC Under", "TPR@0.1% All", "TPR@0.1% Under",
                                "TPR@1% All", "TPR@1% Under"]
    assert ((df.values >= 0) & (df.values <= 1)).all()
    # only "under" is separated (4 targets x 50 under samples: a noisy column); the per-sample
    # calibrated attacks see it clearly
    for a in ("sablayrolles", "lira-online", "rmia"):
        assert df.loc[a, "AUROC Under"] > 0.8 and df.loc[a, "AUROC Under"] > df.loc[a, "AUROC All"] + 0.1, a
    md = (tmp_path / "out" / "tables" / "attacks.md").read_text()
    assert all(f"| {a} |" in md for a in ATTACKS)
    assert list(res["attacks_per_target"].index) == list(ATTACKS)
    assert set(res["summary"]["n_neutral_scores"]) == set(ATTACKS)



class _Recorder:
    """A numpy array that records, per read, the phase and which shadows (axis 0) it touches."""

    def __init__(self, a):
        self.a, self.shape, self.dtype, self.ndim = a, a.shape, a.dtype, a.ndim
        self.phase = "train"
        self.events: list[tuple[str, set[int]]] = []

    def __getitem__(self, key):
        self.events.append((self.phase, set(np.arange(self.shape[0])[key[0]].ravel().tolist())))
        return self.a[key]


def test_shokri_trains_only_on_what_it_reads_and_never_on_the_scored_target():
    # Spy on every read of the logits: the rows read to train are exactly from the training
    # shadows the result names, no fold's classifier saw a target it scores, and every target's
    # own logits are read for scoring only after all training.
    import dask
    import dask.array as da

    z, keep, label, split = _random_case(m=10, n_train=50)
    rec = _Recorder(z)
    ctx = AttackContext(da.from_array(rec, chunks=(1,) + z.shape[1:]), keep, label, split, 10)
    read_targets = ctx.target_logits

    def scoring(sl):
        rec.phase = "score"
        return read_targets(sl)

    ctx.target_logits = scoring
    with dask.config.set(scheduler="synchronous"):
        r = run_shokri(ctx, k=3, max_rows=300, max_iter=30)
    info = r.info
    trained = set().union(*(s for p, s in rec.events if p == "train"))
    scored = set().union(*(s for p, s in rec.events if p == "score"))
    assert trained == set().union(*map(set, info["train_shadows"].values()))
    assert scored == set(range(10)) and len(info["train_shadows"]) == 3
    phases = [p for p, _ in rec.events]
    assert "train" not in phases[phases.index("score"):]
    for t, f in info["fold_of_target"].items():
        assert t not in info["train_shadows"][f] and t % 3 == f


def test_shokri_scored_in_the_pass_equals_read_back():
    # The report scores Shokri's targets inside the one pass over the logits; the scores equal
    # those of the attack reading the targets' logits itself.
    from analysis.attacks.shokri import fit_shokri
    from analysis.store_io.passes import reduce_over_tasks

    z, keep, label, split = _random_case(m=10, n_train=50)
    train = split == "train"
    ctx = AttackContext(z, keep, label, split, 7)
    params = {"k": 3, "max_rows": 300, "max_iter": 30}
    own = run_shokri(ctx, **params).scores["shokri"]
    model = fit_shokri(ctx.logits, keep, label, train, 7, **params)
    p = reduce_over_tasks(ctx.logits, keep, label, train, 7, extras=False,
                          scorers={"shokri": model.score_features})
    ctx2 = AttackContext(z, keep, label, split, 7, precomputed={"shokri": (model, p.target_scores["shokri"])})
    np.testing.assert_array_equal(run_shokri(ctx2, **params).scores["shokri"], own)
    # other settings are not taken from the precomputed model
    assert not np.array_equal(run_shokri(ctx2, k=2, max_rows=300, max_iter=30).scores["shokri"], own)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_shokri_log_odds_equal_the_classifiers_probability():
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from analysis.attacks.shokri import _log_odds

    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 13)) * 3 + 1
    y = (x[:, 0] + rng.normal(size=400) > 1).astype(int)
    clf = make_pipeline(StandardScaler(), MLPClassifier(hidden_layer_sizes=(64,), max_iter=300, random_state=0))
    clf.fit(x, y)
    p = np.clip(clf.predict_proba(x)[:, 1], 1e-12, 1 - 1e-12)
    np.testing.assert_allclose(_log_odds(clf)(x), np.log(p) - np.log1p(-p), rtol=1e-4, atol=1e-4)


def test_shokri_features_match_the_formula():
    from scipy.special import log_softmax

    from analysis.attacks.shokri import shokri_features

    rng = np.random.default_rng(5)
    z = rng.normal(0, 4, size=(3, 50, 6))
    z[0, :3] *= 500  # saturated rows stay finite
    y = rng.integers(0, 6, 50)
    logf = log_softmax(z, axis=-1)
    logp = np.take_along_axis(logf, np.broadcast_to(y, (3, 50))[..., None], -1)[..., 0]
    want = np.concatenate([-np.sort(-np.exp(logf), -1), np.exp(logp)[..., None], np.maximum(logp, -50)[..., None],
                           (z.argmax(-1) == y)[..., None]], axis=-1)
    got = shokri_features(z, y[None, :])
    assert got.dtype == np.float32 and got.shape == (3, 50, 9) and np.isfinite(got).all()
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_branch_free_upper_bound_and_song_bins_equal_searchsorted():
    from analysis.kernels.logit_kernels import song_bin, upper_bound

    rng = np.random.default_rng(0)
    for n in (0, 1, 2, 3, 7, 8, 100, 513):
        a = np.sort(np.round(rng.normal(size=n), 1))  # ties included
        for v in [*rng.normal(size=100), *a, np.inf, -np.inf]:
            assert upper_bound(a, 0, n, v) == np.searchsorted(a, v, side="right")
    edges = np.sort(rng.normal(size=20))
    for v in [*rng.normal(size=300), *edges, np.nan, np.inf, -np.inf]:
        assert song_bin(edges, v) == np.searchsorted(edges[1:-1], v, side="right")

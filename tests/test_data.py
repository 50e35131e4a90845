"""The data side: digits (D_O), PixMix'd digits (D_U), fractals, and their mixture."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from mia_hpc.data import build_dataset
from mia_hpc.data.digits import load_digit_images, resize_images, stratified_split
from mia_hpc.data.fractals import _acceptable, generate_fractals, load_fractal_dir
from mia_hpc.data.draws import per_class_counts
from mia_hpc.data.pixmix import AUGMENTATIONS, add, get_ab, multiply, pixmix
from mia_hpc.contract.spec import SpecError, spec_from_dict
from mia_hpc.contract.store import StaticData

FIELDS = ("image", "label", "group", "split", "source", "dataset")
DIGITS = load_digits()
# Odd sizes so that every remainder rule is exercised: n_over = round(0.9 * 253) = 228 (22 per
# class, +1 for classes 0..7), n_under = 25 (2 per class, +1 for 0..4), test_under = 13.
ODD = {"data": {"size": 253, "alpha": 0.9, "test_under": 13, "under": {"n_fractals": 16}}}


def _spec(**data):
    return spec_from_dict({"data": data} if data else {})


@pytest.fixture(scope="module")
def default_data() -> StaticData:
    return build_dataset(spec_from_dict({}))


@pytest.fixture(scope="module")
def odd_data() -> StaticData:
    return build_dataset(spec_from_dict(ODD))


def _mask(d: StaticData, split: str, group: str) -> np.ndarray:
    return (d.split == split) & (d.group == group)


def _same(a: StaticData, b: StaticData) -> bool:
    return all(np.asarray(getattr(a, f)).tobytes() == np.asarray(getattr(b, f)).tobytes() for f in FIELDS)


# --- the mixture --------------------------------------------------------------------------------

def test_same_spec_gives_byte_identical_arrays(odd_data):
    again = build_dataset(spec_from_dict(ODD))
    assert _same(odd_data, again)
    assert odd_data.image.dtype == again.image.dtype == np.float32


def test_other_seed_gives_other_data(odd_data):
    other = build_dataset(spec_from_dict({**ODD, "seed": 1}))
    assert odd_data.image.shape == other.image.shape
    assert not np.array_equal(odd_data.image, other.image)
    pool = _mask(odd_data, "train", "over")
    assert not np.array_equal(odd_data.source[pool], other.source[pool])
    # ...and the D_U mixtures themselves change, not just which digits they start from.
    under = _mask(odd_data, "train", "under")
    assert not np.array_equal(odd_data.image[under], other.image[under])


def test_shapes_dtypes_range_and_order(default_data):
    d = default_data
    spec = spec_from_dict({})
    n_test_over = int(sum(round(0.25 * c) for c in np.bincount(DIGITS.target)))
    n = spec.n_over + spec.n_under + n_test_over + spec.data.test_under
    assert d.image.shape == (n, 1, 8, 8)
    assert d.image.dtype == np.float32
    assert d.image.min() >= 0.0 and d.image.max() <= 1.0
    assert d.image.max() == 1.0
    for f in ("label", "source"):
        assert getattr(d, f).shape == (n,) and np.issubdtype(getattr(d, f).dtype, np.integer)
    assert d.n_classes == 10
    assert set(d.label) == set(range(10))
    # Sample order: pool/over, pool/under, test/over, test/under, as contiguous blocks.
    blocks = [(s, g) for s, g in zip(d.split, d.group)]
    expected = ([("train", "over")] * spec.n_over + [("train", "under")] * spec.n_under
                + [("test", "over")] * n_test_over + [("test", "under")] * spec.data.test_under)
    assert blocks == expected
    assert set(d.dataset[d.group == "over"]) == {"digits"}
    assert set(d.dataset[d.group == "under"]) == {"augdigits"}


def test_labels_and_clean_images_match_their_source(default_data):
    d = default_data
    assert np.array_equal(d.label, DIGITS.target[d.source])
    over = d.group == "over"
    clean = (DIGITS.images[d.source[over]] / 16.0).astype(np.float32)
    np.testing.assert_array_equal(d.image[over, 0], clean)


def test_per_class_balance_of_every_group_and_split(odd_data):
    d = odd_data
    assert np.bincount(d.label[_mask(d, "train", "over")], minlength=10).tolist() == [23] * 8 + [22] * 2
    assert np.bincount(d.label[_mask(d, "train", "under")], minlength=10).tolist() == [3] * 5 + [2] * 5
    assert np.bincount(d.label[_mask(d, "test", "under")], minlength=10).tolist() == [2] * 3 + [1] * 7
    # Test D_O is the whole stratified test split: a quarter of each class.
    want = [round(0.25 * c) for c in np.bincount(DIGITS.target)]
    assert np.bincount(d.label[_mask(d, "test", "over")], minlength=10).tolist() == want


def test_per_class_counts_gives_remainder_to_lowest_classes():
    assert per_class_counts(1020).tolist() == [102] * 10
    assert per_class_counts(23).tolist() == [3] * 3 + [2] * 7
    assert per_class_counts(7).tolist() == [1] * 7 + [0] * 3


def test_test_sources_are_disjoint_from_pool_sources(default_data):
    d = default_data
    test_src = set(d.source[d.split == "test"])
    assert not test_src & set(d.source[_mask(d, "train", "over")])
    assert not test_src & set(d.source[_mask(d, "train", "under")])
    # Pool D_O draws distinct digits; the test split is every digit not in the train split.
    pool_over = d.source[_mask(d, "train", "over")]
    assert len(set(pool_over)) == len(pool_over)
    test_over = d.source[_mask(d, "test", "over")]
    assert len(set(test_over)) == len(test_over)


def test_under_samples_differ_from_their_source_but_keep_its_label(default_data):
    d = default_data
    images, labels = load_digit_images(8)
    for split in ("train", "test"):
        m = _mask(d, split, "under")
        src = d.source[m]
        assert np.array_equal(d.label[m], labels[src])
        diff = np.abs(d.image[m, 0] - images[src, 0]).reshape(m.sum(), -1).max(axis=1)
        assert (diff > 2 / 255).all()
        # PixMix changes images a lot on average, not just by a pixel here and there.
        assert np.abs(d.image[m] - images[src]).mean() > 0.05
    # No source is used twice in pool D_U while its class has unused digits (18 per class of ~130).
    pool_under = d.source[_mask(d, "train", "under")]
    assert len(set(pool_under)) == len(pool_under)


def test_under_sources_repeat_only_when_a_class_runs_out():
    d = build_dataset(_spec(size=100, alpha=0.5, test_under=1000))
    src = d.source[_mask(d, "test", "under")]
    per_class = np.bincount(DIGITS.target[src], minlength=10)
    assert per_class.tolist() == [100] * 10
    test_split_size = np.bincount(DIGITS.target[d.source[_mask(d, "test", "over")]], minlength=10)
    # Every test digit is used before any is used a second time.
    for c in range(10):
        used = np.bincount(src[DIGITS.target[src] == c])
        used = used[used > 0]
        assert len(used) == test_split_size[c] and used.max() - used.min() <= 1


def test_no_under_group_when_kind_is_none():
    d = build_dataset(spec_from_dict({"data": {"size": 200, "alpha": 1.0, "under": {"kind": "none"}}}))
    assert set(d.group) == {"over"}
    assert (d.split == "train").sum() == 200


def test_oversized_request_is_a_one_line_spec_error():
    with pytest.raises(SpecError) as err:
        build_dataset(_spec(size=1500, alpha=1.0))
    msg = str(err.value)
    assert "\n" not in msg
    assert "data.size" in msg and "data.alpha" in msg
    assert "150 D_O samples per class" in msg and "class 0" in msg


def test_image_size_resizes_every_image():
    d = build_dataset(_spec(size=100, alpha=0.8, test_under=20, image_size=16))
    assert d.image.shape[1:] == (1, 16, 16)
    assert d.image.dtype == np.float32 and d.image.min() >= 0 and d.image.max() <= 1
    i = int(np.flatnonzero(d.group == "over")[0])
    raw = Image.fromarray((DIGITS.images[d.source[i]] / 16.0).astype(np.float32))
    want = np.asarray(raw.resize((16, 16), Image.Resampling.BILINEAR), dtype=np.float32)
    np.testing.assert_allclose(d.image[i, 0], want.clip(0, 1), atol=1e-6)
    images, _ = load_digit_images(16)
    assert images.shape == (1797, 1, 16, 16)


def test_stratified_split_is_disjoint_complete_and_seeded():
    labels = DIGITS.target
    tr, te = stratified_split(labels, 0.25, np.random.default_rng(0))
    assert not set(tr) & set(te) and len(tr) + len(te) == len(labels)
    assert np.bincount(labels[te]).tolist() == [round(0.25 * c) for c in np.bincount(labels)]
    tr2, te2 = stratified_split(labels, 0.25, np.random.default_rng(0))
    assert np.array_equal(te, te2)
    _, te3 = stratified_split(labels, 0.25, np.random.default_rng(1))
    assert not np.array_equal(te, te3)
    # A tiny fraction still leaves every class one test digit.
    _, te4 = stratified_split(labels, 0.001, np.random.default_rng(0))
    assert np.bincount(labels[te4]).tolist() == [1] * 10


# --- fractals ------------------------------------------------------------------------------------

def test_fractals_are_deterministic_non_constant_and_seeded():
    a = generate_fractals(24, 8, 7)
    b = generate_fractals(24, 8, 7)
    assert a.shape == (24, 8, 8) and a.dtype == np.float32
    assert a.tobytes() == b.tobytes()
    assert a.min() >= 0 and a.max() <= 1
    assert (a.std(axis=(1, 2)) > 0.05).all()
    assert (a.reshape(24, -1).max(axis=1) == 1.0).all()
    # Pictures differ from one another and from another seed's.
    assert len({x.tobytes() for x in a}) == 24
    assert not np.array_equal(a, generate_fractals(24, 8, 8))
    # Fractal i depends on (seed, i) only: a subset renders the same pictures.
    np.testing.assert_array_equal(generate_fractals(24, 8, 7, indices=[5, 2, 5]), a[[5, 2, 5]])
    np.testing.assert_array_equal(generate_fractals(10, 8, 7), a[:10])


def test_no_fractal_is_a_dot_or_a_line():
    a = generate_fractals(300, 8, 7).reshape(300, -1)
    # Degenerate attractors are redrawn: every picture lights up a real part of the frame.
    assert ((a > 0.25).mean(axis=1) >= 0.1).all()
    assert (a.std(axis=1) > 0.1).all()
    dot = np.zeros((64, 64))
    dot[30:32, 30:32] = 1.0
    assert not _acceptable(resize_images(dot[None], 8)[0], dot)
    assert not _acceptable(np.ones((8, 8)), np.ones((64, 64)))


def test_fractals_at_other_sizes():
    big = generate_fractals(4, 64, 3)
    assert big.shape == (4, 64, 64) and (big.std(axis=(1, 2)) > 0.05).all()
    assert generate_fractals(2, 28, 3).shape == (2, 28, 28)


def _write_pngs(folder: Path, colours) -> None:
    folder.mkdir(exist_ok=True)
    for i, c in enumerate(colours):
        Image.new("RGB", (12, 12), c).save(folder / f"f{i:02d}.png")


def test_fractal_dir_uses_the_papers_grayscale_weights(tmp_path):
    _write_pngs(tmp_path, [(200, 100, 50), (0, 0, 255), (255, 255, 255)])
    (tmp_path / "notes.txt").write_text("not an image")
    got = load_fractal_dir(tmp_path, 10, 8)
    assert got.shape == (3, 8, 8) and got.dtype == np.float32
    want = (0.2989 * 200 + 0.5870 * 100 + 0.1140 * 50) / 255
    np.testing.assert_allclose(got[0], want, atol=1e-6)
    # Pillow's own "L" conversion (0.299/0.587/0.114, rounded to uint8) would be off by ~7e-4.
    pillow_l = np.asarray(Image.new("RGB", (1, 1), (200, 100, 50)).convert("L"))[0, 0] / 255
    assert abs(float(got[0, 0, 0]) - pillow_l) > 5e-4
    np.testing.assert_allclose(got[1], 0.1140, atol=1e-6)
    np.testing.assert_allclose(got[2], 0.9999, atol=1e-6)
    # n caps the set: the first images by name.
    np.testing.assert_array_equal(load_fractal_dir(tmp_path, 2, 8), got[:2])


def test_fractal_dir_feeds_the_mixture(tmp_path):
    rng = np.random.default_rng(0)
    tmp_path.mkdir(exist_ok=True)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(tmp_path / f"r{i}.jpg")
    spec = {"data": {"size": 200, "alpha": 0.8, "test_under": 20, "under": {"fractal_dir": str(tmp_path)}}}
    d = build_dataset(spec_from_dict(spec))
    assert _same(d, build_dataset(spec_from_dict(spec)))
    gen = build_dataset(spec_from_dict({"data": {"size": 200, "alpha": 0.8, "test_under": 20}}))
    under = d.group == "under"
    assert np.array_equal(d.source, gen.source)  # the fractal source changes only the mixtures
    assert not np.array_equal(d.image[under], gen.image[under])
    np.testing.assert_array_equal(d.image[~under], gen.image[~under])


def test_missing_or_empty_fractal_dir_is_a_spec_error(tmp_path):
    missing = tmp_path / "no-such-folder"
    with pytest.raises(SpecError) as err:
        build_dataset(spec_from_dict({"data": {"size": 200, "alpha": 0.8,
                                               "under": {"fractal_dir": str(missing)}}}))
    msg = str(err.value)
    assert "\n" not in msg and str(missing) in msg and "data.under.fractal_dir" in msg
    assert "does not exist" in msg
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("x")
    with pytest.raises(SpecError, match="holds no .png/.jpg images"):
        load_fractal_dir(empty, 4, 8)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.png").write_bytes(b"not a png")
    with pytest.raises(SpecError, match="broken.png"):
        load_fractal_dir(bad, 4, 8)


# --- PixMix --------------------------------------------------------------------------------------

def test_pixmix_is_seeded_and_stays_in_range():
    images, _ = load_digit_images(8)
    frac = generate_fractals(1, 8, 0)[0]
    outs = [pixmix(images[i, 0], frac, np.random.default_rng(i)) for i in range(300)]
    again = [pixmix(images[i, 0], frac, np.random.default_rng(i)) for i in range(300)]
    assert all(a.tobytes() == b.tobytes() for a, b in zip(outs, again))
    assert all(o.shape == (8, 8) and o.dtype == np.float32 and 0 <= o.min() and o.max() <= 1 for o in outs)
    # The reference algorithm leaves about one image in seven (visibly) untouched: no mixing round
    # on an un-augmented or no-op-augmented start. The mixture redraws those; pixmix itself must not.
    changed = [np.abs(o - images[i, 0]).max() > 2 / 255 for i, o in enumerate(outs)]
    assert 0.75 < np.mean(changed) < 0.95
    with pytest.raises(ValueError):
        pixmix(images[0, 0], np.zeros((4, 4)), np.random.default_rng(0))


def test_get_ab_ranges():
    rng = np.random.default_rng(0)
    ab = np.array([get_ab(2.0, rng) for _ in range(2000)])
    first = ab[:, 1] > 0  # the (Beta(beta,1), Beta(1,beta)) branch; the other has b < 0
    assert 0.3 < first.mean() < 0.7
    assert ((ab[first, 0] > 0) & (ab[first, 0] <= 1) & (ab[first, 1] <= 1)).all()
    assert ((ab[~first, 0] >= 1) & (ab[~first, 0] <= 2) & (ab[~first, 1] >= -1)).all()


def test_mixing_ops_follow_the_reference_formulas():
    x = np.linspace(0, 1, 64).reshape(8, 8)
    y = x[::-1].copy()
    y[0, 0] = 0.0  # a black fractal pixel: multiply must stay finite even for b < 0
    for seed in range(20):
        a, b = get_ab(2.0, np.random.default_rng(seed))
        np.testing.assert_allclose(add(x, y, 2.0, np.random.default_rng(seed)),
                                   (a * (2 * x - 1) + b * (2 * y - 1) + 1) / 2, rtol=1e-12)
        out = multiply(x, y, 2.0, np.random.default_rng(seed))
        assert np.isfinite(out).all()
        np.testing.assert_allclose(out, (2 * x) ** a * np.maximum(2 * y, 1e-37) ** b / 2, rtol=1e-12)


@pytest.mark.parametrize("op", AUGMENTATIONS, ids=lambda f: f.__name__)
def test_each_base_augmentation_keeps_size_and_mode(op):
    images, _ = load_digit_images(16)
    img = Image.fromarray(np.round(images[3, 0] * 255).astype(np.uint8))
    out = op(img, 4, np.random.default_rng(0))
    assert out.size == img.size and out.mode == "L"


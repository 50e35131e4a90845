"""Real datasets (MNIST, cropped SVHN, CIFAR-10, CIFAR-100) in torchvision's on-disk formats, and
the paper's mixtures built from them.

No internet: every test writes tiny files in each real format (a few images per class) into a
temporary root and reads them back through the same code the experiments use.
"""

from __future__ import annotations

import gzip
import hashlib
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from mia_hpc.data import build_dataset, formats
from mia_hpc.data.formats import load_cifar10, load_cifar100, load_mnist, load_svhn, read_idx, safe_unpickle
from mia_hpc.data.real import convert, filled_counts, to_gray_chw
from mia_hpc.contract.spec import SpecError, spec_from_dict
from mia_hpc.contract.store import StaticData

FIELDS = ("image", "label", "group", "split", "source", "dataset")

# sha256 of the default spec's StaticData (every field, dtype and shape), computed before real
# datasets were added: the embedded digits default must stay byte-identical.
DIGITS_DEFAULT_SHA256 = "e0e8b93a3cb8cd4c9b4e95cf0244800b233b19ed5bd8991d3914b86ce59d29ee"
DIGITS_ODD_SHA256 = "4f9ac4c078e0653032a391eff51b39cda60ad4f364a345751ac977e59b1e92da"
DIGITS_ODD = {"data": {"size": 253, "alpha": 0.9, "test_under": 13, "under": {"n_fractals": 16}}}


def _static_hash(d: StaticData) -> str:
    m = hashlib.sha256()
    for f in FIELDS:
        a = np.ascontiguousarray(getattr(d, f))
        m.update(f.encode())
        m.update(str(a.dtype).encode())
        m.update(str(a.shape).encode())
        m.update(a.tobytes())
    m.update(str(d.n_classes).encode())
    return m.hexdigest()


# --- writers for each real format ---------------------------------------------------------------

def _images(rng, labels, c, h, w):
    return rng.integers(0, 256, size=(len(labels), c, h, w), dtype=np.uint8)


def _labels(per_class, n_classes=10):
    return np.repeat(np.arange(n_classes), per_class).astype(np.int64)


def write_idx(path: Path, arr: np.ndarray, gz: bool = False) -> None:
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    raw = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}i", *arr.shape) + arr.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        with gzip.open(path.with_name(path.name + ".gz"), "wb") as f:
            f.write(raw)
    else:
        path.write_bytes(raw)


def write_mnist(root: Path, split: str, images: np.ndarray, labels: np.ndarray, gz: bool = False) -> None:
    prefix = "train" if split == "train" else "t10k"
    write_idx(root / "MNIST/raw" / f"{prefix}-images-idx3-ubyte", images[:, 0], gz)
    write_idx(root / "MNIST/raw" / f"{prefix}-labels-idx1-ubyte", labels, gz)


def write_svhn(root: Path, split: str, images: np.ndarray, labels: np.ndarray) -> None:
    # SVHN's layout: X (32, 32, 3, N) uint8, y (N, 1) with 10 for the digit 0.
    root.mkdir(parents=True, exist_ok=True)
    y = np.where(labels == 0, 10, labels).astype(np.uint8)[:, None]
    scipy.io.savemat(root / f"{split}_32x32.mat", {"X": np.transpose(images, (2, 3, 1, 0)), "y": y})


def _cifar_pickle(path: Path, images: np.ndarray, labels: np.ndarray, label_key: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    batch = {b"batch_label": b"tiny", label_key: [int(v) for v in labels],
             b"data": images.reshape(len(images), -1), b"filenames": [b"x.png"] * len(labels)}
    path.write_bytes(pickle.dumps(batch, protocol=2))


def write_cifar10(root: Path, split: str, images: np.ndarray, labels: np.ndarray) -> None:
    d = root / "cifar-10-batches-py"
    if split == "test":
        _cifar_pickle(d / "test_batch", images, labels, b"labels")
        return
    for i, idx in enumerate(np.array_split(np.arange(len(labels)), 5), start=1):
        _cifar_pickle(d / f"data_batch_{i}", images[idx], labels[idx], b"labels")


def write_cifar100(root: Path, split: str, images: np.ndarray, labels: np.ndarray) -> None:
    _cifar_pickle(root / "cifar-100-python" / split, images, labels, b"fine_labels")


# Per-class counts of the tiny sets. MNIST's train class 5 is short (as in real MNIST, whose
# classes are unequal), which exercises the fill rule of the D_O draw.
MNIST_TRAIN = [6, 6, 6, 6, 6, 3, 6, 6, 6, 6]
SIZES = {"mnist": (MNIST_TRAIN, 3), "svhn": (3, 2), "cifar10": (5, 3), "cifar100": (3, 2)}


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> tuple[Path, dict]:
    """A data root holding tiny copies of all four datasets; returns it and the arrays written."""
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(7)
    written = {}
    for name, (n_train, n_test) in SIZES.items():
        n_classes = 100 if name == "cifar100" else 10
        for split, per in (("train", n_train), ("test", n_test)):
            labels = _labels(per, n_classes) if np.ndim(per) == 0 else np.repeat(np.arange(10), per)
            labels = labels[rng.permutation(len(labels))]  # not sorted by class, like the real files
            c, side = (1, 28) if name == "mnist" else (3, 32)
            images = _images(rng, labels, c, side, side)
            {"mnist": write_mnist, "svhn": write_svhn, "cifar10": write_cifar10,
             "cifar100": write_cifar100}[name](root, split, images, labels)
            written[name, split] = (images, labels)
    return root, written


def _real_spec(root, source="mnist", kind="svhn", **data):
    under = {"kind": kind, "n_fractals": 8, **data.pop("under", {})}
    base = {"source": source, "root": str(root), "image_size": 28 if source == "mnist" else 32,
            "size": 60, "alpha": 0.8, "test_under": 10, "under": under}
    return spec_from_dict({"data": {**base, **data}})


# --- the readers ---------------------------------------------------------------------------------

@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_round_trip(tmp_path, gz):
    rng = np.random.default_rng(0)
    labels = _labels(3)
    images = _images(rng, labels, 1, 28, 28)
    write_mnist(tmp_path, "train", images, labels, gz=gz)
    got_img, got_lab = load_mnist(tmp_path, "train")
    assert got_img.shape == (30, 1, 28, 28) and got_img.dtype == np.uint8
    np.testing.assert_array_equal(got_img, images)
    np.testing.assert_array_equal(got_lab, labels)
    assert got_lab.dtype == np.int64


def test_idx_header_is_big_endian_with_the_magic_numbers(tmp_path):
    write_idx(tmp_path / "a-images-idx3-ubyte", np.zeros((2, 3, 4), np.uint8))
    raw = (tmp_path / "a-images-idx3-ubyte").read_bytes()
    assert raw[:4] == bytes([0, 0, 8, 3]) and raw[4:16] == bytes([0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4])
    assert read_idx(tmp_path / "a-images-idx3-ubyte").shape == (2, 3, 4)
    (tmp_path / "bad").write_bytes(bytes([0, 0, 0x0D, 1, 0, 0, 0, 1, 0, 0, 0, 0]))  # float idx
    with pytest.raises(SpecError, match="not an unsigned-byte idx file") as err:
        read_idx(tmp_path / "bad")
    assert "\n" not in str(err.value)
    (tmp_path / "short").write_bytes(raw[:-1])
    with pytest.raises(SpecError, match="header says"):
        read_idx(tmp_path / "short")


def test_svhn_mat_round_trip_and_label_10_is_digit_0(tiny_root):
    root, written = tiny_root
    images, labels = load_svhn(root, "train")
    np.testing.assert_array_equal(images, written["svhn", "train"][0])
    np.testing.assert_array_equal(labels, written["svhn", "train"][1])
    raw_y = scipy.io.loadmat(root / "train_32x32.mat")["y"].ravel()
    assert 10 in raw_y and 0 not in raw_y  # the file says 10 ...
    assert (labels == 0).sum() == (raw_y == 10).sum() == 3  # ... the loader says 0
    assert images.shape == (30, 3, 32, 32) and set(labels) == set(range(10))


def test_cifar10_batches_round_trip_in_order(tiny_root):
    root, written = tiny_root
    for split in ("train", "test"):
        images, labels = load_cifar10(root, split)
        np.testing.assert_array_equal(images, written["cifar10", split][0])
        np.testing.assert_array_equal(labels, written["cifar10", split][1])
    assert load_cifar10(root, "train")[0].shape == (50, 3, 32, 32)


def test_cifar100_fine_labels_round_trip(tiny_root):
    root, written = tiny_root
    images, labels = load_cifar100(root, "train")
    np.testing.assert_array_equal(images, written["cifar100", "train"][0])
    np.testing.assert_array_equal(labels, written["cifar100", "train"][1])
    assert labels.max() == 99


def _py2_cifar_batch(data: np.ndarray, labels: list[int]) -> bytes:
    """A batch pickled the way Python 2's cPickle wrote the real CIFAR files (opcode by opcode):
    py2 str (SHORT_BINSTRING/BINSTRING) keys and buffers, numpy.core.multiarray globals."""
    def py2_str(b: bytes) -> bytes:
        return b"U" + bytes([len(b)]) + b

    out = b"\x80\x02}(" + py2_str(b"data")
    out += b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + py2_str(b"b") + b"\x87R"
    out += b"(K\x01" + b"".join(b"M" + struct.pack("<H", d) for d in data.shape) + b"\x86"
    out += (b"cnumpy\ndtype\n" + py2_str(b"u1") + b"K\x00K\x01\x87R(K\x03" + py2_str(b"|")
            + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb")
    out += b"\x89T" + struct.pack("<I", data.nbytes) + data.tobytes() + b"tb"
    out += py2_str(b"labels") + b"](" + b"".join(b"K" + bytes([v]) for v in labels) + b"eu."
    return out


def test_cifar_reads_python2_pickles_like_the_real_files(tmp_path):
    arr = np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072)
    raw = _py2_cifar_batch(arr, [3, 4])
    assert pickle.loads(raw, encoding="latin1")["labels"] == [3, 4]  # what torchvision does
    (tmp_path / "cifar-10-batches-py").mkdir()
    (tmp_path / "cifar-10-batches-py/test_batch").write_bytes(raw)
    images, labels = load_cifar10(tmp_path, "test")
    np.testing.assert_array_equal(images.reshape(2, -1), arr)
    assert labels.tolist() == [3, 4]
    # Files re-pickled by Python 3 (str keys, numpy._core globals) load too.
    (tmp_path / "cifar-10-batches-py/test_batch").write_bytes(pickle.dumps({"data": arr, "labels": [5, 6]}))
    assert load_cifar10(tmp_path, "test")[1].tolist() == [5, 6]


def test_pickles_naming_other_globals_are_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            import os
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    (d / "test_batch").write_bytes(pickle.dumps({b"data": Evil(), b"labels": [0]}))
    with pytest.raises(SpecError, match="not allowed") as err:
        load_cifar10(tmp_path, "test")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "pwned").exists()
    with pytest.raises(pickle.UnpicklingError):
        safe_unpickle(pickle.dumps(eval))


def test_grayscale_uses_the_papers_weights_then_resizes():
    colour = np.array([200, 100, 50], dtype=np.uint8)
    img = np.broadcast_to(colour[None, :, None, None], (2, 3, 32, 32)).copy()
    want = (0.2989 * 200 + 0.5870 * 100 + 0.1140 * 50) / 255.0
    out = convert(img, 1, 28)
    assert out.shape == (2, 1, 28, 28) and out.dtype == np.float32
    np.testing.assert_allclose(out, want, atol=1e-6)
    for i, w in enumerate((0.2989, 0.5870, 0.1140)):
        pure = np.zeros((1, 3, 1, 1), np.uint8)
        pure[0, i] = 255
        np.testing.assert_allclose(to_gray_chw(pure), w, rtol=1e-6)
    # RGB stays RGB at the same size, exactly /255.
    np.testing.assert_array_equal(convert(img, 3, 32), img.astype(np.float32) / np.float32(255))


def test_filled_counts_balance_as_far_as_classes_allow():
    assert filled_counts(30, [10] * 10).tolist() == [3] * 10
    assert filled_counts(23, [10] * 10).tolist() == [3] * 3 + [2] * 7
    assert filled_counts(57, [6, 6, 6, 6, 6, 3, 6, 6, 6, 6]).tolist() == [6] * 5 + [3] + [6] * 4
    assert filled_counts(48, [6, 6, 6, 6, 6, 3, 6, 6, 6, 6]).tolist() == [5] * 5 + [3] + [5] * 4
    assert filled_counts(50, [6, 6, 6, 6, 6, 3, 6, 6, 6, 6]).tolist() == [6, 6] + [5] * 3 + [3] + [5] * 4
    assert filled_counts(5, [0, 9, 9]).tolist() == [0, 3, 2]


# --- the mixtures --------------------------------------------------------------------------------

KINDS = [("mnist", "none"), ("mnist", "pixmix"), ("mnist", "svhn"), ("mnist", "cifar10"), ("mnist", "cifar100"),
         ("cifar10", "none"), ("cifar10", "pixmix"), ("cifar10", "svhn"), ("cifar10", "cifar100")]
UNDER_NAME = {"pixmix": None, "svhn": "svhn", "cifar10": "cifar10", "cifar100": "cifar100"}


def _mask(d, split, group):
    return (d.split == split) & (d.group == group)


@pytest.mark.parametrize("source,kind", KINDS)
def test_every_mixture_builds_balanced_static_data(tiny_root, source, kind):
    root, written = tiny_root
    extra = {"alpha": 1.0, "size": 48, "test_under": 0} if kind == "none" else {}
    spec = _real_spec(root, source, kind, **extra)
    d = build_dataset(spec)
    assert isinstance(d, StaticData)
    c, side = (1, 28) if source == "mnist" else (3, 32)
    assert d.image.shape[1:] == (c, side, side) and d.image.dtype == np.float32
    assert 0.0 <= d.image.min() and d.image.max() <= 1.0
    assert d.n_classes == 10 and d.label.min() >= 0 and d.label.max() <= 9
    n_test_over = len(written[source, "test"][1])
    n = spec.n_over + spec.n_under + n_test_over + spec.data.test_under
    assert len(d.label) == n
    blocks = list(zip(d.split, d.group))
    assert blocks == ([("train", "over")] * spec.n_over + [("train", "under")] * spec.n_under
                      + [("test", "over")] * n_test_over + [("test", "under")] * spec.data.test_under)

    # D_O: labels and clean images are those of the source split (train for the pool, test after).
    for split in ("train", "test"):
        m = _mask(d, split, "over")
        images, labels = written[source, split]
        assert set(d.dataset[m]) == {source}
        np.testing.assert_array_equal(d.label[m], labels[d.source[m]])
        np.testing.assert_array_equal(d.image[m], images[d.source[m]].astype(np.float32) / np.float32(255))
    pool_over = d.source[_mask(d, "train", "over")]
    assert len(set(pool_over)) == len(pool_over)
    # 48 D_O samples: balanced as far as the train split allows (MNIST's class 5 has 3).
    counts = np.bincount(d.label[_mask(d, "train", "over")], minlength=10)
    if source == "mnist":
        assert counts.tolist() == [5] * 5 + [3] + [5] * 4
    else:
        assert counts.tolist() == [5] * 8 + [4] * 2

    if kind == "none":
        assert not (d.group == "under").any()
        return
    for split, n_u, want in (("train", spec.n_under, [2] * 2 + [1] * 8), ("test", 10, [1] * 10)):
        m = _mask(d, split, "under")
        assert m.sum() == n_u
        assert np.bincount(d.label[m], minlength=10).tolist() == want  # balanced per class
        name = UNDER_NAME[kind] or "aug" + source
        assert set(d.dataset[m]) == {name}
        origin = source if kind == "pixmix" else kind
        images, labels = written[origin, split]
        np.testing.assert_array_equal(d.label[m], labels[d.source[m]])  # class i stays label i
        clean = convert(images[d.source[m]], c, side)
        if kind == "pixmix":
            assert (np.abs(d.image[m] - clean).reshape(m.sum(), -1).max(axis=1) > 2 / 255).all()
        else:
            np.testing.assert_array_equal(d.image[m], clean)
            assert len(set(d.source[m])) == m.sum()
    if kind == "cifar100":
        assert d.label[d.dataset == "cifar100"].max() <= 9


def test_cifar100_draws_only_its_first_ten_classes(tiny_root):
    root, written = tiny_root
    d = build_dataset(_real_spec(root, "cifar10", "cifar100", size=40, alpha=0.25, test_under=20))
    for split in ("train", "test"):
        m = _mask(d, split, "under")
        fine = written["cifar100", split][1][d.source[m]]
        assert fine.max() <= 9 and np.array_equal(fine, d.label[m])
        assert np.bincount(d.label[m], minlength=10).tolist() == [3 if split == "train" else 2] * 10
    with pytest.raises(SpecError, match=r"CIFAR-100 classes 0-9 train split\): asks for 40 samples but the split has 30 \(classes 0-9\)"):
        build_dataset(_real_spec(root, "cifar10", "cifar100", size=50, alpha=0.2))


def test_whole_train_split_is_expressible_and_test_over_caps(tiny_root):
    root, written = tiny_root
    n_train = len(written["mnist", "train"][1])  # 57, class 5 short: the paper's "entire MNIST"
    d = build_dataset(_real_spec(root, "mnist", "svhn", size=n_train + 10, alpha=n_train / (n_train + 10),
                                 test_over=20))
    assert sorted(d.source[_mask(d, "train", "over")]) == list(range(n_train))
    m = _mask(d, "test", "over")
    assert np.bincount(d.label[m], minlength=10).tolist() == [2] * 10
    with pytest.raises(SpecError, match="asks for 58 samples but the split has 57"):
        build_dataset(_real_spec(root, "mnist", "svhn", size=68, alpha=58 / 68))


def test_same_spec_same_bytes_and_seed_matters(tiny_root):
    root, _ = tiny_root
    a = build_dataset(_real_spec(root, "cifar10", "pixmix"))
    b = build_dataset(_real_spec(root, "cifar10", "pixmix"))
    assert _static_hash(a) == _static_hash(b)
    c = build_dataset(spec_from_dict({**_real_spec(root, "cifar10", "pixmix").to_dict(), "seed": 1}))
    assert _static_hash(a) != _static_hash(c)


def test_rgb_pixmix_with_a_folder_of_colour_fractals(tiny_root, tmp_path):
    root, _ = tiny_root
    rng = np.random.default_rng(1)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(tmp_path / f"f{i}.png")
    d = build_dataset(_real_spec(root, "cifar10", "pixmix", under={"fractal_dir": str(tmp_path)}))
    under = d.image[d.group == "under"]
    assert under.shape[1:] == (3, 32, 32)
    # Colour survives: the channels of a mixed image differ (a gray PixMix would make them equal).
    assert (np.abs(under[:, 0] - under[:, 1]).max(axis=(1, 2)) > 0).all()
    gray = build_dataset(_real_spec(root, "mnist", "pixmix", under={"fractal_dir": str(tmp_path)}))
    assert gray.image.shape[1:] == (1, 28, 28) and set(gray.dataset[gray.group == "under"]) == {"augmnist"}


# --- errors ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("source,kind,missing,shown", [
    ("mnist", "none", "MNIST/raw/train-images-idx3-ubyte", "(or .gz) not found; stage MNIST there"),
    ("cifar10", "svhn", "cifar-10-batches-py/data_batch_3", "not found; stage CIFAR-10 there"),
    ("mnist", "svhn", "test_32x32.mat", "not found; stage SVHN (cropped digits) there"),
    ("cifar10", "cifar100", "cifar-100-python/train", "not found; stage CIFAR-100 there"),
])
def test_missing_file_is_one_line_naming_the_path(tiny_root, tmp_path, source, kind, missing, shown):
    import shutil

    root, _ = tiny_root
    copy = tmp_path / "root"
    shutil.copytree(root, copy)
    (copy / missing).unlink()
    extra = {"alpha": 1.0, "test_under": 0} if kind == "none" else {}
    with pytest.raises(SpecError) as err:
        build_dataset(_real_spec(copy, source, kind, **extra))
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"data.root: {copy / missing}") and shown in msg
    assert "download=True" in msg and "data.download = true" in msg


def test_download_fetches_only_missing_files(tiny_root, tmp_path, monkeypatch):
    root, written = tiny_root
    calls = []

    def fake_download(r, name, split):  # stands in for torchvision, which needs internet
        calls.append((name, split))
        write_mnist(r, split, *written["mnist", split])

    monkeypatch.setattr(formats, "DOWNLOADER", fake_download)
    d = build_dataset(_real_spec(tmp_path, "mnist", "none", alpha=1.0, size=48, test_under=0, download=True))
    assert calls == [("mnist", "train"), ("mnist", "test")]
    calls.clear()
    again = build_dataset(_real_spec(tmp_path, "mnist", "none", alpha=1.0, size=48, test_under=0, download=True))
    assert calls == [] and _static_hash(d) == _static_hash(again)
    monkeypatch.setattr(formats, "DOWNLOADER", lambda *a: None)  # a download that produced nothing
    with pytest.raises(SpecError, match="svhn|SVHN"):
        build_dataset(_real_spec(tmp_path, "mnist", "svhn", download=True))


@pytest.mark.parametrize("data,match", [
    ({"source": "mnist", "image_size": 28, "alpha": 1.0, "under": {"kind": "none"}}, r"^data\.root: needed for 'mnist'"),
    ({"under": {"kind": "svhn"}}, r"^data\.under\.kind: 'svhn' needs a real data\.source"),
    ({"source": "cifar10", "root": "/d", "image_size": 32, "under": {"kind": "cifar10"}},
     r"^data\.under\.kind: 'cifar10' is D_O itself"),
    ({"source": "mnist", "root": "/d"}, r"^data\.image_size: data\.source 'mnist' is 28x28; set data\.image_size = 28"),
    ({"test_over": 100}, r"^data\.test_over: only for real sources"),
    ({"source": "svhn"}, r"^data\.source: must be one of 'digits', 'mnist', 'cifar10'"),
    ({"download": "yes"}, r"^data\.download: must be true or false"),
])
def test_spec_cross_checks_are_one_line(data, match):
    with pytest.raises(SpecError, match=match) as err:
        spec_from_dict({"data": data})
    assert "\n" not in str(err.value)


def test_paper_group_sizes_are_expressible():
    for source, size, alpha, n_o, n_u in (("mnist", 61000, 0.98360656, 60000, 1000),
                                          ("mnist", 66000, 0.90909091, 60000, 6000),
                                          ("cifar10", 51000, 0.98039216, 50000, 1000)):
        spec = spec_from_dict({"data": {"source": source, "root": "/d", "size": size, "alpha": alpha,
                                        "image_size": 28 if source == "mnist" else 32,
                                        "under": {"kind": "svhn"}}})
        assert (spec.n_over, spec.n_under) == (n_o, n_u)


# --- the defaults stay as they were -------------------------------------------------------------

def test_digits_default_is_byte_identical_to_before_real_datasets():
    spec = spec_from_dict({})
    assert (spec.data.source, spec.data.root, spec.data.download, spec.data.test_over) == ("digits", "", False, 0)
    assert _static_hash(build_dataset(spec)) == DIGITS_DEFAULT_SHA256
    assert _static_hash(build_dataset(spec_from_dict(DIGITS_ODD))) == DIGITS_ODD_SHA256


def test_real_data_side_does_not_import_torch(tiny_root):
    root, _ = tiny_root
    code = ("import sys; from mia_hpc.data import build_dataset; from mia_hpc.contract.spec import spec_from_dict; "
            f"d = build_dataset(spec_from_dict({{'data': {{'source': 'mnist', 'root': {str(root)!r}, "
            "'image_size': 28, 'size': 40, 'alpha': 0.75, 'test_under': 10, "
            "'under': {'kind': 'cifar100'}}})); "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision')]; "
            "assert not bad, bad; print(len(d.label))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(30 + 10 + 30 + 10)

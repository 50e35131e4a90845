"""Mixtures of real datasets (§4, §6 (a) and Appendix C of the paper), read from ``data.root``.

D_O is MNIST or CIFAR-10: the pool's D_O samples are drawn from its train split, its test samples
come from its test split. D_U is one of

=================  ==========================  ==========================================================
``under.kind``     ``dataset`` name            made from
=================  ==========================  ==========================================================
``pixmix``         augmnist / augcifar10       PixMix of D_O images (train split for the pool, test split
                                               for the test samples) with fractals, as for augdigits
``svhn``           svhn                        cropped SVHN (label 10 is the digit 0)
``cifar10``        cifar10                     CIFAR-10 (only under MNIST: the paper's semantic OOD)
``cifar100``       cifar100                    CIFAR-100, its first 10 fine classes (0..9) only
=================  ==========================  ==========================================================

Conversions: D_U takes D_O's shape. Under MNIST (1 x 28 x 28) colour images are converted to
grayscale with the paper's weights 0.2989 R + 0.5870 G + 0.1140 B, then resized bilinearly to
28 x 28; under CIFAR-10 (3 x 32 x 32) they stay RGB. Labels are consistent: class i of every
dataset is label i. Every D_U draw, and the pool D_O draw, is balanced per class.

Group sizes of the paper (``n_over = round(alpha * size)``, ``n_under = size - n_over``):
MNIST + 1000 augMNIST or SVHN: ``size = 61000, alpha = 0.98360656`` (all 60,000 MNIST, whose classes
are not balanced: when a class has fewer images than its balanced share, it gives all it has and
the other classes share the rest); MNIST + 6000 CIFAR-10: ``size = 66000, alpha = 0.90909091``;
CIFAR-10 + 1000 augCIFAR-10 or CIFAR-100: ``size = 51000, alpha = 0.98039216``.

augCIFAR-10 is PixMix in RGB: the reference PixMix works on colour CIFAR images with colour
fractals, and the base augmentations (autocontrast, equalize, posterize, solarize, affine maps)
act on RGB images as they do in the reference. Fractals come from ``under.fractal_dir`` (read in
RGB) or from the procedural generator, whose grayscale densities are coloured per fractal by a
seeded per-channel gamma. augMNIST is PixMix on grayscale with grayscale fractals, as augdigits.

``source`` is the index of a sample's image in its original split (train or test, as its
``split`` says for D_O and real D_U; for augmnist/augcifar10 the split of the D_O image it was
mixed from). Randomness: the digits' purposes are reused for the same roles (102 pool D_O,
103/104 D_U sources, 105 fractals, 106/107 PixMix draws) plus 108 (test D_O) and 109 (fractal
colours); the result depends on the spec and the staged files only.
"""

from __future__ import annotations

import numpy as np

from mia_hpc.data.digits import N_CLASSES, resize_images
from mia_hpc.data.formats import DISPLAY, load_split
from mia_hpc.data.fractals import GRAY_WEIGHTS
from mia_hpc.data.draws import MAX_REDRAWS, MIN_CHANGE, fractal_bank, per_class_counts
from mia_hpc.data.pixmix import pixmix
from mia_hpc.contract.seeding import (PURPOSE_OVER, PURPOSE_TEST_OVER, PURPOSE_UNDER_POOL_MIX, PURPOSE_UNDER_POOL_SOURCES,
                                      PURPOSE_UNDER_TEST_MIX, PURPOSE_UNDER_TEST_SOURCES, rng_for)
from mia_hpc.contract.spec import Spec, SpecError
from mia_hpc.contract.store import StaticData

#: Channels of each D_O: D_U is converted to them.
CHANNELS = {"mnist": 1, "cifar10": 3}


# --- conversions ----------------------------------------------------------------------------------

def to_gray_chw(images: np.ndarray) -> np.ndarray:
    """(N, 3, H, W) uint8 or float in [0, 255] -> (N, H, W) float32 in [0, 1], paper's weights."""
    w = np.asarray(GRAY_WEIGHTS, dtype=np.float64)
    gray = np.tensordot(np.asarray(images, dtype=np.float64), w, axes=([1], [0])) / 255.0
    return gray.clip(0.0, 1.0).astype(np.float32)


def convert(images: np.ndarray, channels: int, size: int) -> np.ndarray:
    """uint8 (N, C, H, W) images -> float32 (N, channels, size, size) in [0, 1].

    3 -> 1 channel: the paper's grayscale, then bilinear resizing; same channels: /255 and, if the
    side differs, bilinear resizing channel by channel. 1 -> 3 channels is not a paper setting.
    """
    c = images.shape[1]
    if channels == 1:
        plane = to_gray_chw(images) if c == 3 else images[:, 0].astype(np.float32) / np.float32(255.0)
        return resize_images(plane, size)[:, None] if plane.shape[1:] != (size, size) else plane[:, None]
    if c != channels:
        raise ValueError(f"convert: cannot make {channels} channels from {c}")
    out = images.astype(np.float32) / np.float32(255.0)
    if out.shape[2:] != (size, size):
        n = len(out)
        out = resize_images(out.reshape(n * c, *out.shape[2:]), size).reshape(n, c, size, size)
    return out


# --- class-balanced draws -------------------------------------------------------------------------

def filled_counts(n: int, available: np.ndarray) -> np.ndarray:
    """Class counts for ``n`` samples, as balanced as the ``available`` per-class counts allow.

    Water filling: every class gets ``min(available, L)`` for the largest level ``L`` that fits,
    and the remainder goes one each to the lowest classes still above ``L``. Equal to
    :func:`per_class_counts` when every class has its share; a short class gives all it has and
    the others stay within one of each other. So ``n`` equal to the whole split takes the whole
    split (the paper's "entire MNIST", whose classes are unequal).
    """
    available = np.asarray(available, dtype=np.int64)
    if n > available.sum():
        raise ValueError(f"filled_counts: {n} samples from {int(available.sum())}")
    lo, hi = 0, int(available.max(initial=0))
    while lo < hi:  # largest L with sum(min(available, L)) <= n
        mid = (lo + hi + 1) // 2
        if int(np.minimum(available, mid).sum()) <= n:
            lo = mid
        else:
            hi = mid - 1
    counts = np.minimum(available, lo)
    rest = n - int(counts.sum())
    counts[np.flatnonzero(available > lo)[:rest]] += 1
    return counts


def draw_balanced(labels: np.ndarray, n: int, rng: np.random.Generator, what: str, *,
                  fill: bool = False) -> np.ndarray:
    """Sorted indices of ``n`` distinct samples with labels 0..9, balanced per class.

    ``fill``: classes short of their share give all they have (:func:`filled_counts`); otherwise a
    short class is a SpecError naming ``what``.
    """
    avail = [np.flatnonzero(labels == c) for c in range(N_CLASSES)]
    sizes = np.array([len(a) for a in avail])
    if n > sizes.sum():
        raise SpecError(f"{what}: asks for {n} samples but the split has {int(sizes.sum())} (classes 0-9); "
                        f"lower {what.split(' ')[0]}")
    counts = filled_counts(n, sizes) if fill else per_class_counts(n)
    chosen = []
    for c, (k, a) in enumerate(zip(counts, avail)):
        if k > len(a):
            raise SpecError(f"{what}: asks for {k} samples of class {c} but the split has {len(a)} "
                            f"(balanced per class); lower {what.split(' ')[0]}")
        chosen.append(a if k == len(a) else rng.choice(a, size=int(k), replace=False))
    return np.sort(np.concatenate(chosen)).astype(np.int64)


# --- PixMix on real images ------------------------------------------------------------------------

def _mix(images: np.ndarray, sources: np.ndarray, fractals: np.ndarray, picks: np.ndarray, spec: Spec,
         rng: np.random.Generator) -> np.ndarray:
    """PixMix each (C, H, W) source image with its fractal (in HWC for C = 3, as PIL wants)."""
    under = spec.data.under
    out = np.empty((len(sources), *images.shape[1:]), dtype=np.float32)
    for i, (src, pick) in enumerate(zip(sources, picks)):
        clean = images[src, 0] if images.shape[1] == 1 else np.moveaxis(images[src], 0, -1)
        for _ in range(MAX_REDRAWS):
            mixed = pixmix(clean, fractals[pick], rng, mixing_severity=under.mixing_severity,
                           aug_severity=under.aug_severity, iterations=under.iterations)
            if float(np.abs(mixed - clean).max()) > MIN_CHANGE:
                break
        out[i] = mixed[None] if images.shape[1] == 1 else np.moveaxis(mixed, -1, 0)
    return out


def _pixmix_sources(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Balanced source images for ``n`` PixMix samples, each used once before any is reused."""
    chosen = []
    for c, k in enumerate(per_class_counts(n)):
        avail = np.flatnonzero(labels == c)
        if k and not len(avail):
            raise SpecError(f"data.under: no image of class {c} to PixMix; re-stage the dataset")
        reps = -(-int(k) // max(len(avail), 1))
        chosen.append(np.concatenate([rng.permutation(avail) for _ in range(reps)])[:k] if k else avail[:0])
    return np.sort(np.concatenate(chosen), kind="stable").astype(np.int64)


# --- the mixture ----------------------------------------------------------------------------------

def build_real_dataset(spec: Spec) -> StaticData:
    """Pool D_O, pool D_U, test D_O, test D_U of a real-data spec, in that order (as the digits).

    Raises
    ------
    SpecError
        A file is missing or malformed (one line naming the path and how to stage it), or a class
        of a split is too small for the requested sizes.
    """
    data = spec.data
    root, dl = data.root, data.download
    name, kind = data.source, data.under.kind
    channels, size = CHANNELS[name], data.image_size

    def load(ds: str, split: str) -> tuple[np.ndarray, np.ndarray]:
        return load_split(root, ds, split, dl)

    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, str, str, str]] = []  # img, label, src, g, s, ds
    tr_img, tr_lab = load(name, "train")
    over_src = draw_balanced(tr_lab, spec.n_over, rng_for(spec.seed, PURPOSE_OVER),
                             f"data.size/data.alpha ({DISPLAY[name]} train split)", fill=True)
    parts.append((convert(tr_img[over_src], channels, size), tr_lab[over_src], over_src, "over", "train", name))

    te_img, te_lab = load(name, "test")
    if data.test_over:
        test_src = draw_balanced(te_lab, data.test_over, rng_for(spec.seed, PURPOSE_TEST_OVER),
                                 f"data.test_over ({DISPLAY[name]} test split)", fill=True)
    else:
        test_src = np.arange(len(te_lab), dtype=np.int64)
    test_over = (convert(te_img[test_src], channels, size), te_lab[test_src], test_src, "over", "test", name)

    n_pool = spec.n_under if kind != "none" else 0
    n_test = data.test_under if kind != "none" else 0
    test_under = None
    if kind == "pixmix" and (n_pool or n_test):
        under_name = "aug" + name
        pool_src = _pixmix_sources(tr_lab, n_pool, rng_for(spec.seed, PURPOSE_UNDER_POOL_SOURCES))
        t_src = _pixmix_sources(te_lab, n_test, rng_for(spec.seed, PURPOSE_UNDER_TEST_SOURCES))
        rngs = [rng_for(spec.seed, PURPOSE_UNDER_POOL_MIX), rng_for(spec.seed, PURPOSE_UNDER_TEST_MIX)]
        bank, (pool_picks, test_picks) = fractal_bank(spec, rngs, [n_pool, n_test], channels)
        # Only the images used are converted: PixMix works on the D_O-shaped float images.
        pool_clean = convert(tr_img[pool_src], channels, size)
        test_clean = convert(te_img[t_src], channels, size)
        pool_img = _mix(pool_clean, np.arange(n_pool), bank, pool_picks, spec, rngs[0])
        test_img = _mix(test_clean, np.arange(n_test), bank, test_picks, spec, rngs[1])
        parts.append((pool_img, tr_lab[pool_src], pool_src, "under", "train", under_name))
        test_under = (test_img, te_lab[t_src], t_src, "under", "test", under_name)
    elif kind != "none" and (n_pool or n_test):
        shown = DISPLAY[kind] + (" classes 0-9" if kind == "cifar100" else "")
        if n_pool:
            u_img, u_lab = load(kind, "train")
            src = draw_balanced(u_lab, n_pool, rng_for(spec.seed, PURPOSE_UNDER_POOL_SOURCES),
                                f"data.size/data.alpha ({shown} train split)")
            parts.append((convert(u_img[src], channels, size), u_lab[src], src, "under", "train", kind))
            del u_img
        if n_test:
            u_img, u_lab = load(kind, "test")
            src = draw_balanced(u_lab, n_test, rng_for(spec.seed, PURPOSE_UNDER_TEST_SOURCES),
                                f"data.test_under ({shown} test split)")
            test_under = (convert(u_img[src], channels, size), u_lab[src], src, "under", "test", kind)
    parts.append(test_over)
    if test_under is not None:
        parts.append(test_under)

    labels = np.concatenate([p[1] for p in parts]).astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= N_CLASSES):  # pragma: no cover - draws keep 0..9
        raise SpecError(f"data: labels outside 0..{N_CLASSES - 1}; re-stage the datasets")
    return StaticData(
        image=np.ascontiguousarray(np.concatenate([p[0] for p in parts]), dtype=np.float32),
        label=labels,
        group=np.concatenate([np.full(len(p[2]), p[3]) for p in parts]).astype("<U5"),
        split=np.concatenate([np.full(len(p[2]), p[4]) for p in parts]).astype("<U5"),
        source=np.concatenate([p[2] for p in parts]).astype(np.int64),
        dataset=np.concatenate([np.full(len(p[2]), p[5]) for p in parts]).astype("<U10"),
        n_classes=N_CLASSES,
    )

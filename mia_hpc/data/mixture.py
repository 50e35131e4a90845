"""The mixture D_tr = D_O u D_U of §4 of the paper, with its held-out test samples.

D_O ("digits") is a class-balanced subset of the digits train split, standing in for MNIST.
D_U ("augdigits") stands in for augMNIST (Appendix C, item 5): PixMix of digit images with
fractals. As in the paper, a D_U sample's source image may also appear, clean, in D_O.

The result depends on the spec only: every random choice has its own generator
``rng_for(spec.seed, PURPOSE)`` (see :mod:`mia_hpc.contract.seeding`), so adding a draw to one use never
shifts the draws of another.
"""

from __future__ import annotations

import numpy as np

from mia_hpc.data.digits import N_CLASSES, load_digit_images, stratified_split
from mia_hpc.data.fractals import (generate_fractals, list_fractal_files, load_fractal_files,
                                   load_fractal_files_rgb)
from mia_hpc.data.pixmix import pixmix
from mia_hpc.contract.seeding import rng_for, seed_sequence
from mia_hpc.contract.spec import Spec, SpecError
from mia_hpc.contract.store import StaticData

# Purposes 1-99 belong to training (keep masks, init, order); the data side uses 101+.
PURPOSE_SPLIT = 101  # train/test split of the digits
PURPOSE_OVER = 102  # which train digits form D_O
PURPOSE_UNDER_POOL_SOURCES = 103  # source digits of the pool D_U samples
PURPOSE_UNDER_TEST_SOURCES = 104  # source digits of the test D_U samples
PURPOSE_FRACTALS = 105  # the procedural fractal set
PURPOSE_FRACTAL_COLOUR = 109  # per-fractal channel gammas of generated fractals for RGB PixMix

_GAMMA_RANGE = (0.5, 2.0)  # channel gammas of generated fractals coloured for RGB PixMix
PURPOSE_UNDER_POOL_MIX = 106  # fractal choice and PixMix draws of the pool D_U samples
PURPOSE_UNDER_TEST_MIX = 107  # fractal choice and PixMix draws of the test D_U samples

OVER_NAME = "digits"
UNDER_NAME = "augdigits"

# A D_U sample must differ from its source by more than the uint8 round trip PixMix makes, else it
# is a clean digit: a duplicate of D_O rather than an under-represented sample.
_MIN_CHANGE = 2.0 / 255.0
_MAX_REDRAWS = 100


def per_class_counts(n: int, n_classes: int = N_CLASSES) -> np.ndarray:
    """Balanced class counts for ``n`` samples: ``n // n_classes`` each, the remainder to the lowest."""
    counts = np.full(n_classes, n // n_classes, dtype=np.int64)
    counts[: n % n_classes] += 1
    return counts


def _draw_over(labels: np.ndarray, train_idx: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Class-balanced draw of ``n`` distinct train digits, sorted; SpecError if a class runs short."""
    chosen = []
    for c, k in enumerate(per_class_counts(n)):
        avail = train_idx[labels[train_idx] == c]
        if k > len(avail):
            raise SpecError(
                f"data.size/data.alpha: asks for {k} D_O samples per class but the digits train split has "
                f"{len(avail)} for class {c}; lower data.size or data.alpha (or data.test_fraction)")
        chosen.append(rng.choice(avail, size=k, replace=False))
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def _draw_under_sources(labels: np.ndarray, idx: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Class-balanced source digits for ``n`` D_U samples, drawn from ``idx``.

    Sources are dealt from fresh random permutations of the class, so no digit is used twice
    before every digit of its class has been used once: repeats appear only when a class is asked
    for more samples than it has (the paper's augMNIST holds each MNIST image at most once).
    """
    chosen = []
    for c, k in enumerate(per_class_counts(n)):
        avail = idx[labels[idx] == c]
        reps = -(-int(k) // len(avail))
        chosen.append(np.concatenate([rng.permutation(avail) for _ in range(reps)])[:k] if k else avail[:0])
    return np.sort(np.concatenate(chosen), kind="stable").astype(np.int64)


def fractal_bank(spec: Spec, rngs: list[np.random.Generator], counts: list[int],
                 channels: int = 1) -> tuple[np.ndarray, list[np.ndarray]]:
    """Fractals (F, H, W), or (F, H, W, 3) for RGB PixMix, for the D_U samples, and each sample's index.

    Only the fractals actually picked are rendered or read: with many fractals (or a large
    folder) most are never used by a few hundred samples. Generated fractals are coloured for RGB
    with seeded per-fractal channel gammas.
    """
    under = spec.data.under
    size = spec.data.image_size
    if under.fractal_dir:
        files = list_fractal_files(under.fractal_dir)[: under.n_fractals]
        n_set = len(files)
    else:
        files, n_set = [], under.n_fractals
    picks = [rng.integers(n_set, size=k) for rng, k in zip(rngs, counts)]
    used, inverse = np.unique(np.concatenate(picks), return_inverse=True)
    if files and channels == 1:
        bank = load_fractal_files([files[i] for i in used], size)
    elif files:
        bank = load_fractal_files_rgb([files[i] for i in used], size)
    else:
        bank = generate_fractals(n_set, size, seed_sequence(spec.seed, PURPOSE_FRACTALS), indices=used)
        if channels == 3:
            gammas = np.stack([rng_for(spec.seed, PURPOSE_FRACTAL_COLOUR, int(i)).uniform(*_GAMMA_RANGE, size=3)
                               for i in used]) if len(used) else np.zeros((0, 3))
            bank = (bank[..., None].astype(np.float64) ** gammas[:, None, None, :]).astype(np.float32)
    return bank, np.split(inverse, np.cumsum(counts)[:-1])


def _mix(images: np.ndarray, sources: np.ndarray, fractals: np.ndarray, picks: np.ndarray,
         spec: Spec, rng: np.random.Generator) -> np.ndarray:
    """PixMix each source digit with its fractal; redraw the rare outputs equal to the clean digit."""
    under = spec.data.under
    out = np.empty((len(sources), *images.shape[1:]), dtype=np.float32)
    for i, (src, pick) in enumerate(zip(sources, picks)):
        clean = images[src, 0]
        for _ in range(_MAX_REDRAWS):
            # The reference algorithm returns the clean image (re-quantised) in about one draw in
            # seven: zero mixing rounds on a start that is un-augmented, or augmented by a no-op
            # such as autocontrast of a digit that already spans [0, 1].
            mixed = pixmix(clean, fractals[pick], rng, mixing_severity=under.mixing_severity,
                           aug_severity=under.aug_severity, iterations=under.iterations)
            if float(np.abs(mixed - clean).max()) > _MIN_CHANGE:
                break
        out[i, 0] = mixed
    return out


def build_dataset(spec: Spec) -> StaticData:
    """All samples of an experiment: pool D_O, pool D_U, test D_O, test D_U, in that order.

    Parameters
    ----------
    spec : Spec
        Uses ``seed`` and ``data`` (``size``/``alpha`` via ``n_over``/``n_under``, ``test_fraction``,
        ``test_under``, ``image_size``, ``under``).

    Returns
    -------
    StaticData
        ``split`` is "train" for pool samples and "test" otherwise; ``group`` "over"/"under";
        ``source`` indexes ``sklearn.datasets.load_digits()``; ``dataset`` "digits"/"augdigits".

    Raises
    ------
    SpecError
        A class of the digits train split is too small for the D_O request, or ``fractal_dir`` is
        missing, empty or holds an unreadable image.
    """
    if spec.selection.kind != "none":  # staged: the pool is the oracle's, restricted by the selection stage
        raise SpecError(f"selection.kind: {spec.selection.kind!r} is a staged spec; its data is made by its stages "
                        "('mia-hpc run' / 'mia-hpc submit', see mia_hpc.stages), not in one step")
    data = spec.data
    if data.source != "digits":  # real datasets from data.root: MNIST, CIFAR-10 and their D_U
        from mia_hpc.data.real import build_real_dataset  # imported here: real.py imports this module

        return build_real_dataset(spec)
    images, labels = load_digit_images(data.image_size)
    train_idx, test_idx = stratified_split(labels, data.test_fraction, rng_for(spec.seed, PURPOSE_SPLIT))

    over_src = _draw_over(labels, train_idx, spec.n_over, rng_for(spec.seed, PURPOSE_OVER))
    parts = [(images[over_src], over_src, "over", "train", OVER_NAME)]

    n_under_pool = spec.n_under if data.under.kind != "none" else 0
    n_under_test = data.test_under if data.under.kind != "none" else 0
    under_parts: list[tuple] = []
    if n_under_pool or n_under_test:
        pool_src = _draw_under_sources(labels, train_idx, n_under_pool,
                                       rng_for(spec.seed, PURPOSE_UNDER_POOL_SOURCES))
        test_src = _draw_under_sources(labels, test_idx, n_under_test,
                                       rng_for(spec.seed, PURPOSE_UNDER_TEST_SOURCES))
        mix_rngs = [rng_for(spec.seed, PURPOSE_UNDER_POOL_MIX), rng_for(spec.seed, PURPOSE_UNDER_TEST_MIX)]
        bank, (pool_picks, test_picks) = fractal_bank(spec, mix_rngs, [n_under_pool, n_under_test])
        pool_img = _mix(images, pool_src, bank, pool_picks, spec, mix_rngs[0])
        test_img = _mix(images, test_src, bank, test_picks, spec, mix_rngs[1])
        parts.append((pool_img, pool_src, "under", "train", UNDER_NAME))
        under_parts.append((test_img, test_src, "under", "test", UNDER_NAME))
    parts.append((images[test_idx], test_idx, "over", "test", OVER_NAME))
    parts.extend(under_parts)

    return StaticData(
        image=np.ascontiguousarray(np.concatenate([p[0] for p in parts]), dtype=np.float32),
        label=np.concatenate([labels[p[1]] for p in parts]).astype(np.int64),
        group=np.concatenate([np.full(len(p[1]), p[2]) for p in parts]).astype("<U5"),
        split=np.concatenate([np.full(len(p[1]), p[3]) for p in parts]).astype("<U5"),
        source=np.concatenate([p[1] for p in parts]).astype(np.int64),
        dataset=np.concatenate([np.full(len(p[1]), p[4]) for p in parts]).astype("<U9"),
        n_classes=N_CLASSES,
    )

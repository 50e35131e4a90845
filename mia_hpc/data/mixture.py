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
from mia_hpc.data.draws import MAX_REDRAWS, MIN_CHANGE, fractal_bank, per_class_counts
from mia_hpc.data.pixmix import pixmix
from mia_hpc.data.real import build_real_dataset
from mia_hpc.contract.seeding import (PURPOSE_OVER, PURPOSE_SPLIT, PURPOSE_UNDER_POOL_MIX, PURPOSE_UNDER_POOL_SOURCES,
                                      PURPOSE_UNDER_TEST_MIX, PURPOSE_UNDER_TEST_SOURCES, rng_for)
from mia_hpc.contract.spec import Spec, SpecError
from mia_hpc.contract.store import StaticData

OVER_NAME = "digits"
UNDER_NAME = "augdigits"


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


def _mix(images: np.ndarray, sources: np.ndarray, fractals: np.ndarray, picks: np.ndarray,
         spec: Spec, rng: np.random.Generator) -> np.ndarray:
    """PixMix each source digit with its fractal; redraw the rare outputs equal to the clean digit."""
    under = spec.data.under
    out = np.empty((len(sources), *images.shape[1:]), dtype=np.float32)
    for i, (src, pick) in enumerate(zip(sources, picks)):
        clean = images[src, 0]
        for _ in range(MAX_REDRAWS):
            # The reference algorithm returns the clean image (re-quantised) in about one draw in
            # seven: zero mixing rounds on a start that is un-augmented, or augmented by a no-op
            # such as autocontrast of a digit that already spans [0, 1].
            mixed = pixmix(clean, fractals[pick], rng, mixing_severity=under.mixing_severity,
                           aug_severity=under.aug_severity, iterations=under.iterations)
            if float(np.abs(mixed - clean).max()) > MIN_CHANGE:
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
                        "('mia-hpc run' / 'mia-hpc submit', see mia_hpc.pipeline.stages), not in one step")
    data = spec.data
    if data.source != "digits":  # real datasets from data.root: MNIST, CIFAR-10 and their D_U
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

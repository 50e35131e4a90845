"""What both mixtures (digits in :mod:`~mia_hpc.data.mixture`, real datasets in
:mod:`~mia_hpc.data.real`) draw with: balanced class counts, the fractal bank of the D_U samples
and the PixMix redraw rule."""

from __future__ import annotations

import numpy as np

from mia_hpc.contract.seeding import PURPOSE_FRACTAL_COLOUR, PURPOSE_FRACTALS, rng_for, seed_sequence
from mia_hpc.contract.spec import Spec
from mia_hpc.data.digits import N_CLASSES
from mia_hpc.data.fractals import generate_fractals, list_fractal_files, load_fractal_files, load_fractal_files_rgb

_GAMMA_RANGE = (0.5, 2.0)  # channel gammas of generated fractals coloured for RGB PixMix

# A D_U sample must differ from its source by more than the uint8 round trip PixMix makes, else it
# is a clean digit: a duplicate of D_O rather than an under-represented sample.
MIN_CHANGE = 2.0 / 255.0
MAX_REDRAWS = 100


def per_class_counts(n: int, n_classes: int = N_CLASSES) -> np.ndarray:
    """Balanced class counts for ``n`` samples: ``n // n_classes`` each, the remainder to the lowest."""
    counts = np.full(n_classes, n // n_classes, dtype=np.int64)
    counts[: n % n_classes] += 1
    return counts


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

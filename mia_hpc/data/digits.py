"""The over-represented source: scikit-learn's embedded 8x8 digits, and its stratified split.

scikit-learn ships the 1797 digits inside the wheel, so nothing is downloaded, ever: the suite runs
on compute nodes without internet access. It stands in for the paper's MNIST.
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image

N_CLASSES = 10
NATIVE_SIZE = 8
_MAX_INTENSITY = 16.0  # load_digits stores counts of on-pixels in 4x4 blocks: 0..16


@functools.lru_cache(maxsize=1)
def _raw_digits() -> tuple[np.ndarray, np.ndarray]:
    # Imported lazily: sklearn.datasets costs ~1 s to import and only this function needs it.
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = (np.asarray(bunch.images, dtype=np.float32) / _MAX_INTENSITY).clip(0.0, 1.0)
    labels = np.asarray(bunch.target, dtype=np.int64)
    # Cached arrays are shared between callers: make accidental in-place edits fail loudly.
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """Resize a stack of single-channel float images with Pillow's bilinear filter.

    Parameters
    ----------
    images : (N, H, W) float array in [0, 1]
    size : int
        Target side length.

    Returns
    -------
    (N, size, size) float32 array in [0, 1]; a float32 copy when already that size.
    """
    images = np.asarray(images, dtype=np.float32)
    if images.shape[1:] == (size, size):
        return images.copy()
    out = np.empty((len(images), size, size), dtype=np.float32)
    for i, img in enumerate(images):
        # Mode "F" (32-bit float) keeps full precision; going through uint8 would quantise twice.
        pil = Image.fromarray(np.ascontiguousarray(img, dtype=np.float32))
        out[i] = np.asarray(pil.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32)
    return out.clip(0.0, 1.0)


def load_digit_images(image_size: int = NATIVE_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """All 1797 digits as images, in load_digits() order (the order ``source`` indexes).

    Parameters
    ----------
    image_size : int
        Side length of the returned images; bilinear resizing when it is not 8.

    Returns
    -------
    images : (1797, 1, image_size, image_size) float32 in [0, 1]
    labels : (1797,) int64 digit labels 0..9
    """
    images, labels = _raw_digits()
    if image_size != NATIVE_SIZE:
        images = resize_images(images, image_size)
    return np.array(images, dtype=np.float32)[:, None], labels.copy()


def stratified_split(labels: np.ndarray, test_fraction: float,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Split sample indices into train and test, class by class.

    Each class sends ``round(test_fraction * n_c)`` of its ``n_c`` samples to the test split, clamped
    to [1, n_c - 1] so that both splits hold every class (per-class balanced draws need that).

    Parameters
    ----------
    labels : (N,) int
    test_fraction : float in (0, 1)
    rng : numpy Generator
        The only source of randomness.

    Returns
    -------
    train_idx, test_idx : sorted int64 index arrays, disjoint, together covering range(N).
    """
    labels = np.asarray(labels)
    train, test = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        n_test = int(round(test_fraction * len(idx)))
        n_test = min(max(n_test, 1), len(idx) - 1) if len(idx) > 1 else 0
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)).astype(np.int64), np.sort(np.concatenate(test)).astype(np.int64)

"""PixMix (Hendrycks et al., CVPR 2022) for grayscale or RGB images, as used to make augMNIST/augCIFAR-10.

A port of the reference implementation (github.com/andyzoujm/pixmix: ``cifar.py::pixmix`` and
``pixmix_utils.py``) with two changes that do not alter the algorithm:

* every random draw comes from a passed-in ``numpy.random.Generator`` instead of the global
  ``np.random`` state, so a dataset is a pure function of its spec;
* geometric operations use the image's own side length where the reference hard-codes
  ``IMAGE_SIZE = 32`` (the reference notes that other image sizes "should change this value").

The final ``normalize`` of the reference (to [-1, 1] for the network) is left out: the suite stores
images in [0, 1].
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image, ImageOps

Augmentation = Callable[[Image.Image, int, np.random.Generator], Image.Image]


# --- severity to magnitude, as in AugMix/PixMix ---------------------------------------------------

def _int_parameter(level: float, maxval: float) -> int:
    """Scale a level in [0, 10] to an int in [0, maxval]."""
    return int(level * maxval / 10)


def _float_parameter(level: float, maxval: float) -> float:
    """Scale a level in [0, 10] to a float in [0, maxval]."""
    return float(level) * maxval / 10.0


def _sample_level(n: int, rng: np.random.Generator) -> float:
    # Severity is an upper bound: each application draws its own strength below it.
    return float(rng.uniform(low=0.1, high=n))


# --- base augmentations (PIL "L" images) ----------------------------------------------------------

def autocontrast(img: Image.Image, _severity: int, _rng: np.random.Generator) -> Image.Image:
    """Stretch the intensity range to the full [0, 255]."""
    return ImageOps.autocontrast(img)


def equalize(img: Image.Image, _severity: int, _rng: np.random.Generator) -> Image.Image:
    """Histogram equalisation."""
    return ImageOps.equalize(img)


def posterize(img: Image.Image, severity: int, rng: np.random.Generator) -> Image.Image:
    """Keep 4 - level bits per pixel (level up to 4 * severity / 10)."""
    level = _int_parameter(_sample_level(severity, rng), 4)
    return ImageOps.posterize(img, 4 - level)


def rotate(img: Image.Image, severity: int, rng: np.random.Generator) -> Image.Image:
    """Rotate by up to 30 * severity / 10 degrees, either way."""
    degrees = _int_parameter(_sample_level(severity, rng), 30)
    if rng.uniform() > 0.5:
        degrees = -degrees
    return img.rotate(degrees, resample=Image.Resampling.BILINEAR)


def solarize(img: Image.Image, severity: int, rng: np.random.Generator) -> Image.Image:
    """Invert pixels above a threshold of 256 - level (level up to 256 * severity / 10)."""
    level = _int_parameter(_sample_level(severity, rng), 256)
    return ImageOps.solarize(img, 256 - level)


def _affine(img: Image.Image, coeffs: tuple[float, ...]) -> Image.Image:
    return img.transform(img.size, Image.Transform.AFFINE, coeffs, resample=Image.Resampling.BILINEAR)


def shear_x(img: Image.Image, severity: int, rng: np.random.Generator) -> Image.Image:
    """Horizontal shear by up to 0.3 * severity / 10, either way."""
    level = _float_parameter(_sample_level(severity, rng), 0.3)
    if rng.uniform() > 0.5:
        level = -level
    return _affine(img, (1, level, 0, 0, 1, 0))


def shear_y(img: Image.Image, severity: int, rng: np.random.Generator) -> Image.Image:
    """Vertical shear by up to 0.3 * severity / 10, either way."""
    level = _float_parameter(_sample_level(severity, rng), 0.3)
    if rng.uniform() > 0.5:
        level = -level
    return _affine(img, (1, 0, 0, level, 1, 0))


def translate_x(img: Image.Image, severity: int, rng: np.random.Generator) -> Image.Image:
    """Horizontal shift by up to (width / 3) * severity / 10 pixels, either way."""
    level = _int_parameter(_sample_level(severity, rng), img.size[0] / 3)
    if rng.random() > 0.5:
        level = -level
    return _affine(img, (1, 0, level, 0, 1, 0))


def translate_y(img: Image.Image, severity: int, rng: np.random.Generator) -> Image.Image:
    """Vertical shift by up to (height / 3) * severity / 10 pixels, either way."""
    level = _int_parameter(_sample_level(severity, rng), img.size[1] / 3)
    if rng.random() > 0.5:
        level = -level
    return _affine(img, (1, 0, 0, 0, 1, level))


#: The reference's default operator list (``pixmix_utils.augmentations``); the ``--all-ops`` extras
#: (color, contrast, brightness, sharpness) overlap with the corruption benchmarks and are left out.
AUGMENTATIONS: tuple[Augmentation, ...] = (
    autocontrast, equalize, posterize, rotate, solarize, shear_x, shear_y, translate_x, translate_y,
)


# --- mixing ---------------------------------------------------------------------------------------

def get_ab(beta: float, rng: np.random.Generator) -> tuple[float, float]:
    """Mixing weights (a, b): either both in (0, 1), or a in (1, 2) with b in (-1, 0)."""
    if rng.random() < 0.5:
        a = np.float32(rng.beta(beta, 1))
        b = np.float32(rng.beta(1, beta))
    else:
        a = 1 + np.float32(rng.beta(1, beta))
        b = -np.float32(rng.beta(1, beta))
    return float(a), float(b)


def add(img1: np.ndarray, img2: np.ndarray, beta: float, rng: np.random.Generator) -> np.ndarray:
    """Weighted sum of the two images, taken on their [-1, 1]-scaled values."""
    a, b = get_ab(beta, rng)
    img1, img2 = img1 * 2 - 1, img2 * 2 - 1
    out = a * img1 + b * img2
    return (out + 1) / 2


def multiply(img1: np.ndarray, img2: np.ndarray, beta: float, rng: np.random.Generator) -> np.ndarray:
    """Weighted geometric mean of the two images, taken on their 2x-scaled values."""
    a, b = get_ab(beta, rng)
    img1, img2 = img1 * 2, img2 * 2
    # b may be negative: the clip keeps 0 ** b finite, exactly as the reference does.
    out = (img1 ** a) * (np.clip(img2, 1e-37, None) ** b)
    return out / 2


MIXINGS = (add, multiply)


# --- PixMix ---------------------------------------------------------------------------------------

def _to_pil(img: np.ndarray) -> Image.Image:
    return Image.fromarray(np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8))


def _to_float(img: Image.Image) -> np.ndarray:
    # The reference's ToTensor: uint8 / 255.
    return np.asarray(img, dtype=np.float64) / 255.0


def augment(img: Image.Image, severity: int, rng: np.random.Generator) -> Image.Image:
    """One base augmentation, chosen uniformly, applied at ``severity``."""
    op = AUGMENTATIONS[int(rng.integers(len(AUGMENTATIONS)))]
    return op(img.copy(), severity, rng)


def pixmix(image: np.ndarray, mixing_pic: np.ndarray, rng: np.random.Generator, *,
           mixing_severity: float = 2.0, aug_severity: int = 4, iterations: int = 4) -> np.ndarray:
    """PixMix one grayscale (H, W) or RGB (H, W, 3) image with one fractal picture of its shape.

    Parameters
    ----------
    image : (H, W) or (H, W, 3) float in [0, 1]
        The clean image.
    mixing_pic : float in [0, 1], the shape of ``image``
        The fractal it may be mixed with.
    rng : numpy Generator
        The only source of randomness.
    mixing_severity : float
        ``beta`` of the mixing weights (the paper: 2).
    aug_severity : int
        Severity of the base augmentations, 1..10 (the paper: 4).
    iterations : int
        ``k``: the number of mixing rounds is drawn from 0..k (the paper: 4).

    Returns
    -------
    float32 in [0, 1], the shape of ``image``.
    """
    image = np.asarray(image, dtype=np.float64)
    mixing_pic = np.asarray(mixing_pic, dtype=np.float64)
    if image.shape != mixing_pic.shape or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise ValueError(f"pixmix: need two (H, W) or two (H, W, 3) images of one shape, got {image.shape} and "
                         f"{mixing_pic.shape}")
    orig = _to_pil(image)
    if rng.random() < 0.5:
        mixed = _to_float(augment(orig, aug_severity, rng))
    else:
        mixed = _to_float(orig)
    for _ in range(int(rng.integers(iterations + 1))):
        if rng.random() < 0.5:
            other = _to_float(augment(orig, aug_severity, rng))
        else:
            other = mixing_pic
        op = MIXINGS[int(rng.integers(len(MIXINGS)))]
        mixed = np.clip(op(mixed, other, mixing_severity, rng), 0.0, 1.0)
    return mixed.astype(np.float32)

"""Fractal pictures for PixMix: a seeded procedural generator, or a folder of images.

PixMix mixes training images with fractals (the paper used the 14,248 fractal images shipped with
PixMix). Those cannot be downloaded at run time, so by default we draw our own: attractors of
random iterated function systems (IFS) rendered with the chaos game. A folder of real fractal
images can be used instead (``data.under.fractal_dir``).

Fractal ``i`` of a generator seed depends only on (seed, i), not on how many fractals are asked
for or which others are rendered, so callers may render just the ones they use.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from mia_hpc.data.digits import resize_images
from mia_hpc.contract.spec import SpecError

#: Grayscale weights of the paper (footnote 3 of §4); Pillow's "L" mode uses 0.299/0.587/0.114.
GRAY_WEIGHTS = (0.2989, 0.5870, 0.1140)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

_RENDER = 64  # side of the density histogram; finer than any digit so downsampling smooths it
_WALKERS = 1024  # independent chaos-game chains per fractal, advanced together (vectorised)
_STEPS = 48  # iterations per chain; the first _SKIP are not recorded (all still lie on the attractor)
_SKIP = 4
_CHUNK = 64  # fractals rendered at once: bounds memory at (_CHUNK, _WALKERS) floats per array
_MAX_TRIES = 64


def _seed_sequence(seed: int | Sequence[int] | np.random.SeedSequence) -> np.random.SeedSequence:
    if isinstance(seed, np.random.SeedSequence):
        return seed
    return np.random.SeedSequence(seed)


def _child(base: np.random.SeedSequence, i: int) -> np.random.SeedSequence:
    # Equal to the i-th child of base.spawn(), built directly so fractal i never depends on n.
    return np.random.SeedSequence(base.entropy, spawn_key=(*base.spawn_key, i), pool_size=base.pool_size)


def _draw_ifs(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """2-4 random contractive affine maps, padded to 4 (padding has probability 0).

    A = R(t1) diag(s1, s2) R(t2) with singular values in [0.2, 0.8]: strictly contractive, so the
    attractor exists and chains forget their start within a few steps; the lower bound keeps the
    maps from collapsing the attractor onto a line or a point.
    """
    k = int(rng.integers(2, 5))
    mats = np.zeros((4, 2, 2))
    shifts = np.zeros((4, 2))
    for j in range(k):
        t1, t2 = rng.uniform(0, 2 * np.pi, size=2)
        s = rng.uniform(0.2, 0.8, size=2) * np.where(rng.random(2) < 0.5, -1.0, 1.0)
        r1 = np.array([[np.cos(t1), -np.sin(t1)], [np.sin(t1), np.cos(t1)]])
        r2 = np.array([[np.cos(t2), -np.sin(t2)], [np.sin(t2), np.cos(t2)]])
        mats[j] = r1 @ np.diag(s) @ r2
        shifts[j] = rng.uniform(-1, 1, size=2)
    # The usual chaos-game heuristic: pick maps in proportion to the area they keep (|det|), so the
    # density over the attractor is roughly even instead of piling up in the largest map's image.
    probs = np.zeros(4)
    probs[:k] = np.abs(np.linalg.det(mats[:k]))
    probs /= probs.sum()
    return mats, shifts, probs


def _render(mats: np.ndarray, shifts: np.ndarray, probs: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Chaos game for F fractals at once; returns (F, _RENDER, _RENDER) log-density in [0, 1].

    mats (F, 4, 2, 2), shifts (F, 4, 2), probs (F, 4), u (F, _STEPS, _WALKERS) uniforms.
    """
    f = len(mats)
    # Start every chain at the fixed point of map 0, a point of the attractor: no burn-in needed.
    fixed = np.linalg.solve(np.eye(2) - mats[:, 0], shifts[:, 0, :, None])[..., 0]  # (F, 2)
    x = np.repeat(fixed[:, 0:1], _WALKERS, axis=1)
    y = np.repeat(fixed[:, 1:2], _WALKERS, axis=1)
    cum = np.cumsum(probs, axis=1)[:, :, None]  # (F, 4, 1)
    xs = np.empty((f, _STEPS - _SKIP, _WALKERS))
    ys = np.empty_like(xs)
    for step in range(_STEPS):
        choice = (u[:, step][:, None, :] >= cum[:, :3]).sum(axis=1)  # (F, W) map index 0..3
        a = np.take_along_axis(mats.reshape(f, 4, 4), choice[:, :, None], axis=1)  # (F, W, 4)
        b = np.take_along_axis(shifts, choice[:, :, None], axis=1)  # (F, W, 2)
        x, y = (a[..., 0] * x + a[..., 1] * y + b[..., 0], a[..., 2] * x + a[..., 3] * y + b[..., 1])
        if step >= _SKIP:
            xs[:, step - _SKIP] = x
            ys[:, step - _SKIP] = y
    xs = xs.reshape(f, -1)
    ys = ys.reshape(f, -1)

    def to_bins(v: np.ndarray) -> np.ndarray:
        # Stretch each attractor's bounding box over the frame: fractals fill the picture like the
        # PixMix set does, whatever the scale of their maps.
        lo = v.min(axis=1, keepdims=True)
        span = np.maximum(v.max(axis=1, keepdims=True) - lo, 1e-12)
        return np.minimum(((v - lo) / span * _RENDER).astype(np.int64), _RENDER - 1)

    flat = (np.arange(f)[:, None] * _RENDER + to_bins(ys)) * _RENDER + to_bins(xs)
    hist = np.bincount(flat.ravel(), minlength=f * _RENDER * _RENDER).reshape(f, _RENDER, _RENDER)
    # Densities span orders of magnitude; the log keeps the faint filaments visible.
    dens = np.log1p(hist.astype(np.float64))
    return dens / dens.max(axis=(1, 2), keepdims=True)


def _acceptable(img: np.ndarray, dens: np.ndarray) -> bool:
    # Reject near-degenerate attractors (a dot or a thin line): they would mix in as a blank or
    # nearly constant picture, which PixMix's fractals never are.
    coverage = float((dens > 0).mean())
    return 0.05 <= coverage and float(img.std()) >= 0.05 and float(img.max() - img.min()) >= 0.5


def generate_fractals(n: int, size: int, seed: int | Sequence[int] | np.random.SeedSequence,
                      indices: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
    """Deterministic procedural fractals: IFS attractors rendered by the chaos game.

    Parameters
    ----------
    n : int
        Size of the fractal set (indices run over ``range(n)``).
    size : int
        Side length of the returned pictures.
    seed : int, sequence of ints or SeedSequence
        Fractal ``i`` is drawn from the i-th spawned child of ``SeedSequence(seed)``.
    indices : optional sequence of ints in [0, n)
        Render only these fractals (in this order, repeats allowed); default all ``n``.

    Returns
    -------
    (len(indices), size, size) float32 in [0, 1]; each picture has max 1 and is not constant.
    """
    base = _seed_sequence(seed)
    idx = np.arange(n) if indices is None else np.asarray(indices, dtype=np.int64).reshape(-1)
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise ValueError(f"generate_fractals: indices must lie in [0, {n}), got {idx.min()}..{idx.max()}")
    unique, inverse = np.unique(idx, return_inverse=True)
    rendered = np.empty((len(unique), size, size), dtype=np.float32)
    for start in range(0, len(unique), _CHUNK):
        chunk = unique[start:start + _CHUNK]
        rngs = [np.random.default_rng(_child(base, int(i))) for i in chunk]
        pending = list(range(len(chunk)))
        for _ in range(_MAX_TRIES):
            # Each fractal redraws from its own generator until accepted: its result never depends
            # on which other fractals share the chunk or were rejected.
            draws = [_draw_ifs(rngs[j]) for j in pending]
            u = np.stack([rngs[j].random((_STEPS, _WALKERS)) for j in pending])
            dens = _render(np.stack([d[0] for d in draws]), np.stack([d[1] for d in draws]),
                           np.stack([d[2] for d in draws]), u)
            small = dens if size == _RENDER else resize_images(dens, size).astype(np.float64)
            small = small / np.maximum(small.max(axis=(1, 2), keepdims=True), 1e-12)
            still = []
            for j, d, s in zip(pending, dens, small):
                if _acceptable(s, d):
                    rendered[start + j] = s
                else:
                    still.append(j)
            pending = still
            if not pending:
                break
        else:  # pragma: no cover - needs ~64 consecutive degenerate draws
            raise RuntimeError(f"generate_fractals: no acceptable attractor for fractal {chunk[pending[0]]}")
    return rendered[inverse].clip(0.0, 1.0)


def to_gray(rgb: np.ndarray) -> np.ndarray:
    """RGB (..., 3) uint8 or float to grayscale with the paper's weights, scaled to [0, 1]."""
    rgb = np.asarray(rgb, dtype=np.float64)
    w = np.asarray(GRAY_WEIGHTS)
    return (rgb @ w / 255.0).clip(0.0, 1.0)


def list_fractal_files(folder: str | Path) -> list[Path]:
    """The png/jpg files of ``folder``, sorted by name; SpecError if none.

    Raises
    ------
    SpecError
        The folder is missing, not a folder, or holds no png/jpg image.
    """
    path = Path(folder)
    key = "data.under.fractal_dir"
    fix = "point it at a folder of .png/.jpg fractal images, or set it to \"\" for the built-in generator"
    if not path.exists():
        raise SpecError(f"{key}: folder {str(path)!r} does not exist; {fix}")
    if not path.is_dir():
        raise SpecError(f"{key}: {str(path)!r} is not a folder; {fix}")
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise SpecError(f"{key}: folder {str(path)!r} holds no .png/.jpg images; {fix}")
    return files


def load_fractal_files(files: Sequence[str | Path], size: int) -> np.ndarray:
    """Read image files as (len(files), size, size) float32 grayscale in [0, 1].

    Colour is reduced with the paper's weights (0.2989 R + 0.5870 G + 0.1140 B) on the RGB array,
    then bilinear resizing to ``size``. SpecError names any file Pillow cannot read.
    """
    out = np.empty((len(files), size, size), dtype=np.float32)
    for i, f in enumerate(files):
        try:
            with Image.open(f) as im:
                rgb = np.asarray(im.convert("RGB"))
        except (UnidentifiedImageError, OSError) as err:
            raise SpecError(f"data.under.fractal_dir: cannot read image {str(f)!r} ({err}); "
                            "remove it or replace it with a valid .png/.jpg") from None
        gray = to_gray(rgb).astype(np.float32)
        out[i] = resize_images(gray[None], size)[0]
    return out


def load_fractal_dir(folder: str | Path, n: int, size: int) -> np.ndarray:
    """The first ``n`` (by file name) png/jpg images of ``folder`` as (m, size, size) float32.

    ``m = min(n, number of images)``: ``n`` caps the set, a smaller folder is used whole.

    Raises
    ------
    SpecError
        The folder is missing or holds no images, or an image cannot be read.
    """
    return load_fractal_files(list_fractal_files(folder)[:n], size)


def load_fractal_files_rgb(files: list, size: int) -> np.ndarray:
    """Image files as (len(files), size, size, 3) float32 RGB in [0, 1] (bilinear resizing)."""
    from PIL import Image, UnidentifiedImageError

    out = np.empty((len(files), size, size, 3), dtype=np.float32)
    for i, f in enumerate(files):
        try:
            with Image.open(f) as im:
                rgb = np.asarray(im.convert("RGB"), dtype=np.float32) / np.float32(255.0)
        except (UnidentifiedImageError, OSError) as err:
            raise SpecError(f"data.under.fractal_dir: cannot read image {str(f)!r} ({err}); "
                            "remove it or replace it with a valid .png/.jpg") from None
        out[i] = np.moveaxis(resize_images(np.moveaxis(rgb, -1, 0), size), 0, -1)
    return out

"""The data side: digits (D_O), PixMix'd digits (D_U), fractals. Torch-free: numpy, Pillow, sklearn.

``build_dataset(spec)`` is the entry point; it returns the :class:`mia_hpc.store.StaticData` that
``create_store`` writes.
"""

from mia_hpc.data.mixture import build_dataset

__all__ = ["build_dataset"]

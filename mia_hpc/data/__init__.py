"""The data side: digits (D_O), PixMix'd digits (D_U), fractals, and the paper's real datasets.

Torch-free: numpy, Pillow, sklearn, scipy. ``formats`` reads MNIST, cropped SVHN, CIFAR-10 and
CIFAR-100 from a data root in torchvision's on-disk layout (torchvision is imported only to
download, with ``data.download = true``); ``real`` builds their mixtures (§4, Appendix C).

``build_dataset(spec)`` is the entry point; it returns the :class:`mia_hpc.contract.store.StaticData` that
``create_store`` writes.
"""

from mia_hpc.data.mixture import build_dataset

__all__ = ["build_dataset"]

"""Giving back the pages of a read-only memory-mapped array once they are read.

:mod:`analysis.kernels.pooled`, :mod:`analysis.kernels.metrics` and
:mod:`analysis.kernels.bootstrap` read the attacks' (T, N) scores, memory-mapped from local disk
(:class:`analysis.store_io.spill.SpilledScores`), one block of rows at a time; this keeps what they have read from staying in the process' resident size.
"""

from __future__ import annotations

import mmap

import numpy as np

__all__ = ["drop_mapped_pages"]


def drop_mapped_pages(a: np.ndarray) -> None:
    """Unmap from this process the pages of a read-only file mapping that ``a`` views.

    Pages of a file mapping count in the resident size once touched and stay there: a reader that
    goes through a (T, N) memmap once per pass ends up holding the whole file (0.4 GB at 2000 x
    50,000 float32). ``madvise(MADV_DONTNEED)`` on the pages a block of rows used gives them back;
    the page cache keeps them, so a later read faults them in again without a disk read. Only a
    read-only mapping (``np.load(..., mmap_mode="r")``) is touched: a copy-on-write one could hold
    private changes that this would discard. Anything else (an in-memory array, a platform without
    ``madvise``) is left as it is.
    """
    mm = _readonly_mapping(a)
    if mm is None or a.size == 0 or not hasattr(mm, "madvise"):
        return
    base = np.frombuffer(mm, dtype=np.uint8).__array_interface__["data"][0]
    lo, hi = np.lib.array_utils.byte_bounds(a)
    page = mmap.PAGESIZE
    start = (lo - base) // page * page  # pages shared with the neighbours go too: they fault back in
    stop = min(len(mm), -(-(hi - base) // page) * page)
    if 0 <= start < stop:
        mm.madvise(mmap.MADV_DONTNEED, start, stop - start)


def _readonly_mapping(a: np.ndarray):
    """The ``mmap.mmap`` under ``a`` if ``a`` views a read-only ``np.memmap``, else None."""
    b = a
    while b is not None and not isinstance(b, np.memmap):
        b = getattr(b, "base", None)
    if b is None or b.mode != "r":
        return None
    mm = getattr(b, "_mmap", None)
    return mm if mm is not None and not getattr(mm, "closed", False) else None

"""Reading memory-mapped arrays a block of rows at a time, and giving back their pages once read.

:mod:`analysis.kernels.pooled`, :mod:`analysis.kernels.metrics`, :mod:`analysis.kernels.bootstrap`
and :mod:`analysis.output.roc` read the attacks' (T, N) scores, memory-mapped from local disk
(:class:`analysis.store_io.spill.SpilledScores`), one block of rows at a time; this keeps what they
have read from staying in the process' resident size.
"""

from __future__ import annotations

import mmap

import numpy as np

__all__ = ["count_members", "drop_mapped_pages", "is_mapped", "read_columns", "read_rows"]


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
    b = _memmap_of(a)
    if b is None or b.mode != "r":
        return None
    mm = getattr(b, "_mmap", None)
    return mm if mm is not None and not getattr(mm, "closed", False) else None


def _memmap_of(a: np.ndarray) -> np.memmap | None:
    """The ``np.memmap`` that ``a`` is or views (through its bases), or None."""
    while a is not None and not isinstance(a, np.memmap):
        a = getattr(a, "base", None)
    return a


def is_mapped(a: np.ndarray) -> bool:
    """Whether ``a`` views a memory-mapped file (any mode)."""
    return _memmap_of(a) is not None


def read_rows(a: np.ndarray, r0: int, r1: int) -> np.ndarray:
    """Rows ``r0:r1`` of ``a`` in memory, a read-only mapping's pages of them then given back."""
    rows = a[r0:r1]
    out = np.array(rows)
    drop_mapped_pages(rows)
    return out


def read_columns(a: np.ndarray, mask: np.ndarray | None, block_bytes: int = 16 << 20) -> np.ndarray:
    """``a[:, mask]`` (``a`` itself if ``mask`` is None) in memory, read ``block_bytes`` of rows at a time."""
    if not isinstance(a, np.ndarray):
        a = np.asarray(a)
    if mask is None and not is_mapped(a):
        return a  # in memory already: no copy
    t, n = a.shape
    out = np.empty((t, n if mask is None else int(mask.sum())), dtype=a.dtype)
    step = max(1, block_bytes // max(1, n * a.itemsize))
    for r0 in range(0, t, step):
        rows = a[r0:r0 + step]
        out[r0:r0 + step] = rows if mask is None else rows[:, mask]
        drop_mapped_pages(rows)
    return out


def count_members(member: np.ndarray, mask: np.ndarray | None, block_bytes: int | None = None) -> int:
    """``member[:, mask]``'s members (all columns if ``mask`` is None), ``block_bytes`` of rows (as
    bool) at a time with their pages given back; all at once if ``block_bytes`` is None."""
    if block_bytes is None:
        return int(np.count_nonzero(member if mask is None else member[:, mask]))
    step = max(1, int(block_bytes) // max(1, member.shape[1]))
    total = 0
    for r0 in range(0, member.shape[0], step):
        mb = read_rows(member, r0, r0 + step).astype(bool, copy=False)
        total += int(np.count_nonzero(mb if mask is None else mb[:, mask]))
    return total

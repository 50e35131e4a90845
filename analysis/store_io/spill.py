"""Attack scores kept on local disk between the attacks that make them and the tables that use them.

A full-size analysis scores T x N pairs per attack (2000 x 20,000 float32 = 160 MB) for nine
attacks; holding all of them would be most of the analysis' memory. :class:`SpilledScores` is the
``scores`` mapping of an :class:`analysis.attacks.lira.LiraResult` that writes each array to an ``.npy``
file as it is set and maps it back on each access, so consumers that go one attack at a time
(the metrics, the bootstrap tables, ``scores.zarr``) hold one attack's scores at a time.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from collections.abc import MutableMapping
from pathlib import Path
from typing import Iterator

import numpy as np

from analysis.kernels.pages import drop_mapped_pages

__all__ = ["SpilledScores", "DiskRows", "release_freed_memory", "drop_mapped_pages", "peak_rss_gib",
           "current_rss_bytes"]


class SpilledScores(MutableMapping):
    """A ``name -> ndarray`` mapping stored as one ``.npy`` file per name under a scratch folder.

    Parameters
    ----------
    parent : path
        Where the scratch folder (``.scores-spill-*``) is made; it is removed by :meth:`close`
        (or on leaving a ``with`` block).
    dtype : str
        Arrays are stored (and returned) with this dtype.
    """

    def __init__(self, parent: str | Path, dtype: str = "float32") -> None:
        Path(parent).mkdir(parents=True, exist_ok=True)
        self.dir = Path(tempfile.mkdtemp(prefix=".scores-spill-", dir=parent))
        self.dtype = np.dtype(dtype)
        self._files: dict[str, Path] = {}  # insertion order, as a dict
        self._count = 0

    def __setitem__(self, name: str, value: np.ndarray) -> None:
        path = self._files.get(name)
        if path is None:
            path = self.dir / f"{self._count}.npy"
            self._count += 1
        if isinstance(value, DiskRows) and value.dtype == self.dtype:  # already a file: adopted, not copied
            os.replace(value.path, path)
            value.path = path
        else:
            np.save(path, np.asarray(value, dtype=self.dtype), allow_pickle=False)
        self._files[name] = path

    def __getitem__(self, name: str) -> np.ndarray:
        # memory-mapped read-only: the consumers read the page cache directly instead of a fresh
        # copy of the whole array (measured 0.65 GB/s for np.load's read into new memory here), and
        # may drop the pages they have read (drop_mapped_pages: nothing written can be lost); a
        # mapping outlives the file's removal, so a popped array stays valid
        return np.asarray(np.load(self._files[name], mmap_mode="r", allow_pickle=False))

    def __delitem__(self, name: str) -> None:
        self._files.pop(name).unlink()

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._files))

    def __len__(self) -> int:
        return len(self._files)

    def path(self, name: str) -> Path:
        """The ``.npy`` file holding ``name`` (for readers in other processes on the same filesystem)."""
        return self._files[name]

    def move_to_end(self, name: str) -> None:
        """Put ``name`` last in the iteration order (as :meth:`collections.OrderedDict.move_to_end`)."""
        self._files[name] = self._files.pop(name)

    def close(self) -> None:
        """Remove the scratch folder and forget every array."""
        shutil.rmtree(self.dir, ignore_errors=True)
        self._files = {}

    def __enter__(self) -> "SpilledScores":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class DiskRows:
    """A (R, ...) array on local disk (one ``.npy`` file) written and read a block of rows at a time.

    For what scales with targets x samples x queries (the targets' phi, signals, scores) when it
    does not fit the analysis' memory budget: the pass' tasks write their rows as they compute them
    (disjoint rows, from any thread) and the attacks read blocks of rows back. Each access maps the
    file only for its rows' copy and unmaps it, so the process holds no more than the block (a
    mapping kept open would count every page ever touched in its resident size).

    Parameters
    ----------
    path : path
        The ``.npy`` file to create (removed by :meth:`close`).
    shape : tuple of int
    dtype : str
    """

    def __init__(self, path: str | Path, shape: tuple[int, ...], dtype: str = "float32") -> None:
        self.path = Path(path)
        self.shape = tuple(int(x) for x in shape)
        self.dtype = np.dtype(dtype)
        mm = np.lib.format.open_memmap(self.path, mode="w+", dtype=self.dtype, shape=self.shape)
        del mm  # the file exists, sparse, with its header

    @classmethod
    def open(cls, path: str | Path) -> "DiskRows":
        """An existing ``.npy`` file (written by another process, e.g. a dask worker) as a DiskRows."""
        mm = np.load(path, mmap_mode="r", allow_pickle=False)
        rows = cls.__new__(cls)
        rows.path, rows.shape, rows.dtype = Path(path), tuple(mm.shape), mm.dtype
        del mm
        return rows

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def write(self, start: int, rows: np.ndarray, col: int = 0) -> None:
        """Write ``rows`` at rows ``start .. start + len(rows)``, columns (axis 1) from ``col`` on.

        Whole rows are one span of the file, written with a plain write of exactly their bytes:
        writers of other rows (other processes, e.g. LiRA's dask tasks) may share a page with them,
        and a network filesystem writes a page dirtied through a mapping back whole, over the other
        writer's bytes; a plain write sends only its own range.
        """
        if len(rows) == 0:
            return
        rows = np.asarray(rows)
        if col == 0 and rows.shape[1:] == self.shape[1:]:
            self._write_span(start, rows)
            return
        mm = np.load(self.path, mmap_mode="r+", allow_pickle=False)
        if rows.ndim > 1:
            mm[start:start + len(rows), col:col + rows.shape[1]] = rows
        else:
            mm[start:start + len(rows)] = rows
        mm.flush()
        del mm

    def _write_span(self, start: int, rows: np.ndarray) -> None:
        """``rows`` (whole rows, cast to the file's dtype as an assignment would) at row ``start``."""
        if not 0 <= start <= start + len(rows) <= self.shape[0]:
            raise IndexError(f"{self.path}: rows {start}..{start + len(rows)} outside 0..{self.shape[0]}")
        data = memoryview(np.ascontiguousarray(rows, dtype=self.dtype)).cast("B")
        at = self.data_offset + start * (data.nbytes // len(rows))
        # write-only: a file also open for reading may have a partial page read in first (NFS)
        fd = os.open(self.path, os.O_WRONLY)
        try:
            while data.nbytes:
                n = os.pwrite(fd, data, at)
                data, at = data[n:], at + n
        finally:
            os.close(fd)

    def __getitem__(self, key) -> np.ndarray:
        """A fresh in-memory copy of ``self[key]`` (a slice of rows, or any numpy index)."""
        mm = np.load(self.path, mmap_mode="r", allow_pickle=False)
        try:
            return np.array(mm[key])
        finally:
            del mm

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        a = self[:]
        return a if dtype is None else a.astype(dtype)

    def take_columns(self, cols: np.ndarray) -> np.ndarray:
        """``self[:, cols]`` read with plain file reads, one row's span of ``cols`` at a time.

        Indexing the mapped file (``self[:, cols]``) leaves the pages it touched in the process'
        resident size until it is unmapped, and the kernel maps whole page-cache folios around each
        fault: a block of 873 scattered samples of 400 shadows x 51,000 x 18 held 0.6 GB for a
        48 MB copy, growing with the rows. Here the process holds the result and one row's span.
        """
        cols = np.asarray(cols, dtype=np.int64)
        out = np.empty((self.shape[0], cols.size) + self.shape[2:], dtype=self.dtype)
        if cols.size == 0 or self.shape[0] == 0:
            return out
        lo, hi = int(cols.min()), int(cols.max()) + 1
        item = int(np.prod(self.shape[2:], dtype=np.int64)) * self.dtype.itemsize  # bytes of one (row, column)
        offset = self.data_offset
        span = np.empty((hi - lo,) + self.shape[2:], dtype=self.dtype)
        raw = memoryview(span).cast("B")
        with open(self.path, "rb", buffering=0) as f:
            for r in range(self.shape[0]):
                f.seek(offset + (r * self.shape[1] + lo) * item)
                if f.readinto(raw) != raw.nbytes:
                    raise OSError(f"{self.path}: short read in row {r}")
                out[r] = span[cols - lo]
        return out

    @functools.cached_property
    def data_offset(self) -> int:
        """Where the array's bytes start in the file, after the ``.npy`` header (read once)."""
        mm = np.load(self.path, mmap_mode="r", allow_pickle=False)
        try:
            return int(mm.offset)
        finally:
            del mm

    def mmap(self) -> np.ndarray:
        """The whole array, memory-mapped read-only (for readers that index it freely)."""
        return np.load(self.path, mmap_mode="r", allow_pickle=False)

    def close(self) -> None:
        """Remove the file."""
        self.path.unlink(missing_ok=True)


def release_freed_memory() -> None:
    """Return freed heap memory to the operating system (glibc's ``malloc_trim``; a no-op elsewhere).

    numpy temporaries of a few MB come from the C heap, and memory freed by the analysis' worker
    threads stays in their malloc arenas: the process' resident size then carries one phase's
    peak into the next. Called between the analysis' phases.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_rss_gib() -> float:
    """This process' peak resident memory so far, in GiB (``getrusage``; Linux reports KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def current_rss_bytes() -> int:
    """This process' resident memory now, in bytes (``/proc/self/statm``; 0 where there is none)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0

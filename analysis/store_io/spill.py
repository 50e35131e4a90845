"""Attack scores kept on local disk between the attacks that make them and the tables that use them.

A full-size analysis scores T x N pairs per attack (2000 x 20,000 float32 = 160 MB) for nine
attacks; holding all of them would be most of the analysis' memory. :class:`SpilledScores` is the
``scores`` mapping of an :class:`analysis.attacks.lira.LiraResult` that writes each array to an ``.npy``
file as it is set and maps it back on each access, so consumers that go one attack at a time
(the metrics, the bootstrap tables, ``scores.zarr``) hold one attack's scores at a time.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import MutableMapping
from pathlib import Path
from typing import Iterator

import numpy as np

__all__ = ["SpilledScores", "release_freed_memory"]


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
        np.save(path, np.asarray(value, dtype=self.dtype), allow_pickle=False)
        self._files[name] = path

    def __getitem__(self, name: str) -> np.ndarray:
        # memory-mapped (copy-on-write): the consumers read the page cache directly instead of a
        # fresh copy of the whole array (measured 0.65 GB/s for np.load's read into new memory here);
        # a mapping outlives the file's removal, so a popped array stays valid
        return np.asarray(np.load(self._files[name], mmap_mode="c", allow_pickle=False))

    def __delitem__(self, name: str) -> None:
        self._files.pop(name).unlink()

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._files))

    def __len__(self) -> int:
        return len(self._files)

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

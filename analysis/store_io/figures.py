"""Saving figures: every plot of the analysis is written as PNG (report) and PDF (papers), atomically.

:class:`FigureQueue` draws an analysis' figures on one background thread while it computes.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence

from analysis.store_io.atomic import atomic_write

FORMATS = ("png", "pdf")


def save_figure(fig: Any, path: str | Path, formats: Sequence[str] = FORMATS) -> list[Path]:
    """Write ``fig`` as ``path`` with each suffix in ``formats``; a crash never leaves a partial file."""
    path = Path(path)
    return [atomic_write(path.with_suffix(f".{fmt}"), lambda p, fmt=fmt: fig.savefig(p, format=fmt))
            for fmt in formats]


def figure_paths(path: str | Path, formats: Sequence[str] = FORMATS) -> list[Path]:
    """The files :func:`save_figure` writes for ``path``."""
    return [Path(path).with_suffix(f".{fmt}") for fmt in formats]


class FigureQueue:
    """Plotting calls run one at a time on a single background thread, in submission order.

    matplotlib is not thread-safe, so an analysis that uses a queue sends *every* plotting call
    (building the figure and saving it) through it: matplotlib then only ever runs on the queue's
    thread. Drawing is Python-bound; the analysis' numeric work (compiled loops, sorts, BLAS)
    releases the GIL, so the figures are drawn while the numbers are computed (the full-size
    analysis' 11 figures, PNG and PDF, take ~12 s to draw). :meth:`wait` blocks until every
    submitted call has run and re-raises the first failure; :meth:`close` drops what has not
    started.

    Parameters
    ----------
    background : bool
        False: run each call at once in the caller's thread (same results, no overlap).
    """

    def __init__(self, background: bool = True) -> None:
        self._ex = ThreadPoolExecutor(max_workers=1, thread_name_prefix="figures") if background else None
        self._futures: list[Future] = []

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Run ``fn(*args, **kwargs)`` (a function that makes and saves figures) on the queue."""
        if self._ex is None:
            fn(*args, **kwargs)
        else:
            self._futures.append(self._ex.submit(fn, *args, **kwargs))

    def wait(self) -> None:
        """Block until every submitted call has finished; re-raise the first exception."""
        done, self._futures = self._futures, []
        for f in done:
            f.result()

    def close(self) -> None:
        """Cancel the calls not started yet and stop the thread (after the running call)."""
        if self._ex is not None:
            self._ex.shutdown(wait=True, cancel_futures=True)
            self._ex = None
        self._futures = []

    def __enter__(self) -> "FigureQueue":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

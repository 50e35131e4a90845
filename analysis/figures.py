"""Saving figures: every plot of the analysis is written as PNG (report) and PDF (papers), atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from .atomic import atomic_write


def save_figure(fig: Any, path: str | Path, formats: Sequence[str] = ("png", "pdf")) -> list[Path]:
    """Write ``fig`` as ``path`` with each suffix in ``formats``; a crash never leaves a partial file."""
    path = Path(path)
    return [atomic_write(path.with_suffix(f".{fmt}"), lambda p, fmt=fmt: fig.savefig(p, format=fmt))
            for fmt in formats]

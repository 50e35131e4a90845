"""Saving figures: every plot of the analysis is written as PNG (report) and PDF (papers), atomically."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence


def save_figure(fig: Any, path: str | Path, formats: Sequence[str] = ("png", "pdf")) -> list[Path]:
    """Write ``fig`` as ``path`` with each suffix in ``formats``; a crash never leaves a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out = []
    for fmt in formats:
        p = path.with_suffix(f".{fmt}")
        tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
        try:
            fig.savefig(tmp, format=fmt)
            tmp.replace(p)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        out.append(p)
    return out

"""Atomic file writes for the analysis outputs: a crash never leaves a complete-looking partial file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Run ``write(tmp)`` on a sibling temporary path, then rename it to ``path``; on error remove it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | Path, text: str) -> Path:
    """UTF-8 text, atomically."""
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))

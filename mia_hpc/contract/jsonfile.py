"""Small JSON state files (job records, adaptive state): read leniently, write atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["read_json_dict", "write_json_atomic"]


def read_json_dict(path: str | Path) -> dict[str, Any]:
    """The JSON object in ``path``; ``{}`` when the file is missing, unreadable or not an object."""
    try:
        d = json.loads(Path(path).read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return d if isinstance(d, dict) else {}


def write_json_atomic(path: str | Path, obj: Any, *, sort_keys: bool = False, indent: int = 2) -> None:
    """Write ``obj`` to a temporary sibling, fsync it and rename it into place: readers see the
    old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(json.dumps(obj, indent=indent, sort_keys=sort_keys) + "\n")
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)

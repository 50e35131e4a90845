"""The public Python API; the CLI (``mia_hpc.cli``) is a thin wrapper over these functions."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mia_hpc.experiment import prepare_store, spec_of
from mia_hpc.launch.shards import ShardState, shard_states
from mia_hpc.spec import Spec, load_spec
from mia_hpc.store import done_mask, open_store


@dataclass(frozen=True)
class Status:
    """Progress of a store."""

    store: Path
    done: int
    total: int
    shards: list[ShardState]

    def lines(self) -> list[str]:
        out = [f"{self.store}: {self.done}/{self.total} shadows done"]
        for s in self.shards:
            mark = "done" if s.complete else ("partial" if s.done else "pending")
            out.append(f"  shard {s.shard:>4}: shadows {s.shadows.start}-{s.shadows.stop - 1}  "
                       f"{s.done}/{len(s.shadows)}  {mark}")
        return out


def status(store: str | Path) -> Status:
    """Shadows done per shard."""
    root = open_store(store)
    spec = spec_of(root)
    done = done_mask(root)
    return Status(Path(store), int(done.sum()), len(done), shard_states(done, spec.shadows.shards))


def pending_shards(store: str | Path) -> list[int]:
    """Shards with at least one shadow not done."""
    return [s.shard for s in status(store).shards if not s.complete]


def run(spec: str | Path | Spec, out: str | Path, *, executor: str = "local", analyze: bool = True,
        device: str = "auto", parallel: int = 0, progress: bool = True) -> dict[str, Any]:
    """Run an experiment end to end: store, shadows (resuming), then the analysis.

    Returns ``{"store": Path, "trained": [shadows trained by this call], "analysis": dict | None}``.
    """
    from mia_hpc.launch.local import run_shards

    spec = spec if isinstance(spec, Spec) else load_spec(spec)
    out = Path(out)
    store = out / "store.zarr"
    prepare_store(spec, store)
    trained = run_shards(store, spec.shadows.shards, pending_shards(store), executor=executor, log_dir=out / "logs",
               parallel=parallel, device=device, progress=progress)
    result: dict[str, Any] = {"store": store, "trained": sorted(trained), "analysis": None}
    if analyze:
        from analysis.report import analyze as _analyze

        result["analysis"] = _analyze(store, out / "analysis", progress=progress)
    return result

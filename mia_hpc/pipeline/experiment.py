"""From a spec to a ready store: build the data, the keep masks and the queries, allocate.

Nothing here trains; the store made here is what every shard worker reads its inputs from, so all
shards (local processes, Slurm tasks, containers) see byte-identical data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import zarr

from mia_hpc.contract.keep import make_keep
from mia_hpc.contract.queries import make_queries
from mia_hpc.pipeline.resources import check_resources
from mia_hpc.contract.spec import Spec
from mia_hpc.contract.store import StaticData, check_spec_matches, create_store, open_store


def prepare_store(spec: Spec, path: str | Path, *, analysis_here: bool = True) -> zarr.Group:
    """Open the store at ``path`` if it was made from ``spec``; create it if it does not exist.

    A new store is first checked against this machine's memory and the store filesystem's free
    space (:func:`mia_hpc.pipeline.resources.check_resources`; ``analysis_here=False`` for a cluster
    submission, whose analysis runs elsewhere): a spec that cannot run is refused before anything
    is built or written.
    """
    path = Path(path)
    if path.exists():
        root = open_store(path)
        check_spec_matches(root, spec.hash(), path)
        return root
    check_resources(spec, path, analysis_here=analysis_here)
    from mia_hpc.data import build_dataset  # data building is only needed on first creation

    return create_from_data(spec, path, build_dataset(spec), analysis_here=analysis_here)


def create_from_data(spec: Spec, path: str | Path, data: StaticData,
                     extra_attrs: Mapping[str, Any] | None = None, *, analysis_here: bool = True) -> zarr.Group:
    """Create the store of ``spec`` at ``path`` for given static data: keep masks, allocation, attrs.

    Used for ordinary specs (data built from the spec) and for a staged attack run (data selected
    from its oracle store). Refused before anything is written if it does not fit (the exact
    sample count known now).
    """
    from mia_hpc.models import embed_dim

    path = Path(path)
    check_resources(spec, path, n_samples=len(data.label), analysis_here=analysis_here)
    keep = make_keep(spec.shadows.count, data.split == "train", spec.seed, spec.shadows.keep_block)
    n_features = embed_dim(spec.model.arch, data.image.shape[1], data.n_classes, spec.data.image_size,
                           spec.model.width)
    extra = dict(extra_attrs or {})
    if spec.dp.noise_multiplier > 0:
        from mia_hpc.train.dp_budget import dp_schedule, epsilon

        n_pool = int((data.split == "train").sum())
        sched = dp_schedule(spec, n_pool)
        extra["dp"] = {"epsilon": epsilon(spec, n_pool), "delta": spec.dp.delta, "sample_rate": sched.sample_rate,
                       "steps": sched.steps, "noise_multiplier": spec.dp.noise_multiplier,
                       "max_grad_norm": spec.dp.max_grad_norm, "accountant": spec.dp.accountant}
    path.parent.mkdir(parents=True, exist_ok=True)
    create_store(path, spec.to_dict(), spec.hash(), data, keep,
                 make_queries(spec.queries.shift, spec.queries.mirror), spec.store.sample_chunk, n_features, extra)
    return open_store(path)

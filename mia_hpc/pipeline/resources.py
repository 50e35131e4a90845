"""What a spec needs before anything is written: disk for the store, memory to make it, train and analyse it.

A spec can validate and still be impossible here (``shadows.count = 1000000`` passes every bound,
then its keep masks alone need 14 GiB). :func:`check_resources` estimates, from the spec alone (or
the exact sample count once the data is built), the store's size on disk and the peak memory of
each phase, compares them with this machine (``shutil.disk_usage`` of the store's filesystem,
``psutil.virtual_memory``), and refuses with one line giving the numbers.

The estimates are upper bounds of the dominant arrays, not profiles: the store counts every
written array uncompressed (logits barely compress); creation counts the keep-mask construction
(a float64 draw and two int64 rank arrays per (shadow, sample) of a block, then the bool masks);
a worker holds the images, the whole keep matrix and its batch's logits (the queries' shifted views
are made a chunk of images at a time); the analysis sizes its blocks from its memory budget
(:data:`mia_hpc.contract.settings.ANALYSIS_MEMORY_GB`, ``analyze --memory-gb``) and streams or
spills what grows with the store, so it needs the smaller of the budget and what a small store's
arrays take whole (the logits of all shadows for one query, twice, and the keep matrix).
Torch-free.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from pathlib import Path

from mia_hpc.contract.queries import make_queries
from mia_hpc.contract.settings import ANALYSIS_MEMORY_GB
from mia_hpc.contract.spec import Spec
from mia_hpc.contract.store import StoreError

#: Samples in the embedded digits (scikit-learn's ``load_digits``).
N_DIGITS = 1797
#: Size of the real sources' test splits (MNIST, CIFAR-10).
REAL_TEST = 10_000
N_CLASSES = 10
#: Penultimate features kept for shadow 0 (an upper bound over the architectures).
MAX_FEATURES = 1024
#: Headroom on memory: Python, torch and zarr's own buffers come on top of the arrays counted.
MEMORY_MARGIN = 1.25
GIB = 2**30


class ResourceError(StoreError):
    """The spec cannot run on this machine (or store filesystem); the message gives the numbers."""


@dataclass(frozen=True)
class Needs:
    """Bytes a spec needs: the store on disk and the peak memory of each phase."""

    samples: int
    disk: int
    create_memory: int
    worker_memory: int
    analysis_memory: int


def estimate_samples(spec: Spec) -> int:
    """An upper bound of the store's samples (pool and test) from the spec alone."""
    d = spec.data
    over_test = math.ceil(d.test_fraction * N_DIGITS) if d.source == "digits" else (d.test_over or REAL_TEST)
    under_test = d.test_under if d.under.kind != "none" else 0
    return d.size + over_test + under_test


def estimate(spec: Spec, n_samples: int | None = None) -> Needs:
    """What ``spec`` needs for ``n_samples`` samples (default: :func:`estimate_samples`)."""
    n = n_samples or estimate_samples(spec)
    m = spec.shadows.count
    q = len(make_queries(spec.queries.shift, spec.queries.mirror))
    c = N_CLASSES
    channels = 3 if spec.data.source == "cifar10" else 1
    image = n * channels * spec.data.image_size**2 * 4
    logits_per_shadow = n * q * c * 4
    keep = m * n
    disk = m * logits_per_shadow + keep + image + n * MAX_FEATURES * 4 + m * 64
    block = spec.shadows.keep_block or m
    create = image + keep + block * n * (8 + 8 + 8)  # uniform draw, argsort, argsort of the argsort
    k = spec.shadows.batch or 8
    worker = image + keep + min(k, m) * logits_per_shadow
    analysis = min(2 * m * n * c * 4 + keep, int(ANALYSIS_MEMORY_GB * GIB))
    return Needs(n, disk, int(create * MEMORY_MARGIN), int(worker * MEMORY_MARGIN), int(analysis * MEMORY_MARGIN))


def _gib(b: float) -> str:
    return f"{b / GIB:.1f} GiB"


def _existing_parent(path: Path) -> Path:
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path


def check_resources(spec: Spec, store: str | Path, *, n_samples: int | None = None, analysis_here: bool = True,
                    where: str = "this machine") -> Needs:
    """Refuse (:class:`ResourceError`, one line) a spec whose store or phases do not fit; return the needs.

    ``analysis_here``: the analysis will run on this machine (``mia-hpc run``); a cluster
    submission checks the store's filesystem and the creation here only.
    """
    import psutil

    needs = estimate(spec, n_samples)
    fs = _existing_parent(Path(store).parent)
    free = shutil.disk_usage(fs).free
    avail = psutil.virtual_memory().available
    what = f"shadows.count = {spec.shadows.count} x {needs.samples} samples"
    problems = []
    if needs.disk > free:
        problems.append(f"{_gib(needs.disk)} of disk for the store ({fs} has {_gib(free)} free)")
    memory = [("to create the store's keep masks", needs.create_memory),
              ("per training worker", needs.worker_memory)]
    if analysis_here:
        memory.append(("for the analysis", needs.analysis_memory))
    for label, need in memory:
        if need > avail:
            problems.append(f"{_gib(need)} of memory {label} ({where} has {_gib(avail)} available)")
    if problems:
        raise ResourceError(f"{what}: needs " + "; ".join(problems) + "; nothing was written. Lower shadows.count "
                            "or data.size (shadows.keep_block bounds the keep masks' memory), or run where they fit")
    return needs

"""Subcommand groups of the ``mia-hpc`` CLI, each with ``register(subparsers) -> {name: handler}``,
and what several commands share: the spec variants (``--tiny``, ``--data-root``)."""

from __future__ import annotations

import argparse

__all__ = ["add_spec_variant_arguments", "load_spec_variant"]


def add_spec_variant_arguments(parser: argparse.ArgumentParser, *, what: str = "run") -> None:
    """``--tiny`` and ``--data-root``, as ``run``, ``submit`` and ``render-sbatch`` take them."""
    parser.add_argument("--tiny", action="store_true",
                        help=f"{what} the spec's tiny form: same datasets, groups and stages; 4 shadows, 1 epoch, "
                             "a few samples per class, tiny model (mia_hpc.pipeline.tiny); seconds on a CPU")
    parser.add_argument("--data-root", default="",
                        help="read real datasets from this folder instead of the spec's data.root (same spec hash)")


def load_spec_variant(args: argparse.Namespace):
    """The spec ``args.spec`` as written, or its tiny form (``--tiny``), read from ``--data-root``."""
    from mia_hpc.contract.spec import load_spec
    from mia_hpc.pipeline.tiny import tiny_spec, with_data_root

    spec = load_spec(args.spec)
    if getattr(args, "tiny", False):
        spec = tiny_spec(spec)
    if getattr(args, "data_root", ""):
        spec = with_data_root(spec, args.data_root)
    return spec

"""``mia-hpc import-lira``, ``export-lira`` and ``synth-store``: stores from and to other places.

``register(subparsers)`` adds them to the main parser and returns ``{command: handler}``; a handler
takes the parsed namespace and returns the exit code. Bad input raises
:class:`~mia_hpc.contract.spec.SpecError` or :class:`~mia_hpc.contract.store.StoreError` (one line, exit code 2 in
the CLI). Torch-free.
"""

from __future__ import annotations

import argparse
from typing import Callable

from mia_hpc.contract.settings import SAMPLE_CHUNK


def register(subparsers: argparse._SubParsersAction) -> dict[str, Callable[[argparse.Namespace], int]]:
    """Add ``import-lira``, ``export-lira`` and ``synth-store`` to ``subparsers``; return their handlers."""
    i = subparsers.add_parser("import-lira",
                              help="import a LiRA reference-code run (experiment-* folders) as a store")
    i.add_argument("exp_dir", metavar="EXP_DIR",
                   help="LiRA's --logdir: y_train.npy and experiment-<i>_<n>/{keep.npy,logits/*.npy}")
    i.add_argument("--out", required=True, help="store to create, e.g. runs/lira/store.zarr (must not exist)")
    i.add_argument("--under-mask", default=None, help=".npy of N booleans marking the under-represented group")
    i.add_argument("--augs", default="generic", choices=["generic", "lira"],
                   help="generic: queries aug0.. with unknown geometry (default); lira: decode inference.py's order")
    i.add_argument("--skip-incomplete", action="store_true", help="skip experiments without logits")
    i.add_argument("--sample-chunk", type=int, default=SAMPLE_CHUNK,
                   help=f"samples per logits chunk (default {SAMPLE_CHUNK})")

    e = subparsers.add_parser("export-lira",
                              help="write a store's done shadows in the LiRA reference-code layout")
    e.add_argument("store", metavar="STORE", help="the store whose done shadows to export")
    e.add_argument("--out", required=True, help="directory to create (must not exist)")

    s = subparsers.add_parser("synth-store", help="write a synthetic store with known IN/OUT distributions")
    s.add_argument("--out", required=True, help="store to create, e.g. runs/synth/store.zarr (must not exist)")
    s.add_argument("--shadows", type=int, required=True, help="M (even)")
    s.add_argument("--samples", type=int, required=True, help="train-split samples N (>= 20)")
    s.add_argument("--classes", type=int, default=10, help="classes C of the logits (default 10)")
    s.add_argument("--queries", type=int, default=1, help="queries (augmentations) per sample Q (default 1)")
    s.add_argument("--under-fraction", type=float, default=0.2, help="fraction of samples in group 'under'")
    s.add_argument("--separation-under", type=float, default=3.0, help="phi shift when IN, group 'under'")
    s.add_argument("--separation-over", type=float, default=0.0, help="phi shift when IN, group 'over'")
    s.add_argument("--sigma", type=float, default=1.0, help="noise std of phi across shadows")
    s.add_argument("--test-samples", type=int, default=0, help="test-split samples (never IN)")
    s.add_argument("--sample-chunk", type=int, default=SAMPLE_CHUNK,
                   help=f"samples per logits chunk (default {SAMPLE_CHUNK})")
    s.add_argument("--seed", type=int, default=0,
                   help="seed of everything random in the store: labels, keep masks, logits (default 0)")
    s.add_argument("--logits", choices=("realistic", "compressible"), default="realistic",
                   help="realistic (default): the other classes' logits random, so the store compresses like "
                        "trained logits (~1.08x); compressible: zeros (~8x smaller, flatters read times)")
    return {"import-lira": cmd_import_lira, "export-lira": cmd_export_lira, "synth-store": cmd_synth_store}


def cmd_import_lira(args: argparse.Namespace) -> int:
    from mia_hpc.interop.lira_format import import_lira

    r = import_lira(args.exp_dir, args.out, under_mask=args.under_mask, augs=args.augs,
                    skip_incomplete=args.skip_incomplete, sample_chunk=args.sample_chunk)
    print(f"store:   {r['path']}")
    pad = " (+1 empty, not-done shadow: the spec needs an even M)" if r["padded"] else ""
    print(f"shadows: {r['shadows']}{pad}")
    print(f"samples: {r['samples']}, classes: {r['classes']}, queries: {r['queries']} ({r['queries_how']})")
    print(f"groups:  {r['groups_how']}; images: {r['images_how']}")
    if r["skipped"]:
        print(f"skipped (no logits): {', '.join(r['skipped'])}")
    print(f"next:    mia-hpc analyze {r['path']} --out ANALYSIS_DIR")
    return 0


def cmd_export_lira(args: argparse.Namespace) -> int:
    from mia_hpc.interop.lira_format import export_lira

    r = export_lira(args.store, args.out)
    print(f"wrote {r['experiments']} experiment folders to {r['path']} "
          f"({r['samples']} samples, {r['queries']} queries, {r['classes']} classes)")
    return 0


def cmd_synth_store(args: argparse.Namespace) -> int:
    from mia_hpc.interop.synth import synth_store

    r = synth_store(args.out, shadows=args.shadows, samples=args.samples, classes=args.classes, queries=args.queries,
                    under_fraction=args.under_fraction, separation_under=args.separation_under,
                    separation_over=args.separation_over, seed=args.seed, test_samples=args.test_samples,
                    sigma=args.sigma, sample_chunk=args.sample_chunk, logits=args.logits)
    mib = r["bytes"] / 2**20
    print(f"store:      {r['path']}")
    print(f"dims:       {r['shadows']} shadows x {r['samples']} samples x {r['queries']} queries"
          f" x {r['classes']} classes, {r['logits']} logits")
    print(f"size:       {mib:.1f} MiB in {r['files']} files")
    print(f"logits:     {r['logits_bytes'] / 2**20:.1f} MiB, {r['logits_bytes_on_disk'] / 2**20:.1f} MiB on disk "
          f"(compression {r['logits_bytes'] / max(r['logits_bytes_on_disk'], 1):.2f}x)")
    print(f"write time: {r['seconds']:.2f} s ({r['shadows'] / max(r['seconds'], 1e-9):.1f} shadows/s, "
          f"{mib / max(r['seconds'], 1e-9):.1f} MiB/s)")
    print("analytic AUROC: " + ", ".join(f"{g} {a:.3f}" for g, a in r["analytic_auroc"].items()))
    return 0

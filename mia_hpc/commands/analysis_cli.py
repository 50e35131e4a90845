"""Analysis subcommands: ``report``, and the options and handler of ``mia-hpc bench analyze``.

``register(subparsers)`` adds them to the main parser and returns ``{command: handler}``; a handler
takes the parsed namespace and returns the exit code. :func:`add_bench_analyze_arguments` fills any
parser with the benchmark's options, so the same options can hang under ``mia-hpc bench analyze``.
Torch-free.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Callable

from mia_hpc.contract.spec import SpecError


def add_bench_analyze_arguments(p: argparse.ArgumentParser) -> None:
    """The options of the analysis benchmark (see :mod:`analysis.tools.analyze_bench`)."""
    p.add_argument("store", metavar="STORE", nargs="?", default=None,
                   help="analyse this existing store (default: write a synthetic one of the size below)")
    p.add_argument("--shadows", type=int, default=2000, help="synthetic store: shadows (even; default 2000)")
    p.add_argument("--samples", type=int, default=20000, help="synthetic store: train samples (default 20000)")
    p.add_argument("--classes", type=int, default=10, help="synthetic store: classes (default 10)")
    p.add_argument("--queries", type=int, default=1, help="synthetic store: queries (default 1)")
    p.add_argument("--logits", choices=("realistic", "compressible"), default="realistic",
                   help="synthetic store: realistic (default; compresses like trained logits, ~1.08x) or "
                        "compressible (zeros for the other classes, ~8x: flatters the read)")
    p.add_argument("--targets", type=int, default=None, help="target shadows (default: the spec's; 0 = all)")
    p.add_argument("--out", default=None,
                   help="keep the synthetic store and the analysis in this folder (reused when the same size is "
                        "there; default: a temporary folder, removed afterwards)")
    p.add_argument("--scheduler", default=None,
                   help="dask scheduler address for the analysis ('local': a 2-process LocalCluster)")
    p.add_argument("--quick", action="store_true",
                   help="time 'analyze --quick' (attacks, tables, report; no paper extras)")
    p.add_argument("--json", default="", help="also write the figures to this JSON file")


def register(subparsers: argparse._SubParsersAction) -> dict[str, Callable[[argparse.Namespace], int]]:
    """Add ``report`` to ``subparsers``; return its handler (``bench analyze`` hangs under ``bench``)."""
    r = subparsers.add_parser("report", help="(re)build the HTML report of an analysis folder")
    r.add_argument("analysis_dir", metavar="ANALYSIS_DIR",
                   help="analysis folder (what 'mia-hpc analyze --out' wrote)")
    r.add_argument("--out", default=None,
                   help="folder for index.html (default ANALYSIS_DIR/report); its file links point back into ANALYSIS_DIR")
    return {"report": cmd_report}


def cmd_bench_analyze(args: argparse.Namespace) -> int:
    from analysis.tools.analyze_bench import bench_analyze, format_bench_analyze

    if args.store is not None and not (Path(args.store) / "zarr.json").is_file():
        raise SpecError(f"{args.store}: not a store (no zarr.json)")
    for k in ("shadows", "samples", "classes", "queries"):
        if getattr(args, k) < 1:
            raise SpecError(f"--{k}: must be >= 1, got {getattr(args, k)}")
    if args.shadows % 2 or args.shadows < 2:
        raise SpecError(f"--shadows: must be even and >= 2, got {args.shadows}")
    if args.samples < 20:
        raise SpecError(f"--samples: must be >= 20, got {args.samples}")
    if args.classes < 2:
        raise SpecError(f"--classes: must be >= 2, got {args.classes}")
    r = bench_analyze(args.store, shadows=args.shadows, samples=args.samples, classes=args.classes,
                      queries=args.queries, targets=args.targets, workdir=args.out,
                      keep=args.out is not None, scheduler=args.scheduler, extras=not args.quick,
                      logits=args.logits)
    print(format_bench_analyze(r))
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2) + "\n")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from analysis.output.html_report import write_report

    if not Path(args.analysis_dir).is_dir():
        raise SpecError(f"ANALYSIS_DIR: {args.analysis_dir} is not a folder; give what 'mia-hpc analyze --out' wrote")
    print(write_report(args.analysis_dir, report_dir=args.out))
    return 0

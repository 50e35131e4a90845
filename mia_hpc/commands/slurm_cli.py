"""``mia-hpc submit`` and ``mia-hpc render-sbatch``: the Slurm subcommands.

``register(subparsers)`` adds them to the main parser and returns ``{command: handler}``; a handler
takes the parsed namespace and returns the exit code. Bad input raises
:class:`~mia_hpc.contract.spec.SpecError` (exit code 2 in the CLI); Slurm failures raise
:class:`~mia_hpc.launch.slurm.SlurmError`, which is turned into a :class:`SpecError`-style
one-line error here as well, since the fix (install/configure Slurm) is also on the user's side.
"""

from __future__ import annotations

import argparse
import shlex
from typing import Callable

from mia_hpc.commands import add_spec_variant_arguments, load_spec_variant
from mia_hpc.contract.spec import SpecError


def register(subparsers: argparse._SubParsersAction) -> dict[str, Callable[[argparse.Namespace], int]]:
    """Add ``submit`` and ``render-sbatch`` to ``subparsers``; return their handlers."""
    s = subparsers.add_parser("submit", help="submit a spec to Slurm (array job + dependent analysis) and return")
    s.add_argument("spec", metavar="SPEC", help="TOML experiment spec, e.g. jobs/demo.toml")
    s.add_argument("--profile", required=True, help="cluster profile, e.g. slurm/profiles/generic-gpu.toml")
    s.add_argument("--out", required=True, help="run directory; the store is OUT/store.zarr")
    s.add_argument("--no-analyze", action="store_true", help="submit only the shadows' array job")
    s.add_argument("--adaptive", action="store_true",
                   help="doubling waves until the spec's [adaptive] quantities converge: each wave an array job, "
                        "then a step job that stops or submits the next wave")
    s.add_argument("--wait", action="store_true", help="with --adaptive: stay attached, print each wave, until the end")
    s.add_argument("--quick", action="store_true", help="with --adaptive: the final report without the paper extras")
    add_spec_variant_arguments(s, what="submit")  # --tiny: a smoke test of the cluster setup in minutes

    r = subparsers.add_parser("render-sbatch", help="write sbatch scripts (array job, analysis) for a spec")
    r.add_argument("spec", metavar="SPEC", help="TOML experiment spec, e.g. jobs/demo.toml")
    r.add_argument("--profile", required=True, help="cluster profile, e.g. slurm/profiles/generic-gpu.toml")
    r.add_argument("--out", required=True, help="run directory; scripts go to OUT/slurm/, the store is OUT/store.zarr")
    add_spec_variant_arguments(r, what="render")
    return {"submit": cmd_submit, "render-sbatch": cmd_render_sbatch}


def cmd_submit(args: argparse.Namespace) -> int:
    from mia_hpc.api import submit
    from mia_hpc.launch.slurm import SlurmError

    if (args.wait or args.quick) and not args.adaptive:
        raise SpecError("--wait/--quick: only with --adaptive")
    if args.adaptive:
        return _submit_adaptive(args)
    try:
        res = submit(load_spec_variant(args), args.out, args.profile, analyze=not args.no_analyze)
    except SlurmError as err:
        raise SpecError(str(err)) from None
    print("\n".join(res.lines()))
    print(f"progress: mia-hpc status {res.store}")
    return 0


def _submit_adaptive(args: argparse.Namespace) -> int:
    from mia_hpc.api import submit
    from mia_hpc.launch.slurm import SlurmError
    from mia_hpc.pipeline.adaptive import wait_adaptive

    try:  # mia_hpc.api.submit is the one place that picks plain, staged or adaptive
        res = submit(load_spec_variant(args), args.out, args.profile, analyze=not args.no_analyze,
                     adaptive=True, extras=not args.quick)
        print("\n".join(res.lines()))
        if not args.wait:
            print(f"progress: mia-hpc adaptive-status {res.out}")
            return 0
        done = wait_adaptive(res.out, on_wave=lambda w: print(
            f"wave of {w.shadows} shadows: " + "  ".join(f"{k} = {v if v is None else round(v, 4)}"
                                                        for k, v in w.values.items()), flush=True))
    except SlurmError as err:
        raise SpecError(str(err)) from None
    print("\n".join(done.lines()))
    return 0


def cmd_render_sbatch(args: argparse.Namespace) -> int:
    from mia_hpc.launch.sbatch import render_sbatch

    shadows, analysis = render_sbatch(load_spec_variant(args), args.out, args.profile)
    print(f"shadows:  {shadows}")
    print(f"analysis: {analysis}")
    print(f"submit:   jobid=$(sbatch --parsable {shlex.quote(str(shadows))}) && "
          f"sbatch --dependency=afterok:${{jobid%%;*}} {shlex.quote(str(analysis))}")
    return 0

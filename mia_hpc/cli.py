"""The ``mia-hpc`` command line: a thin wrapper over ``mia_hpc.api`` and ``analysis.output.report``.

Errors a user can fix (a bad spec, a foreign or damaged store, a path that cannot be used, a failed
shard) are printed as one line ``mia-hpc: error: ...`` with exit code 2 (1 for a failed shard), and
anything else as one line ``mia-hpc: internal error: ...`` with exit code 3: never a traceback
(``MIA_HPC_TRACEBACK=1`` shows it). Ctrl-C ends with one line and exit code 130.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import signal
import sys
from pathlib import Path
from typing import Iterator

from mia_hpc import __version__
from mia_hpc.commands import add_spec_variant_arguments, load_spec_variant
from mia_hpc.contract.spec import SpecError

_EXTRA_HANDLERS: dict = {}  # subcommand groups registered from mia_hpc/commands/

# spellings of an earlier grammar: (command words, option; None: no --out) -> the new spelling, in one line
_OLD_SPELLINGS = {
    (("bench", "train"), "--spec"): "the spec is positional: mia-hpc bench train SPEC",
    (("adaptive-figure",), "--spec"): "the spec is positional: mia-hpc adaptive-figure STORE [SPEC] --out DIR",
    (("bench", "analyze"), "--store"): "the store is positional: mia-hpc bench analyze [STORE]",
    (("bench", "analyze"), "--workdir"): "the folder to keep is --out: mia-hpc bench analyze --out DIR",
    (("synth-store",), None): "the store to create is --out: mia-hpc synth-store --out STORE --shadows M --samples N",
}


class _Parser(argparse.ArgumentParser):
    """argparse, with one-line errors for the old spellings and for a missing command."""

    argv: list[str] = []  # the command line being parsed (set in main), for the old spellings' hints

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.required_commands: list[tuple[_Parser, str, str]] = []  # checked after parsing, in main

    def error(self, message: str):  # type: ignore[override]
        words = [w for w in self.argv if not w.startswith("-")]
        for (cmd, flag), new in _OLD_SPELLINGS.items():
            if words[:len(cmd)] != list(cmd):
                continue
            if flag is None and not any(a == "--out" or a.startswith("--out=") for a in self.argv):
                self.exit(2, f"mia-hpc {' '.join(cmd)}: error: --out is required; {new}\n")
            if flag is not None and any(a == flag or a.startswith(flag + "=") for a in self.argv):
                self.exit(2, f"mia-hpc {' '.join(cmd)}: error: {flag} is no longer an option; {new}\n")
        super().error(message)


def _required_command(top: _Parser, parser: _Parser, sub: argparse._SubParsersAction, what: str) -> None:
    """Say "a command is required: run, status, ..." (not argparse's internal dest) when none is given."""
    top.required_commands.append((parser, sub.dest, f"{what} is required: {', '.join(sub.choices)}"))


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="mia-hpc", description="The mia-hpc command line: train a spec's shadow models into a store, "
                                            "analyse the store, and run either on a laptop or a Slurm cluster.")
    p.add_argument("--version", action="version", version=f"mia-hpc {__version__}",
                   help="print the version (mia-hpc X.Y.Z) and exit")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND", help="what to do; 'mia-hpc COMMAND --help' for its options")

    r = sub.add_parser("run", help="train a spec's shadows into a store (resuming), then analyse it")
    r.add_argument("spec", metavar="SPEC", help="TOML experiment spec, e.g. jobs/demo.toml")
    r.add_argument("--out", required=True, help="run directory; the store is OUT/store.zarr")
    r.add_argument("--executor", default="local", choices=["local", "debug"],
                   help="local: submitit subprocesses (default); debug: in this process")
    r.add_argument("--parallel", type=int, default=0, help="shard processes at once (default: cores)")
    r.add_argument("--device", default="auto", help="torch device (default: cuda if available)")
    r.add_argument("--no-analyze", action="store_true", help="stop after training")
    r.add_argument("--adaptive", action="store_true",
                   help="train in doubling waves until the spec's [adaptive] metrics converge")
    r.add_argument("--compare-full", action="store_true",
                   help="with --adaptive: afterwards train all shadows and report the full run's values too")
    r.add_argument("--quick", action="store_true",
                   help="the final report without the paper extras (as 'analyze --quick')")
    add_spec_variant_arguments(r)

    s = sub.add_parser("status", help="shadows done / total, per shard")
    s.add_argument("store", metavar="STORE", help="the store to read, e.g. runs/demo/store.zarr")
    s.add_argument("--verify", action="store_true",
                   help="read every chunk against its checksum and each done shadow against its digest; "
                        "name what is damaged, missing or diverged (docs/reliability.md)")
    s.add_argument("--reset-broken", action="store_true",
                   help="verify (implies --verify), then mark the shadows named not done, so a re-run redoes them")

    a = sub.add_parser("analyze", help="memorization, privacy scores and attacks from a store")
    a.add_argument("store", metavar="STORE", help="the store to analyse, e.g. runs/demo/store.zarr")
    a.add_argument("--out", required=True, help="output directory for tables and plots")
    a.add_argument("--targets", type=int, default=None, help="target shadows (default: the spec's)")
    a.add_argument("--lira-variant", choices=("ours", "reference"), default=None,
                   help="LiRA as we score it or as the reference code does (default: the spec's "
                        "analysis.lira_variant; see docs/lira-variants.md)")
    a.add_argument("--scheduler", default=None,
                   help="run on a dask cluster: a scheduler address or .json file, or 'local' (2 worker processes)")
    a.add_argument("--cluster", default=None, metavar="PROFILE",
                   help="start a dask cluster of Slurm worker jobs from this profile (slurm/profiles/NAME.toml; "
                        "each job gets the profile's partition, account, cores, memory, time, container), run "
                        "the analysis on it and cancel the jobs at the end; the store must be on a shared filesystem")
    a.add_argument("--workers", type=int, default=2,
                   help="with --cluster: worker jobs to start (default 2)")
    a.add_argument("--quick", action="store_true",
                   help="attacks, memorization and privacy only (no challenge sets, bootstrap, theory, sweep)")
    a.add_argument("--memory-gb", default=None, metavar="GIB",
                   help="memory budget of the analysis in GiB (default 3): what is per target waits on local "
                        "disk under --out when it does not fit; no result depends on it")

    t = sub.add_parser("train-shard", help="train one shard of a store (one array task)")
    t.add_argument("store", metavar="STORE", help="the store to train into (made by 'mia-hpc run' or 'submit')")
    t.add_argument("--shard", type=int, required=True, help="this task's shard, 0 .. N-1 (the array task id)")
    t.add_argument("--of", type=int, required=True, dest="n_shards", metavar="N",
                   help="number of shards the store's shadows are split into")
    t.add_argument("--device", default="auto", help="torch device (default: cuda if available)")
    t.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads when the spec's train.threads is 0 (default 0: torch's own)")

    b = sub.add_parser("bench", help="benchmarks: 'bench train' (the trainer), 'bench analyze' (the analysis)")
    bsub = b.add_subparsers(dest="what", metavar="BENCHMARK", help="which benchmark: train or analyze")
    bt = bsub.add_parser("train", help="batched trainer vs a plain loop, in one run")
    bt.add_argument("spec", metavar="SPEC", help="TOML experiment spec whose shadows to time, e.g. jobs/demo.toml")
    bt.add_argument("--shadows", type=int, default=0,
                    help="K shadows trained at once (default: the spec's shadows.batch; 0 there: auto)")
    bt.add_argument("--steps", type=int, default=5, help="timed training steps of the projection (after 2 warm-up)")
    bt.add_argument("--backend", default="auto", choices=["auto", "vmap", "sequential"],
                    help="how the K stacked shadows run: vmap (grouped kernels), sequential (one model after "
                         "the other), or auto (default: vmap on an accelerator, sequential on a CPU)")
    bt.add_argument("--tiny", action="store_true", help="bench the spec's tiny form (mia_hpc.pipeline.tiny)")
    bt.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's own)")
    bt.add_argument("--compare", action=argparse.BooleanOptionalAction, default=None,
                    help="also train shadows to the end batched and one at a time on the spec's own data "
                         "(default: only for the embedded digits)")
    bt.add_argument("--epochs", type=int, default=0, help="override the spec's epochs")
    bt.add_argument("--device", default="auto", help="torch device (default: cuda if available)")
    bt.add_argument("--json", default="", help="also write the figures to this JSON file")

    sp = sub.add_parser("spec", help="validate a spec and print it normalized, or list every field")
    sp.add_argument("spec", metavar="SPEC", nargs="?", help="TOML spec to validate (omit to list the fields)")
    sp.add_argument("--tiny", action="store_true", help="print the spec's tiny form (what 'run --tiny' runs)")

    from mia_hpc.commands import slurm_cli

    _EXTRA_HANDLERS.update(slurm_cli.register(sub))
    from mia_hpc.commands import interop_cli

    _EXTRA_HANDLERS.update(interop_cli.register(sub))
    from mia_hpc.commands import stages_cli

    _EXTRA_HANDLERS.update(stages_cli.register(sub))
    from mia_hpc.commands import analysis_cli

    _EXTRA_HANDLERS.update(analysis_cli.register(sub))
    from mia_hpc.commands import adaptive_cli

    _EXTRA_HANDLERS.update(adaptive_cli.register(sub))
    ba = bsub.add_parser("analyze", help="whole analysis vs one read of the logits: time, ratio, peak RSS")
    analysis_cli.add_bench_analyze_arguments(ba)
    _required_command(p, p, sub, "a command")
    _required_command(p, b, bsub, "a benchmark")
    for group in (sub, bsub):  # each command's --help starts with what it does
        for choice in group._choices_actions:
            group.choices[choice.dest].description = group.choices[choice.dest].description or choice.help
    return p


def _check_out_dir(out: str, flag: str = "--out") -> None:
    """Refuse an output folder that is a file or cannot be created, before anything is written."""
    path = Path(out)
    if path.exists():
        if not path.is_dir():
            raise SpecError(f"{flag} {out}: exists and is not a folder; give a folder path")
        if not os.access(path, os.W_OK | os.X_OK):
            raise SpecError(f"{flag} {out}: folder is not writable; give a folder you may write to")
        return
    existing = path.absolute().parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise SpecError(f"{flag} {out}: cannot be created, {existing} is not a folder; give a folder path")
    # access() says yes to root everywhere and knows nothing of read-only mounts or /proc: try it
    try:
        path.mkdir(parents=True)
    except OSError as err:
        raise SpecError(f"{flag} {out}: cannot be created ({err.strerror or err}); give a folder you may "
                        "write to") from None
    made = path.absolute()
    while made != existing:  # leave nothing behind: the command itself creates it when it gets there
        made.rmdir()
        made = made.parent


def _cmd_run(args) -> int:
    from mia_hpc import api

    if args.parallel < 0:
        raise SpecError(f"--parallel: must be >= 0 (0: as many as cores), got {args.parallel}")
    _check_out_dir(args.out)
    spec = load_spec_variant(args)
    if args.adaptive:  # api.run is the one place that picks plain, staged or adaptive
        res = api.run(spec, args.out, executor=args.executor, parallel=args.parallel, device=args.device,
                      adaptive=True, compare_full=args.compare_full, analyze=not args.no_analyze,
                      extras=not args.quick)
        print("\n".join(res.lines()))
        print(f"per-wave values in {Path(args.out) / 'waves'}; summary {Path(args.out) / 'adaptive.json'}")
        if not args.no_analyze:  # the report of the shadows used; its path is the last line
            print(f"report: {Path(args.out) / 'analysis' / 'report' / 'index.html'}")
        return 0

    res = api.run(spec, args.out, executor=args.executor, analyze=not args.no_analyze, device=args.device,
                  parallel=args.parallel, extras=not args.quick)
    print("\n".join(api.status(res["store"]).lines()))
    if res["analysis"] is not None:
        from analysis.output.report import terminal_lines

        print("\n".join(terminal_lines(res["analysis"])))
    return 0


def _cmd_status(args) -> int:
    from mia_hpc import api

    if args.reset_broken:  # it needs the findings: --reset-broken alone used to do nothing, silently
        args.verify = True
    from mia_hpc.contract.store import StoreError

    try:
        print("\n".join(api.status(args.store).lines()))
    except StoreError as err:
        if not args.verify or not (Path(args.store) / "zarr.json").is_file():
            raise
        print(f"status: {err}")  # e.g. a damaged done flag: verify names it and can reset it
    if not args.verify:
        return 0
    from mia_hpc.contract.verify import reset_shadows, verify_store

    broken = verify_store(args.store)
    for b in broken:
        print(f"{b.label} {b.line(args.store)}")
    if not broken:
        print("verify: every chunk matches its checksum, every done shadow is complete, finite and matches its digest")
        return 0
    shadows = sorted({b.shadow for b in broken if b.shadow is not None})
    if args.reset_broken and shadows:
        reset_shadows(args.store, shadows)
        print(f"reset: shadows {shadows} marked not done; re-run the same 'mia-hpc run' or 'submit' to redo them")
    if any(b.shadow is None for b in broken):
        print(f"verify: {args.store} has damage that no re-run repairs: re-create it (new --out) from its spec")
    return 1


def _cmd_analyze(args) -> int:
    from contextlib import nullcontext

    from analysis import analyze
    from analysis.output.report import terminal_lines

    from analysis.store_io.load import open_shadows

    from mia_hpc.contract.settings import memory_budget_bytes

    memory_gb = None
    if args.memory_gb is not None:
        try:
            memory_budget_bytes(args.memory_gb, "--memory-gb")
        except ValueError as err:
            raise SpecError(str(err)) from None
        memory_gb = float(args.memory_gb)
    _check_out_dir(args.out)
    if args.cluster and args.scheduler:
        raise SpecError("--cluster and --scheduler: give one (a cluster to start, or the address of a running one)")
    if args.workers < 1:
        raise SpecError(f"--workers: must be >= 1, got {args.workers}")
    if args.cluster:
        from mia_hpc.launch.profile import load_profile

        profile = load_profile(args.cluster)  # a bad profile fails before anything is submitted
    open_shadows(args.store)  # refuse a store that cannot be analysed before --out is created
    created = not Path(args.out).exists()
    if args.cluster:
        from mia_hpc.launch.dask_slurm import slurm_dask_client

        out = Path(args.out).resolve()
        dask_ctx = slurm_dask_client(profile, workers=args.workers, log_dir=out.parent / f"{out.name}.dask-workers")
    elif args.scheduler:
        from analysis.store_io.distributed import client_for

        dask_ctx = client_for(args.scheduler)
    else:
        dask_ctx = nullcontext()
    with _removed_on_error(Path(args.out) if created else None), dask_ctx:
        res = analyze(args.store, args.out, targets=args.targets, extras=not args.quick,
                      lira_variant=args.lira_variant, memory_gb=memory_gb)
    print("\n".join(terminal_lines(res)))
    return 0


@contextlib.contextmanager
def _removed_on_error(path: Path | None) -> Iterator[None]:
    """Remove ``path`` (a folder this command created) if the block fails: nothing half-written stays."""
    try:
        yield
    except BaseException:
        if path is not None:
            shutil.rmtree(path, ignore_errors=True)
        raise


def _cmd_train_shard(args) -> int:
    from mia_hpc.launch.worker import train_shard

    done = train_shard(args.store, args.shard, args.n_shards, device=args.device, threads=args.threads)
    print(f"shard {args.shard}/{args.n_shards}: trained {len(done)} shadows")
    return 0


def _cmd_bench(args) -> int:
    if args.what == "analyze":
        from mia_hpc.commands import analysis_cli

        return analysis_cli.cmd_bench_analyze(args)
    from mia_hpc.pipeline.train_bench import bench_projection, bench_train, format_bench, format_projection

    spec = load_spec_variant(args)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.epochs:
        import dataclasses

        spec = dataclasses.replace(spec, train=dataclasses.replace(spec.train, epochs=args.epochs))
    proj = bench_projection(spec, shadows=args.shadows, steps=args.steps, device=args.device, backend=args.backend)
    print(format_projection(proj))
    if args.compare or (args.compare is None and spec.data.source == "digits"):
        r = bench_train(spec, shadows=args.shadows, epochs=args.epochs, device=args.device)
        print(format_bench(r))
    else:  # the comparison's record layout (mia-hpc plan --bench reads it), filled from the projection
        r = {"device": proj["device"], "arch": proj["arch"], "epochs": spec.train.epochs, "source": "projection",
             "auto_backend": proj["backend"], "shadows": proj["batched"]["k"], "spec_shadows": proj["spec_shadows"],
             "trainers": {proj["backend"]: {"seconds_per_shadow": proj["batched"]["seconds_per_shadow"]},
                          "loop": {"seconds_per_shadow": proj["loop"]["seconds_per_shadow"]}}}
    r["projection"] = proj
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2))
    return 0


def _cmd_spec(args) -> int:
    from mia_hpc.contract.spec import describe_fields, load_spec

    if args.spec:
        spec = load_spec(args.spec)
        if args.tiny:
            from mia_hpc.pipeline.tiny import tiny_spec

            spec = tiny_spec(spec)
        print(json.dumps(spec.to_dict(), indent=2, ensure_ascii=False))  # a name in any script, as written
        print(f"# spec hash {spec.hash()}")
    else:
        for key, tp, default, doc in describe_fields():
            print(f"{key:32} {default:>12}  {tp}: {doc}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    _Parser.argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    for sub_parser, dest, message in parser.required_commands:
        if getattr(args, dest, "") is None:
            sub_parser.error(message)
    handlers = {"run": _cmd_run, "status": _cmd_status, "analyze": _cmd_analyze,
                "train-shard": _cmd_train_shard, "bench": _cmd_bench, "spec": _cmd_spec, **_EXTRA_HANDLERS}
    try:
        return handlers[args.cmd](args)
    except BaseException as exc:
        # zarr's reader leaves a failed read's sibling chunk reads pending; asyncio reports each as
        # "Task was destroyed but it is pending!" at exit, burying the one-line error
        logging.getLogger("asyncio").setLevel(logging.CRITICAL)
        code = _report(exc)
        if code is None:
            raise
        return code


def _report(exc: BaseException) -> int | None:
    """Print ``exc`` as one line and return the exit code (None: let it propagate, e.g. SystemExit)."""
    from mia_hpc.contract.errors import ShardFailed
    from mia_hpc.contract.store import StoreError  # here, not at the top: zarr is slow to import, --help need not wait

    if isinstance(exc, (SpecError, StoreError)):
        print(f"mia-hpc: error: {exc}", file=sys.stderr)
        return 2
    if isinstance(exc, ShardFailed):
        print(f"mia-hpc: error: {exc}", file=sys.stderr)
        return 1
    if isinstance(exc, BrokenPipeError):  # output piped into `head` and the like: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    if isinstance(exc, KeyboardInterrupt):
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C while exiting: no traceback
        print("mia-hpc: interrupted; finished shadows are kept, re-run the same command to resume",
              file=sys.stderr)
        return 130
    if isinstance(exc, OSError):  # a path the user gave: missing, not a folder, not writable, disk full
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"mia-hpc: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    if isinstance(exc, Exception) and not os.environ.get("MIA_HPC_TRACEBACK"):  # a bug, in one line
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        print(f"mia-hpc: internal error: {type(exc).__name__}: {first} (please report it; "
              "MIA_HPC_TRACEBACK=1 shows where)", file=sys.stderr)
        return 3
    return None


def entry() -> None:
    """The ``mia-hpc`` console script: :func:`main`, then exit with its code.

    After Ctrl-C (code 130) the process leaves without the interpreter's teardown: a run's driver
    has torch and ~2,600 modules loaded, whose garbage collection and teardown took 4-9 s on two
    busy cores (long enough for a user to press Ctrl-C again). Nothing is left to finish by then:
    workers write and release their own shadows and leases; only stdio is flushed.
    """
    code = main()
    if code == 130:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    entry()

"""Shadow-budget subcommands: ``adaptive-status``, ``adaptive-figure``, ``plan``, ``compare-mem``.

``register(subparsers)`` adds them to the main parser and returns ``{command: handler}``; a handler
takes the parsed namespace and returns the exit code. Bad input raises
:class:`~mia_hpc.contract.spec.SpecError` (one line, exit code 2 in the CLI), before anything is written.
Thin wrappers over :mod:`mia_hpc.pipeline.adaptive`, :mod:`mia_hpc.pipeline.plan`, :mod:`analysis.output.adaptive_figure`
and :mod:`analysis.studies.dp_compare`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from pathlib import Path
from typing import Callable

from mia_hpc.contract.spec import SpecError


def register(subparsers: argparse._SubParsersAction) -> dict[str, Callable[[argparse.Namespace], int]]:
    """Add the subcommands; return their handlers."""
    s = subparsers.add_parser("adaptive-status", help="waves, values and stop of an adaptive run (run or submit)")
    s.add_argument("out", metavar="RUN_DIR", help="run directory of 'mia-hpc run/submit --adaptive' (their --out)")

    f = subparsers.add_parser("adaptive-figure",
                              help="replay the adaptive stop rule on a finished store's prefixes; write figures")
    f.add_argument("store", metavar="STORE", help="a finished store with balanced wave prefixes (shadows.keep_block)")
    f.add_argument("spec", metavar="SPEC", nargs="?", default=None,
                   help="take the [adaptive] table from this spec (same store hash; default: the store's own spec)")
    f.add_argument("--out", required=True, help="folder for the PNG figures, adaptive_curve.csv, adaptive_stops.md")
    f.add_argument("--watch", action="append", default=None, help="override adaptive.watch (repeatable)")
    f.add_argument("--tolerance", type=float, default=None, help="override adaptive.tolerance")
    f.add_argument("--first-wave", type=int, default=None, help="override adaptive.first_wave")
    f.add_argument("--every", type=int, default=None, help="prefix step of the curve (default: shadows.keep_block)")

    p = subparsers.add_parser("plan", help="predict the shadows each challenge group needs, from a pilot store")
    p.add_argument("spec", metavar="SPEC",
                   help="the planned experiment (TOML spec); its M, epochs and model set the cost")
    p.add_argument("--pilot", required=True, help="a store of the same recipe with a few shadows (>= 6)")
    p.add_argument("--pilot-shadows", type=int, default=None, help="use only the pilot's first N shadows")
    p.add_argument("--metric", default="auroc", help="'auroc' (default) or 'tpr@<x>%%', e.g. 'tpr@1%%'")
    p.add_argument("--target", type=float, default=0.9, help="value of the metric to reach (default 0.9)")
    p.add_argument("--attack", default="lira-online", help="lira-online (default), lira-offline, lira-fixed-variance")
    p.add_argument("--bench", default=None, help="a 'mia-hpc bench train --json' record for the time estimate")
    p.add_argument("--measure", action="store_true", help="time the trainer now (one epoch) for the time estimate")
    p.add_argument("--device", default="auto", help="with --measure: torch device")
    p.add_argument("--repeats", type=int, default=10, help="reference orders of the pilot's sweep (default 10)")
    p.add_argument("--json", default="", help="also write the predictions to this JSON file")

    c = subparsers.add_parser("compare-mem", help="memorization per group of two stores of the same data "
                                                  "(e.g. without and with DP-SGD, paper Fig. 4)")
    c.add_argument("store_a", metavar="STORE_A", help="first store (e.g. runs/demo/store.zarr, no DP)")
    c.add_argument("store_b", metavar="STORE_B", help="second store of the same samples (e.g. runs/fig4-dp/store.zarr)")
    c.add_argument("--out", required=True, help="folder for mem_compare.png/.csv/.md")
    c.add_argument("--labels", nargs=2, default=["no DP", "DP-SGD"], metavar=("A", "B"), help="panel labels")
    return {"adaptive-status": cmd_adaptive_status, "adaptive-figure": cmd_adaptive_figure, "plan": cmd_plan,
            "compare-mem": cmd_compare_mem}


def cmd_adaptive_status(args: argparse.Namespace) -> int:
    from mia_hpc.pipeline.adaptive import read_state, result_of

    state = read_state(args.out)
    if state is None:
        raise SpecError(f"{Path(args.out) / 'adaptive.json'}: no adaptive run recorded here (mia-hpc run/submit "
                        "--adaptive --out DIR)")
    res = result_of(args.out)
    lines = res.lines()
    if not res.finished:
        lines[0] = (f"adaptive: {state.get('status', 'running')}; {len(res.waves)} wave(s) evaluated, "
                    f"waves {state.get('wave_sizes')}")
    print("\n".join(lines))
    jobs = Path(args.out) / "slurm" / "adaptive.json"
    if jobs.is_file():
        rec = json.loads(jobs.read_text())
        for size, w in sorted(rec.get("waves", {}).items(), key=lambda kv: int(kv[0])):
            print(f"  slurm: wave {size}: array {w.get('array') or '-'}, step job {w.get('step')}")
    return 0 if res.finished else 1


def cmd_adaptive_figure(args: argparse.Namespace) -> int:
    from analysis.output.adaptive_figure import adaptive_figure
    from mia_hpc.contract.store import spec_of
    from mia_hpc.contract.spec import load_spec, spec_from_dict
    from mia_hpc.contract.store import open_store

    if not (Path(args.store) / "zarr.json").is_file():
        raise SpecError(f"{args.store}: not a mia-hpc store (no zarr.json)")
    spec = load_spec(args.spec) if args.spec else spec_of(open_store(args.store))
    over = {k: v for k, v in (("watch", args.watch), ("tolerance", args.tolerance), ("first_wave", args.first_wave))
            if v is not None}
    if over:
        d = spec.to_dict()
        d["adaptive"] = {**d["adaptive"], **over}
        try:
            spec = spec_from_dict(d)
        except SpecError as err:
            raise SpecError(f"--{str(err).split(':')[0].split('.')[-1].replace('_', '-')}: {err}") from None
    res = adaptive_figure(args.store, args.out, spec=spec, every=args.every)
    st = res["settings"]
    print(f"waves {st['waves']}, tolerance {st['tolerance']:g}; per watched key, the first wave within it:")
    full = res["curve"][res["curve"]["shadows"] == res["curve"]["shadows"].max()].set_index("key")["value"]
    for k, s in res["stops"].items():
        at = s or int(res["curve"]["shadows"].max())
        v = float(res["curve"][(res["curve"]["key"] == k) & (res["curve"]["shadows"] == at)]["value"].iloc[0])
        m = int(res["curve"]["shadows"].max())
        print(f"  {k}: " + (f"stop at {s} shadows, {v:.4f} (full run {full[k]:.4f}, {v - full[k]:+.4f})"
                            if s and s < m else f"no stop before the full run of {m} ({full[k]:.4f})"))
    for p in res["figures"]:
        print(f"figure: {p}")
    print(f"curve: {Path(args.out) / 'adaptive_curve.csv'}; stops for other settings: "
          f"{Path(args.out) / 'adaptive_stops.md'}")
    return 0


def _jsonable(v):
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, float):
        return v if math.isfinite(v) else (None if math.isnan(v) else ("inf" if v > 0 else "-inf"))
    if hasattr(v, "item"):
        return _jsonable(v.item())
    return v


def cmd_plan(args: argparse.Namespace) -> int:
    from mia_hpc.pipeline.plan import plan

    if args.bench and args.measure:
        raise SpecError("--bench and --measure: give one (a recorded benchmark, or a measurement now)")
    if args.repeats < 1:
        raise SpecError(f"--repeats: must be >= 1, got {args.repeats}")
    rep = plan(args.spec, args.pilot, metric=args.metric, target=args.target, attack=args.attack,
               pilot_shadows=args.pilot_shadows, bench=args.bench, measure=args.measure, device=args.device,
               repeats=args.repeats)
    print("\n".join(rep.lines()))
    if args.json:
        from analysis.store_io.atomic import write_text

        doc = {"settings": rep.result.settings, "groups": rep.rows(),
               "rate": dataclasses.asdict(rep.rate) if rep.rate else None}
        write_text(args.json, json.dumps(_jsonable(doc), indent=2) + "\n")
    return 0


def cmd_compare_mem(args: argparse.Namespace) -> int:
    from analysis.studies.dp_compare import CompareError, compare_memorization
    from analysis.output.report import format_table

    try:
        res = compare_memorization(args.store_a, args.store_b, args.out, labels=args.labels)
    except CompareError as err:
        raise SpecError(str(err)) from None
    t = res["table"][["n_samples", "mean mem", "mean mem lo", "mean mem hi", "frac mem > 0.5", "test accuracy",
                      "epsilon"]]
    t = t.reset_index()
    t.index = [f"{s} / {g}" for s, g in zip(t["store"], t["group"])]
    t.index.name = "store / group"
    print(format_table(t.drop(columns=["store", "group"])))
    for p in res["files"]:
        print(f"written: {p}")
    return 0

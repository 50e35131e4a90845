"""``mia-hpc stages OUT``: where a multi-stage run (``[selection]``, see :mod:`mia_hpc.pipeline.stages`) stands.

``register(subparsers)`` adds the command and returns ``{command: handler}``; the handler returns
the exit code (0: every stage finished, 1: something is left, 2 via SpecError: OUT is not a staged run).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Callable

from mia_hpc.contract.spec import SpecError


def register(subparsers: argparse._SubParsersAction) -> dict[str, Callable[[argparse.Namespace], int]]:
    """Add ``stages``; return its handler."""
    s = subparsers.add_parser("stages", help="progress of a multi-stage run: oracle, selection, attack, analysis")
    s.add_argument("out", metavar="RUN_DIR",
                   help="run directory of a spec with a [selection] table (what 'mia-hpc run/submit --out' made)")
    return {"stages": cmd_stages}


def stage_lines(out: str | Path) -> tuple[list[str], bool]:
    """Lines describing each stage under ``out``, and whether all of them are finished."""
    from mia_hpc import api
    from mia_hpc.pipeline.stages import attack_path, oracle_path, read_selection

    out = Path(out)
    if not oracle_path(out).exists() and not attack_path(out).exists():
        raise SpecError(f"{out}: no oracle store ({oracle_path(out)}); not a multi-stage run directory")
    lines, finished = [], True
    if oracle_path(out).exists():
        st = api.status(oracle_path(out))
        lines.append(f"oracle:    {st.done}/{st.total} shadows done ({oracle_path(out)})")
    sel = read_selection(out)
    if sel:
        thr = f", threshold {sel['threshold']:g}" if "threshold" in sel else ""
        lines.append(f"selection: {sel['kind']}{thr}: {sel['n_selected']} of {sel['n_candidates']} D_U candidates "
                     f"(hash {sel['hash']})")
    else:
        lines.append("selection: not done")
        finished = False
    if attack_path(out).exists():
        st = api.status(attack_path(out))
        lines.append(f"attack:    {st.done}/{st.total} shadows done ({attack_path(out)})")
        finished &= st.done == st.total
    else:
        lines.append("attack:    store not created yet")
        finished = False
    done = (out / "analysis" / "analysis.json").is_file()
    lines.append(f"analysis:  {'done' if done else 'not done'}")
    finished &= done
    jobs = out / "slurm" / "stages.json"
    if jobs.is_file():
        rec = json.loads(jobs.read_text())
        lines.append("slurm jobs: " + ", ".join(f"{k} {rec[k]}" for k in ("oracle", "selection", "shadows", "analysis")
                                                if rec.get(k)))
    return lines, finished


def cmd_stages(args: argparse.Namespace) -> int:
    lines, finished = stage_lines(args.out)
    print("\n".join(lines))
    return 0 if finished else 1

"""``mia-hpc plan SPEC --pilot STORE``: shadows needed per challenge group, and what they cost here.

The predictions come from :mod:`analysis.studies.planner` (Corollary 1 calibrated on the pilot's own
shadow-count sweep, and the pilot curve's 1/m extrapolation, each with a bootstrap interval). This
module checks that the pilot is a pilot *of SPEC* (same data, model and training recipe; only the
shadow count may differ), and turns shadow counts into time on the user's hardware:

* ``--bench FILE``: a ``mia-hpc bench train --json FILE`` record (seconds per shadow of the
  batched trainer on that machine, scaled to SPEC's epochs);
* ``--measure``: run that benchmark now, briefly (SPEC's batch of shadows for one epoch);
* otherwise the pilot store's own finishing rate (``finished_at``: how fast the pilot's shadows
  were written on the hardware that trained it), when it has at least two finished shadows.

Training cost is linear in shadows (every shadow takes the same number of steps), so hours =
shadows / rate.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mia_hpc.contract.spec import Spec, SpecError, load_spec

#: spec fields a pilot may differ in from the planned spec (they do not change what a shadow is)
_FREE = ("name", "seed", "shadows", "analysis", "adaptive", "store", "selection")


def check_pilot(spec: Spec, pilot: Spec, where: str) -> None:
    """Refuse a pilot trained with another recipe than ``spec`` (one line naming the first difference)."""
    a, b = spec.to_dict(), pilot.to_dict()
    for d in (a, b):
        for k in _FREE:
            d.pop(k, None)
        d["data"].pop("root", None)
        d["data"].pop("download", None)

    def first_diff(x: Any, y: Any, path: str) -> str | None:
        if isinstance(x, dict) and isinstance(y, dict):
            for k in sorted(set(x) | set(y)):
                r = first_diff(x.get(k), y.get(k), f"{path}.{k}" if path else k)
                if r:
                    return r
            return None
        return None if x == y else f"{path} ({y!r} in the pilot, {x!r} in the spec)"

    diff = first_diff(a, b, "")
    if diff:
        raise SpecError(f"{where}: is not a pilot of this spec: {diff}; a pilot must use the same data, model and "
                        "training recipe (only the shadow count and seed may differ)")


@dataclass
class Rate:
    """Seconds per shadow on the user's hardware, and where the number comes from."""

    seconds_per_shadow: float
    source: str
    notes: list[str] = field(default_factory=list)

    def hours(self, shadows: float) -> float:
        return shadows * self.seconds_per_shadow / 3600 if np.isfinite(shadows) else float("inf")


def rate_from_bench(spec: Spec, path: str | Path) -> Rate:
    """A ``mia-hpc bench train --json`` record, scaled to ``spec``'s epochs."""
    p = Path(path)
    try:
        r = json.loads(p.read_text())
        backend = r.get("auto_backend", "sequential")
        sps = float(r["trainers"][backend]["seconds_per_shadow"])
        epochs = int(r["epochs"])
    except FileNotFoundError:
        raise SpecError(f"--bench {p}: file not found; write one with 'mia-hpc bench train SPEC --json {p}'") \
            from None
    except (ValueError, KeyError, TypeError):
        raise SpecError(f"--bench {p}: not a 'mia-hpc bench train --json' record (needs trainers.<backend>."
                        "seconds_per_shadow and epochs); write one with 'mia-hpc bench train --json FILE'") from None
    if not (sps > 0 and epochs > 0):
        raise SpecError(f"--bench {p}: seconds_per_shadow and epochs must be > 0")
    notes = []
    if r.get("arch") and r["arch"] != spec.model.arch:
        notes.append(f"the bench trained {r['arch']}, the spec {spec.model.arch}: the time is only indicative")
    # training dominates and is linear in epochs; the per-shadow evaluation is not scaled (small)
    return Rate(sps * spec.train.epochs / epochs, f"bench {p} ({r.get('device', '?')}, {backend}, "
                f"{epochs} epochs, scaled to {spec.train.epochs})", notes)


def rate_measured(spec: Spec, device: str = "auto") -> Rate:
    """Run ``bench_train`` briefly (the spec's batch of shadows, one epoch) and scale to its epochs."""
    from mia_hpc.pipeline.train_bench import bench_train

    r = bench_train(spec, shadows=spec.shadows.batch, epochs=1, device=device)
    sps = float(r["trainers"][r["auto_backend"]]["seconds_per_shadow"])
    return Rate(sps * spec.train.epochs, f"measured now ({r['device']}, {r['auto_backend']}, 1 epoch x "
                f"{r['shadows']} shadows, scaled to {spec.train.epochs} epochs)")


def rate_from_pilot(store: str | Path) -> Rate | None:
    """The pilot's own finishing rate (its shadows' ``finished_at``), if it recorded two or more."""
    from mia_hpc.api import finish_rate
    from mia_hpc.contract.store import done_mask, open_store

    root = open_store(store)
    if "finished_at" not in root:
        return None
    done = done_mask(root)
    rate = finish_rate(np.asarray(root["finished_at"][...])[done])
    if not rate:
        return None
    return Rate(3600 / rate, f"the pilot's finishing rate ({rate:.1f} shadows/h over its {int(done.sum())} shadows, "
                "all its workers together)")


@dataclass
class PlanReport:
    """What ``mia-hpc plan`` prints: the predictions and their cost."""

    spec: Spec
    result: Any  # analysis.studies.planner.PlanResult
    rate: Rate | None

    def rows(self) -> list[dict[str, Any]]:
        """One dict per challenge group: the numbers of the printed table."""
        out = []
        pred = primary(self.result.settings["metric"])
        for s, r in self.result.groups().iterrows():
            m = _plan_m(r, self.result.settings["metric"])
            shadows = r[f"shadows {pred}"] if r["reachable"] else float("inf")
            out.append({"group": s, "n_samples": int(r["n_samples"]), "mean_mem": r["mean mem"],
                        "mean_mem_ci": [r["mean mem lo"], r["mean mem hi"]], "mean_h2": r["mean H2"],
                        "mean_h2_ci": [r["mean H2 lo"], r["mean H2 hi"]], "pilot_best": r["pilot best"],
                        "ceiling": r["ceiling A"], "reachable": bool(r["reachable"]),
                        "m": {p: [r[f"m {p}"], r[f"m {p} lo"], r[f"m {p} hi"]] for p in PREDICTORS},
                        "m_plan": m, "predictor": pred, "shadows_to_train": shadows,
                        "fits_spec": bool(np.isfinite(shadows) and shadows <= self.spec.shadows.count),
                        "hours": self.rate.hours(shadows) if self.rate else None})
        return out

    def lines(self) -> list[str]:
        st = self.result.settings
        head = (f"plan: {st['attack']} {st['metric']} >= {st['target']:g}; pilot {st['store']} ({st['pilot_shadows']} "
                f"shadows, up to {st['pilot_k_max']} references per side); spec {self.spec.name} "
                f"(M = {self.spec.shadows.count})")
        cols = ["group", "n", "mean mem [95%]", "mean H2 [95%]", "pilot", "ceiling", "refs/side: 1/mem [95%]",
                "1/H2", "fit [95%]", "shadows", "hours"]
        body = []
        for r in self.rows():
            mm, mh, mf = r["m"]["cor1-mem"], r["m"]["cor1-h2"], r["m"]["fit"]
            body.append([r["group"], str(r["n_samples"]), f"{r['mean_mem']:.2f} [{_g(r['mean_mem_ci'][0], 2)}, "
                         f"{_g(r['mean_mem_ci'][1], 2)}]", f"{r['mean_h2']:.2f} [{_g(r['mean_h2_ci'][0], 2)}, "
                         f"{_g(r['mean_h2_ci'][1], 2)}]", f"{r['pilot_best']:.3f}", _g(r["ceiling"], 3),
                         f"{_m(mm[0])} [{_m(mm[1])}, {_m(mm[2])}]", _m(mh[0]), f"{_m(mf[0])} [{_m(mf[1])}, {_m(mf[2])}]",
                         _m(r["shadows_to_train"]) + ("" if r["fits_spec"] or not np.isfinite(r["shadows_to_train"])
                                                      else " (> M)"),
                         "-" if r["hours"] is None else _h(r["hours"])])
        widths = [max(len(x) for x in col) for col in zip(cols, *body)]
        fmt = lambda row: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))  # noqa: E731
        out = [head, fmt(cols), "  ".join("-" * w for w in widths), *map(fmt, body)]
        pred = primary(st["metric"])
        out.append("refs/side: references per side each target needs (m IN + m OUT); shadows to train = 2 (m + 1) "
                   f"from the {pred!r} column ('inf': the target is above the group's ceiling"
                   + ("" if st["metric"] == "auroc" else "; for TPR targets a lower bound") + "). "
                   "'pilot' = the pilot's best value; 1/mem, 1/H2: Corollary 1 with the constant calibrated on "
                   f"{', '.join(st['calibration_sets']) or 'no set (none reached the target in the pilot)'}; "
                   "fit: the pilot curve's 1/m extrapolation.")
        if self.rate:
            out.append(f"time: {self.rate.seconds_per_shadow:.1f} s per shadow, from {self.rate.source}")
            out += [f"note: {n}" for n in self.rate.notes]
        else:
            out.append("time: unknown (no --bench FILE, no --measure, and the pilot recorded no finishing rate)")
        return out


PREDICTORS = ("cor1-mem", "cor1-h2", "fit")
#: the predictor "shadows to train" uses, per metric; chosen by scripts/plan_validation.py on the demo
#: (docs/planning.md): for AUROC the pilot curve's 1/m fit (median predicted/measured 1.05 from an 8-shadow
#: pilot, 7 of 8 within 2x), for TPR targets, which the fit does not predict, Corollary 1's 1/mem
#: (there a lower bound: it fell short by 2x in validation)
PRIMARY = {"auroc": "fit", "tpr": "cor1-mem"}


def primary(metric: str) -> str:
    """The predictor behind "shadows to train" for a sweep metric column (``auroc`` or ``tpr@...``)."""
    return PRIMARY["auroc" if metric == "auroc" else "tpr"]


def _plan_m(r: Any, metric: str) -> float:
    return r[f"m {primary(metric)}"] if r["reachable"] else float("inf")


def _g(v: float, d: int) -> str:
    return "nan" if v is None or not np.isfinite(v) else f"{v:.{d}f}"


def _m(v: float) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "nan"
    if math.isinf(v):
        return "inf"
    return f"{v:.0f}" if v >= 10 else f"{v:.1f}"


def _h(h: float) -> str:
    if not np.isfinite(h):
        return "inf"
    return f"{h * 60:.1f} min" if h < 1 else f"{h:.2f} h"


def plan(spec: str | Path | Spec, pilot: str | Path, *, metric: str = "auroc", target: float = 0.9,
         attack: str = "lira-online", pilot_shadows: int | None = None, bench: str | Path | None = None,
         measure: bool = False, device: str = "auto", n_boot: int = 200, repeats: int = 10) -> PlanReport:
    """Predict the shadows each challenge group of ``spec`` needs from the ``pilot`` store; add their cost."""
    from analysis.store_io.load import AnalysisError
    from analysis.studies.planner import PlanError, plan_from_pilot
    from mia_hpc.contract.store import spec_of
    from mia_hpc.contract.store import StoreError, open_store

    spec = spec if isinstance(spec, Spec) else load_spec(spec)
    p = Path(pilot)
    if not (p / "zarr.json").is_file():
        raise SpecError(f"--pilot {p}: not a mia-hpc store (no zarr.json); train a pilot first, e.g. "
                        "'mia-hpc run SPEC --out DIR' with shadows.count = 8 or 16")
    try:
        check_pilot(spec, spec_of(open_store(p)), f"--pilot {p}")
    except StoreError as err:
        raise SpecError(str(err)) from None
    if pilot_shadows is not None and pilot_shadows < 6:
        raise SpecError(f"--pilot-shadows: the pilot needs >= 6 shadows (2 references per side), got {pilot_shadows}")
    rate = None
    if bench:
        rate = rate_from_bench(spec, bench)
    elif measure:
        rate = rate_measured(spec, device)
    try:
        res = plan_from_pilot(p, metric=metric, target=target, attack=attack, shadow_limit=pilot_shadows,
                              n_boot=n_boot, repeats=repeats)
    except (PlanError, AnalysisError) as err:
        raise SpecError(str(err)) from None
    if rate is None:
        rate = rate_from_pilot(p)
    return PlanReport(spec, res, rate)

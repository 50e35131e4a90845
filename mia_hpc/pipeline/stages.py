"""Multi-stage experiments: memorization oracle -> selection -> attack run -> analysis (paper §6 (b), (c)).

A spec with ``[selection] kind = "singletons" | "subpopulation"`` runs in stages under one ``OUT``:

1. **oracle** -- :func:`oracle_spec` derives a plain (single-stage) spec whose pool is D_O plus *all*
   D_U candidates (``selection.candidates``, default the spec's D_U), with ``selection.oracle_shadows``
   / ``oracle_epochs`` if set; it is trained into ``OUT/oracle/store.zarr`` by the normal machinery.
2. **selection** -- :func:`select` reads the finished oracle store and keeps the candidates with
   Feldman-Zhang memorization ``> selection.threshold`` (singletons: :func:`analysis.studies.groups.singletons`)
   or those of the smallest cluster of the oracle's shadow-0 penultimate features
   (:func:`analysis.studies.groups.subpopulation`, PCA 10, 5 clusters, seed = spec seed). It writes
   ``OUT/selection.json`` atomically: candidate indices (numbering of
   :mod:`mia_hpc.data.selection`), counts, every candidate's oracle memorization, and a hash.
3. **attack** -- :func:`prepare_attack_store` creates ``OUT/store.zarr`` from the spec with the
   oracle store's samples, D_U restricted to the selection (attr ``selection`` of the store records
   the kind, indices and hash); then it is trained like any store.
4. **analysis** -- ``analysis.output.report.analyze`` of ``OUT/store.zarr`` into ``OUT/analysis``.

Locally :func:`run_staged` (``mia-hpc run``) runs the stages in order; each skips what is done (a
finished oracle is not retrained, a matching ``selection.json`` is reused, the attack store is
resumed). On Slurm :func:`submit_staged` (``mia-hpc submit``) submits everything at once: the
oracle array, the selection job ``afterok`` on it (it creates the attack store), the attack array
``afterok`` on the selection, the analysis ``afterok`` on the attack array.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mia_hpc.contract.jsonfile import write_json_atomic
from mia_hpc.contract.shards import pending_shards
from mia_hpc.contract.spec import SelectionSpec, Spec, SpecError, spec_from_dict
from mia_hpc.contract.store import StoreError
from mia_hpc.pipeline.experiment import prepare_store
from mia_hpc.launch.local import run_shards

SELECTION_FILE = "selection.json"
ORACLE_DIR = "oracle"


class StageError(RuntimeError):
    """A stage cannot run yet (its input stage is unfinished) or its outcome is unusable."""


def oracle_path(out: str | Path) -> Path:
    return Path(out) / ORACLE_DIR / "store.zarr"


def selection_path(out: str | Path) -> Path:
    return Path(out) / SELECTION_FILE


def attack_path(out: str | Path) -> Path:
    return Path(out) / "store.zarr"


# --- stage 1: the oracle spec ---------------------------------------------------------------------

def oracle_spec(spec: Spec) -> Spec:
    """The plain spec of the memorization-oracle run: pool D_O + every D_U candidate.

    Same seed, data recipe, model and training recipe; ``selection.candidates`` (if set) replaces
    the D_U pool size (D_O unchanged), ``oracle_shadows`` / ``oracle_epochs`` (if set) the shadow
    count and epochs. ``[selection]`` is reset (the oracle is single-stage), ``analysis.targets`` is 0.
    """
    sel = spec.selection
    d = spec.to_dict()
    d["name"] = f"{spec.name}-oracle"
    d["selection"] = dataclasses.asdict(SelectionSpec())
    if sel.candidates:
        size = spec.n_over + sel.candidates
        d["data"]["size"] = size
        d["data"]["alpha"] = spec.n_over / size
    m = sel.oracle_shadows or spec.shadows.count
    d["shadows"]["count"] = m
    d["shadows"]["shards"] = min(spec.shadows.shards, m)
    d["shadows"]["batch"] = min(spec.shadows.batch, m)
    if d["shadows"]["keep_block"] and m % d["shadows"]["keep_block"]:
        d["shadows"]["keep_block"] = 0
    if sel.oracle_epochs:
        d["train"]["epochs"] = sel.oracle_epochs
    d["analysis"]["targets"] = 0
    out = spec_from_dict(d)
    want = sel.candidates or spec.n_under
    if out.n_over != spec.n_over or out.n_under != want:  # float round trip of alpha
        raise SpecError(f"selection.candidates: cannot form a pool of {spec.n_over} D_O + {want} D_U samples")
    return out


# --- stage 2: selection ---------------------------------------------------------------------------

def oracle_memorization(store: str | Path) -> dict[str, np.ndarray | None]:
    """Memorization (and features) of a finished oracle store, from the analysis side's functions.

    Returns ``{"mem", "mem_se", "group", "train", "features", "candidates"}``; ``candidates`` are the
    sample positions of the D_U candidates (:func:`mia_hpc.data.selection.candidate_positions`).
    """
    from analysis.studies.groups import store_features
    from analysis.store_io.load import open_shadows
    from analysis.studies.memorization import memorization
    from mia_hpc.data.selection import candidate_positions

    data = open_shadows(store)
    mem, se = memorization(data.correct(), data.keep)
    mem, se = np.asarray(mem), np.asarray(se)
    return {"mem": mem, "mem_se": se, "group": data.group, "train": data.split == "train",
            "features": store_features(data.ds), "candidates": candidate_positions(data.group, data.split)}


def _selection_hash(kind: str, oracle_hash: str, indices: list[int]) -> str:
    blob = json.dumps({"kind": kind, "oracle": oracle_hash, "indices": indices}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def read_selection(out: str | Path, spec: Spec | None = None) -> dict[str, Any] | None:
    """``OUT/selection.json`` if it exists (and, given ``spec``, was made for it), else None."""
    try:
        sel = json.loads(selection_path(out).read_text())
    except (FileNotFoundError, ValueError):
        return None
    if spec is not None and sel.get("spec_hash") != spec.hash():
        raise StoreError(f"{selection_path(out)}: was made for a different spec (hash {sel.get('spec_hash')}, "
                         f"this spec {spec.hash()}); use a new --out directory or the original spec")
    return sel


def select(spec: Spec, out: str | Path) -> dict[str, Any]:
    """Stage 2: choose the D_U candidates from the finished oracle store; write ``OUT/selection.json``.

    Reuses an existing ``selection.json`` made for this spec. Raises :class:`StageError` when the
    oracle is not finished or fewer than ``selection.min_selected`` candidates qualify.
    """
    from mia_hpc.contract.store import done_mask, open_store

    have = read_selection(out, spec)
    if have is not None:
        return have
    ospec = oracle_spec(spec)
    ostore = oracle_path(out)
    root = open_store(ostore)
    done = done_mask(root)
    if not done.all():
        raise StageError(f"{ostore}: oracle has {int(done.sum())}/{len(done)} shadows done; finish it first")
    if root.attrs.get("spec_hash") != ospec.hash():
        raise StoreError(f"{ostore}: was made from a different spec than this spec's oracle")
    o = oracle_memorization(ostore)
    cand = o["candidates"]
    sel = spec.selection
    if sel.kind == "singletons":
        from analysis.studies.groups import singletons

        mask = singletons(o["mem"], o["group"], sel.threshold, train=o["train"])
        extra: dict[str, Any] = {"threshold": sel.threshold}
    else:
        from analysis.studies.groups import subpopulation_clusters

        if o["features"] is None:
            raise StageError(f"{ostore}: has no features (shadow 0 writes them); cannot cluster")
        sub = subpopulation_clusters(o["features"], o["group"], train=o["train"], seed=spec.seed)
        mask = sub.mask
        extra = {"cluster_rank": sub.rank, "cluster_sizes": sub.sizes.tolist(),
                 "cluster_under": sub.n_under.tolist(), "explained_variance": sub.explained_variance}
    indices = np.flatnonzero(mask[cand]).tolist()
    if len(indices) < sel.min_selected:
        raise StageError(f"selection: {len(indices)} of {len(cand)} D_U candidates selected ({sel.kind}), fewer "
                         f"than selection.min_selected = {sel.min_selected}; lower selection.threshold or train the "
                         "oracle longer")
    mem_c = o["mem"][cand]
    record = {
        "kind": sel.kind, **extra,
        "spec_hash": spec.hash(), "oracle_spec_hash": ospec.hash(), "oracle_store": str(ostore),
        "n_candidates": len(cand), "n_selected": len(indices), "indices": indices,
        "oracle_samples": cand[indices].tolist(),
        "candidate_mem": [None if not np.isfinite(v) else float(v) for v in mem_c],
        "hash": _selection_hash(sel.kind, ospec.hash(), indices),
    }
    write_json_atomic(selection_path(out), record, sort_keys=True, indent=1)
    return record


# --- stage 3: the attack store --------------------------------------------------------------------

def prepare_attack_store(spec: Spec, out: str | Path, selection: dict[str, Any]):
    """Open ``OUT/store.zarr`` if it was made from ``spec`` and ``selection``; else create it.

    Its samples are the oracle store's (byte-identical images), D_U restricted to the selection;
    the keep masks, queries and allocation follow :func:`mia_hpc.pipeline.experiment.prepare_store`.
    """
    from mia_hpc.data.selection import restrict_under
    from mia_hpc.contract.store import StaticData, check_spec_matches, open_store, read_strings

    path = attack_path(out)
    record = {"kind": selection["kind"], "hash": selection["hash"], "indices": selection["indices"],
              "n_candidates": selection["n_candidates"], "oracle_spec_hash": selection["oracle_spec_hash"]}
    if path.exists():
        root = open_store(path)
        check_spec_matches(root, spec.hash(), path)
        if (root.attrs.get("selection") or {}).get("hash") != selection["hash"]:
            raise StoreError(f"{path}: was made from another selection than {selection_path(out)}; "
                             "use a new --out directory")
        return root
    o = open_store(oracle_path(out))
    full = StaticData(image=np.asarray(o["image"][...]), label=np.asarray(o["label"][...]),
                      group=read_strings(o, "group"), split=read_strings(o, "split"),
                      source=np.asarray(o["source"][...]), dataset=read_strings(o, "dataset"),
                      n_classes=int(o.attrs["n_classes"]))
    from mia_hpc.pipeline.experiment import create_from_data

    return create_from_data(spec, path, restrict_under(full, selection["indices"]), {"selection": record})


# --- local: every stage in order ------------------------------------------------------------------

def run_staged(spec: Spec, out: str | Path, *, executor: str = "local", analyze: bool = True, device: str = "auto",
               parallel: int = 0, progress: bool = True, extras: bool = True) -> dict[str, Any]:
    """Run oracle, selection, attack and analysis in order, each skipping what is done.

    Returns :func:`mia_hpc.api.run`'s dict (``store``, ``trained``, ``analysis``) plus ``oracle``
    (its store), ``oracle_trained`` and ``selection`` (the selection record).
    """
    out = Path(out)
    read_selection(out, spec)  # refuse another spec's OUT before training anything
    if attack_path(out).exists():
        from mia_hpc.contract.store import check_spec_matches, open_store

        check_spec_matches(open_store(attack_path(out)), spec.hash(), attack_path(out))
    ospec = oracle_spec(spec)
    ostore = oracle_path(out)
    oracle_trained: list[int] = []
    if read_selection(out, spec) is None:
        prepare_store(ospec, ostore)
        oracle_trained = run_shards(ostore, ospec.shadows.shards, pending_shards(ostore), executor=executor,
                                    log_dir=out / ORACLE_DIR / "logs", parallel=parallel, device=device,
                                    progress=progress)
    selection = select(spec, out)
    store = attack_path(out)
    prepare_attack_store(spec, out, selection)
    trained = run_shards(store, spec.shadows.shards, pending_shards(store), executor=executor, log_dir=out / "logs",
                         parallel=parallel, device=device, progress=progress)
    result: dict[str, Any] = {"store": store, "trained": sorted(trained), "analysis": None, "oracle": ostore,
                              "oracle_trained": sorted(oracle_trained), "selection": selection}
    if analyze:
        from analysis import analyze as _analyze

        result["analysis"] = _analyze(store, out / "analysis", progress=progress, extras=extras)
    return result


# --- Slurm: every stage submitted at once ---------------------------------------------------------

def selection_job(spec_dict: dict[str, Any], out: str) -> dict[str, Any]:
    """The Slurm selection job: stage 2, then create the attack store its array tasks open."""
    spec = spec_from_dict(spec_dict)
    sel = select(spec, out)
    prepare_attack_store(spec, out, sel)
    return {"n_selected": sel["n_selected"], "n_candidates": sel["n_candidates"], "hash": sel["hash"]}


def _read_stage_jobs(out: Path) -> dict[str, str]:
    try:
        rec = json.loads((out / "slurm" / "stages.json").read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return {k: str(rec[k]) for k in ("oracle", "selection", "shadows", "analysis") if rec.get(k)}


@dataclass(frozen=True)
class StagedSubmitResult:
    """What :func:`submit_staged` submitted (job ids; None: not needed / already done)."""

    store: Path
    out: Path
    oracle_job: str | None
    selection_job: str | None
    shadows_job: str | None
    analysis_job: str | None
    plain: Any = None  # the SubmitResult when the selection was already done (plain submit of the attack)
    jobs: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)  # submitit Jobs by stage

    def lines(self) -> list[str]:
        if self.plain is not None:
            return ["selection: done (" + str(selection_path(self.out)) + ")", *self.plain.lines()]
        out = [f"store: {self.store} (staged: oracle {oracle_path(self.out)})"]
        out.append(f"oracle: array job {self.oracle_job}" if self.oracle_job else "oracle: done")
        out.append(f"selection: job {self.selection_job}" + (" (after the oracle)" if self.oracle_job else ""))
        out.append(f"shadows: array job {self.shadows_job} (after the selection)")
        out.append(f"analysis: job {self.analysis_job} (after the shadows)" if self.analysis_job
                   else "analysis: not submitted")
        return out


def submit_staged(spec: Spec, out: str | Path, prof: Any, *, analyze: bool = True,
                  folder: str | Path | None = None) -> StagedSubmitResult:
    """Submit every stage at once, chained with ``afterok`` (and ``kill-on-invalid-dep``).

    When ``selection.json`` and the attack store exist, the rest is an ordinary run: the plain
    :func:`mia_hpc.launch.slurm.submit` path submits the attack store's unfinished shards (and the
    analysis). Otherwise the oracle's unfinished shards, the selection, all attack shards and the
    analysis are submitted; while jobs of an earlier staged submit (``OUT/slurm/stages.json``) are
    still queued or running, the submit is refused.
    """
    import submitit

    from mia_hpc.launch import slurm as S  # lazy: submitit

    out, prof = S.ready_to_submit(out, prof)
    if read_selection(out, spec) is not None and attack_path(out).exists():
        res = S.submit(spec, out, prof, analyze=analyze, folder=folder)
        return StagedSubmitResult(res.store, out, None, None, res.shadows_job, res.analysis_job, plain=res)
    earlier = _read_stage_jobs(out)
    alive = S.alive_jobs()
    flying = sorted({j for j in earlier.values() if j and any(t.split("_")[0] == j and s in S._ALIVE
                                                            for t, s in alive.items())})
    if flying:
        raise S.SlurmError(f"an earlier submit of this run is still queued/running (jobs {', '.join(flying)}); "
                           "wait for it or scancel it, then submit again")
    folder = Path(folder).absolute() if folder else out / "slurm" / "submitit"
    ospec = oracle_spec(spec)
    ostore = oracle_path(out)
    prepare_store(ospec, ostore)
    todo = pending_shards(ostore)

    def executor(name: str, dependency: str | None = None, gpus: bool = False) -> Any:
        return S.slurm_executor(prof, folder, job_name=S.job_name(spec, name), dependency=dependency, gpus=gpus)

    def array_id(jobs: list[Any]) -> str:
        return str(jobs[0].job_id).split("_")[0]

    jobs: dict[str, Any] = {}
    try:
        oracle_job = None
        if todo:
            ex = executor("oracle", gpus=True)
            ex.update_parameters(array_parallelism=prof.array_parallelism)
            jobs["oracle"] = ex.map_array(S.ShardTask(device="auto", threads=prof.cpus_per_task),
                                          [str(ostore)] * len(todo), todo, [ospec.shadows.shards] * len(todo))
            oracle_job = array_id(jobs["oracle"])
            S._write_jobs(out / ORACLE_DIR, {"spec_hash": ospec.hash(),
                                             "shards": {str(s): str(j.job_id) for s, j in zip(todo, jobs["oracle"])}})
        jobs["selection"] = executor("selection", oracle_job).submit(selection_job, spec.to_dict(), str(out))
        sel_job = str(jobs["selection"].job_id)
        n = spec.shadows.shards
        ex = executor("shadows", sel_job, gpus=True)
        ex.update_parameters(array_parallelism=prof.array_parallelism)
        jobs["shadows"] = ex.map_array(S.ShardTask(device="auto", threads=prof.cpus_per_task),
                                       [str(attack_path(out))] * n, list(range(n)), [n] * n)
        shadows_job = array_id(jobs["shadows"])
        analysis_job = None
        if analyze:
            jobs["analysis"] = executor("analysis", shadows_job).submit(S.run_analysis, str(attack_path(out)),
                                                                        str(out / "analysis"))
            analysis_job = str(jobs["analysis"].job_id)
    except submitit.core.utils.FailedJobError as err:
        done = {k: (array_id(v) if isinstance(v, list) else str(v.job_id)) for k, v in jobs.items()}
        raise S.SlurmError(f"sbatch refused a stage (submitted so far: {done or 'none'}): {S._one_line(err)}") from None
    record = {"spec_hash": spec.hash(), "oracle": oracle_job, "selection": sel_job, "shadows": shadows_job,
              "analysis": analysis_job}
    write_json_atomic(out / "slurm" / "stages.json", record, sort_keys=True, indent=1)
    # the attack shards' task ids where status and a later plain re-submit look for them
    jobs_record = {"spec_hash": spec.hash(), "shards": {str(i): str(j.job_id) for i, j in enumerate(jobs["shadows"])}}
    if analysis_job:
        jobs_record["analysis"] = analysis_job
    S._write_jobs(out, jobs_record)
    return StagedSubmitResult(attack_path(out), out, oracle_job, sel_job, shadows_job, analysis_job, jobs=jobs)


"""Plain ``sbatch`` scripts for clusters where submitit cannot run on the login node.

``render_sbatch(spec, out, profile)`` prepares ``OUT/store.zarr`` and writes two self-contained
scripts from the templates in ``slurm/templates/``:

* ``OUT/slurm/shadows.sbatch``: ``#SBATCH --array=0-(n-1)%parallelism``; task i runs
  ``python -m mia_hpc.cli train-shard STORE --shard $SLURM_ARRAY_TASK_ID --of n``. At Slurm's
  USR1 (time limit or preemption) it stops the worker and requeues itself; the requeued task
  resumes from the store's ``done`` flags.
* ``OUT/slurm/analysis.sbatch``: ``python -m mia_hpc.cli analyze STORE --out OUT/analysis``, to be
  submitted with ``--dependency=afterok:<array job id>``.

Every value inserted into a script is quoted with :func:`shlex.quote` (profile commands are split
into words first, each word quoted), and values that end up on ``#SBATCH`` lines may not contain
control characters, so no spec, profile or path string can ever run as shell code.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

from mia_hpc.launch.profile import Profile, load_profile
from mia_hpc.launch.slurm import check_path, job_name
from mia_hpc.contract.spec import Spec, SpecError, load_spec

TEMPLATES = Path(__file__).resolve().parents[2] / "slurm" / "templates"
_PLACEHOLDER = re.compile(r"\{\{([a-z_]+)\}\}")
# seconds before the time limit at which Slurm sends USR1 (capped to half the limit)
SIGNAL_S = 120


def fill(template: str, values: dict[str, str]) -> str:
    """Replace every ``{{name}}`` in ``template``; all of them must be given, and nothing else."""
    names = set(_PLACEHOLDER.findall(template))
    if names != set(values):
        raise ValueError(f"template placeholders {sorted(names)} != values {sorted(values)}")
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def _sbatch_line(name: str, value: str | None) -> str:
    """One ``#SBATCH`` line; the value is shell-quoted (sbatch removes the quotes)."""
    for s in (name, value or ""):
        if any(ord(c) < 32 or ord(c) == 127 for c in s):
            raise SpecError(f"sbatch option --{name}: must not contain control characters, got {s!r}")
    return f"#SBATCH --{name}" if value is None else f"#SBATCH --{name}={shlex.quote(value)}"


def _common(prof: Profile, gpus: bool) -> list[str]:
    lines = []
    if prof.partition:
        lines.append(_sbatch_line("partition", prof.partition))
    if prof.account:
        lines.append(_sbatch_line("account", prof.account))
    if gpus and prof.gpus_per_task:
        lines.append(_sbatch_line("gpus-per-task", str(prof.gpus_per_task)))
    lines += [_sbatch_line(name, value) for name, value in prof.sbatch_pairs()]
    return lines


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(text)
    tmp.chmod(0o755)
    tmp.replace(path)


def render_sbatch(spec_path: str | Path | Spec, out: str | Path, profile: str | Path | Profile
                  ) -> tuple[Path, Path]:
    """Write ``OUT/slurm/shadows.sbatch`` and ``OUT/slurm/analysis.sbatch``; return their paths.

    The store ``OUT/store.zarr`` is created first (or re-opened, refusing another spec's store),
    so the scripts only train and analyse.
    """
    from mia_hpc.pipeline.experiment import prepare_store

    spec = spec_path if isinstance(spec_path, Spec) else load_spec(spec_path)
    prof = profile if isinstance(profile, Profile) else load_profile(profile)
    out = Path(out).absolute()
    check_path(out, "--out")
    store = out / "store.zarr"
    prepare_store(spec, store, analysis_here=False)  # the analysis runs on a cluster node
    sdir = out / "slurm"
    logs = sdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)  # Slurm does not create the log folder itself

    q = shlex.quote
    n = spec.shadows.shards
    common = {
        "cpus": q(str(prof.cpus_per_task)),
        "mem": q(f"{int(round(prof.mem_gb * 1024))}M"),
        "time": q(str(prof.time_min)),
        "setup": "\n".join(prof.setup_lines()) or ":",
        "python": prof.python_command(),  # shlex.join: every word quoted
        "store": q(str(store)),
    }
    shadows = fill((TEMPLATES / "shadows.sbatch").read_text(), {
        **common,
        "job_name": q(job_name(spec, "shadows")),
        "array": q(f"0-{n - 1}%{min(n, prof.array_parallelism)}"),
        "log_out": q(str(logs / "shadows_%A_%a.out")),
        "log_err": q(str(logs / "shadows_%A_%a.err")),
        "signal_s": q(str(min(SIGNAL_S, prof.time_min * 30))),
        "sbatch_lines": "\n".join(_common(prof, gpus=True)),
        "n_shards": q(str(n)),
    })
    analysis = fill((TEMPLATES / "analysis.sbatch").read_text(), {
        **common,
        "job_name": q(job_name(spec, "analysis")),
        "log_out": q(str(logs / "analysis_%j.out")),
        "log_err": q(str(logs / "analysis_%j.err")),
        "sbatch_lines": "\n".join(_common(prof, gpus=False)),
        "analysis_dir": q(str(out / "analysis")),
    })
    paths = sdir / "shadows.sbatch", sdir / "analysis.sbatch"
    _write(paths[0], shadows)
    _write(paths[1], analysis)
    return paths

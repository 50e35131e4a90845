"""Cluster profiles: TOML files in ``slurm/profiles/`` that say how to run on one Slurm cluster.

A profile holds what differs between clusters (partition, account, resources per array task, how
many tasks run at once, extra ``sbatch`` options, a container and setup commands); the experiment
itself stays in the spec. Validation is as strict as the spec's (:mod:`mia_hpc.contract.spec`): an unknown
key, a wrong type or an out-of-range value is a one-line :class:`~mia_hpc.contract.spec.SpecError` naming
the file and the key.

Nothing in a profile is ever interpreted by a shell. ``container``, ``python`` and each ``setup``
line are split into words the way a shell would split them (quotes group words), and every word
is written into the job script shell-quoted: there is no ``$VAR`` expansion, globbing, ``;``,
``&&`` or pipe. For anything more, put it into a script and make the setup line ``source FILE``.
"""

from __future__ import annotations

import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from mia_hpc.contract.spec import SpecError, build_config, load_toml_file, option

_SBATCH_OPTION = re.compile(r"--[A-Za-z][A-Za-z0-9-]*(=.*)?", re.DOTALL)
# options the launcher sets itself; a profile must not override them (they would break the array
# layout or the log paths that status and the tests rely on)
_RESERVED = ("array", "output", "error", "job-name", "dependency", "open-mode", "wrap", "chdir")


@dataclass(frozen=True)
class Profile:
    """How the shadows (one array task per shard) and the analysis run on one Slurm cluster."""

    partition: str = option("", "Slurm partition (empty: the cluster's default)")
    account: str = option("", "Slurm account to charge (empty: the user's default)")
    gpus_per_task: int = option(0, "GPUs per array task (0: CPU only)", ge=0, le=64)
    cpus_per_task: int = option(1, "CPU cores per array task; also the task's torch threads", ge=1, le=1024)
    mem_gb: float = option(4.0, "memory per array task in GB", gt=0, le=65_536)
    time_min: int = option(60, "time limit per array task in minutes", ge=1, le=525_600)
    array_parallelism: int = option(16, "array tasks running at once (sbatch --array=...%N)", ge=1, le=100_000)
    sbatch_options: list[str] = option([], "extra sbatch options, each '--name' or '--name=value'")
    container: str = option("", "command prefix that runs the task in a container, e.g. "
                            "'apptainer exec --nv --bind /scratch mia.sif' (empty: none)")
    setup: list[str] = option([], "commands run before each task, e.g. 'module load cuda/12.4' "
                              "(split into words, no shell expansion)")
    python: str = option("", "python command (empty: this interpreter, or 'python' inside a container)")

    # --- derived -------------------------------------------------------------------------------
    def python_words(self) -> list[str]:
        """The command (as words) that runs python for a task, container prefix included."""
        base = shlex.split(self.python) if self.python else (["python"] if self.container else [sys.executable])
        return shlex.split(self.container) + base

    def python_command(self) -> str:
        """:meth:`python_words` as one shell-quoted command line."""
        return shlex.join(self.python_words())

    def setup_lines(self) -> list[str]:
        """The setup commands, each word shell-quoted: they run, but nothing in them is expanded.

        A line that fails stops the job script with its exit status and says which line it was:
        submitit's script has no ``set -e``, and a task that went on after a failed ``module load``
        would run in the wrong environment and fail later, far from the cause.
        """
        out = []
        for line in self.setup:
            words = shlex.split(line)
            if words:
                cmd = shlex.join(words)
                msg = shlex.quote(f"mia-hpc: profile setup line failed: {cmd}")
                out.append(f'{cmd} || {{ rc=$?; echo {msg} "(exit $rc)" >&2; exit "$rc"; }}')
        return out

    def sbatch_pairs(self) -> list[tuple[str, str | None]]:
        """``sbatch_options`` as ``(name, value or None)``."""
        out = []
        for opt in self.sbatch_options:
            name, eq, value = opt[2:].partition("=")
            out.append((name, value if eq else None))
        return out

    def sbatch_flags(self) -> dict[str, str | bool]:
        """``sbatch_options`` as submitit's ``additional_parameters``."""
        return {name: (True if value is None else value) for name, value in self.sbatch_pairs()}


def _has_control(s: str) -> bool:
    return any(ord(c) < 32 or ord(c) == 127 for c in s)


def _words(value: str, where: str) -> list[str]:
    if _has_control(value):
        raise SpecError(f"{where}: must not contain control characters (newlines, tabs), got {value!r}")
    try:
        return shlex.split(value)
    except ValueError as err:
        raise SpecError(f"{where}: cannot be split into words ({err}), got {value!r}") from None


def _cross_checks(p: Profile) -> None:
    for key in ("partition", "account"):
        v = getattr(p, key)
        if v and not re.fullmatch(r"[A-Za-z0-9_.,:+-]+", v):
            raise SpecError(f"{key}: must be a Slurm name (letters, digits, _ . , : + -), got {v!r}")
    seen = set()
    for i, opt in enumerate(p.sbatch_options):
        where = f"sbatch_options[{i}]"
        if _has_control(opt):
            raise SpecError(f"{where}: must not contain control characters (newlines, tabs), got {opt!r}")
        if not _SBATCH_OPTION.fullmatch(opt):
            raise SpecError(f"{where}: must be a long sbatch option '--name' or '--name=value', got {opt!r}")
        name = opt[2:].partition("=")[0]
        if name in _RESERVED:
            raise SpecError(f"{where}: --{name} is set by mia-hpc itself; remove it from the profile")
        if name in seen:
            raise SpecError(f"{where}: --{name} is given twice")
        seen.add(name)
    _words(p.container, "container")
    if p.python and not _words(p.python, "python"):
        raise SpecError("python: must name a command, got only whitespace")
    for i, line in enumerate(p.setup):
        _words(line, f"setup[{i}]")


def profile_from_dict(raw: dict) -> Profile:
    """Validate a parsed TOML document into a :class:`Profile`."""
    prof = build_config(Profile, raw, "")
    _cross_checks(prof)
    return prof


def load_profile(path: str | Path) -> Profile:
    """Read and validate a profile. Raises :class:`SpecError` with the file name in the message."""
    return load_toml_file(path, "profile", "slurm/profiles/generic-gpu.toml", profile_from_dict)

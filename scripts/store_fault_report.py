"""The figures of docs/reliability.md: faults injected into a real store, and the CLI's one-line
answers to bad input. Reproducible: ``.venv/bin/python scripts/store_fault_report.py > OUT.md``.

Part 1 injects each damage of ``tests/store_damage.py`` into fresh copies of a small real store
(``mia-hpc synth-store``), ``--trials`` times with seeds 0.., and records what ``verify_store`` and
the analysis' reader (``open_shadows`` and every block of logits) make of it. Part 2 runs the real
CLI on bad input and prints each exact one-line message (temporary paths shown as ``DIR``).
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import store_damage as sd  # noqa: E402  (a test helper: the same damages the tests inject)


def _verify_outcome(store: Path, good: Path) -> str:
    from mia_hpc.contract.store import StoreError
    from mia_hpc.contract.verify import verify_store

    changed = _changed(store, good)
    try:
        found = verify_store(store, progress=False)
    except StoreError:
        return "named (one-line error: the root is unreadable)" if changed else "FALSE ALARM"
    except Exception as err:  # noqa: BLE001  (what the report is about)
        return f"TRACEBACK ({type(err).__name__})"
    if not changed:
        return "no change a reader sees: nothing named" if not found else "FALSE ALARM"
    if found:
        return "named: " + ", ".join(sorted({b.label for b in found}))
    if all(c.startswith("done/c/") for c in changed):
        return "done flag lost: the shadow shows as not done, is redone"
    return "NOT NAMED"


def _changed(store: Path, good: Path) -> list[str]:
    out = []
    for p in good.rglob("*"):
        if not p.is_file():
            continue
        rel = p.relative_to(good)
        q = store / rel
        if not q.is_file():
            if not (p in sd.chunk_files(good) and sd._reads_as_fill(good, p)):
                out.append(str(rel))
        elif q.read_bytes() != p.read_bytes():
            out.append(str(rel))
    outputs = ("logits", "accuracy", "train_loss", "finished_at", "digest")
    return [r for r in out if not (r.split("/")[0] in outputs and r.split("/")[1:2] == ["c"]
                                   and not (store / "done" / "c" / r.split("/")[2]).exists())]


def _analysis_outcome(store: Path, truth: dict[str, np.ndarray]) -> str:
    from analysis.store_io.load import open_shadows
    from mia_hpc.contract.store import StoreError

    try:
        data = open_shadows(store)
        z = np.asarray(data.logits_blocks(2).compute())
        keep = np.asarray(data.keep.values)
    except StoreError as err:
        return "refused, one line" if "\n" not in str(err) else "refused, SEVERAL LINES"
    except Exception as err:  # noqa: BLE001
        return f"TRACEBACK ({type(err).__name__})"
    pos = data.positions
    same = np.array_equal(z, truth["logits"][pos]) and np.array_equal(keep, truth["keep"][pos])
    return "read the pristine values" if same else "RETURNED DAMAGED VALUES"


def fault_table(trials: int, work: Path) -> list[str]:
    import zarr

    good = sd.make_synth_store(work / "good.zarr", seed=0)
    other = sd.make_synth_store(work / "other.zarr", seed=1)
    root = zarr.open_group(str(good), mode="r")
    truth = {"logits": np.asarray(root["logits"][...]), "keep": np.asarray(root["keep"][...])}
    lines = ["| fault | trials | `status --verify` | analysis reader |", "|---|---|---|---|"]
    for name in [*sd.LOCAL, *sd.FOREIGN]:
        v, a = Counter(), Counter()
        for seed in range(trials):
            store = work / "case.zarr"
            shutil.rmtree(store, ignore_errors=True)
            shutil.copytree(good, store)
            rng = random.Random(seed)
            sd.LOCAL[name](store, rng) if name in sd.LOCAL else sd.FOREIGN[name](store, rng, other)
            v[_verify_outcome(store, good)] += 1
            a[_analysis_outcome(store, truth)] += 1
        fmt = lambda c: "; ".join(f"{k}: {n}" for k, n in c.most_common())  # noqa: E731
        lines.append(f"| {name.replace('_', ' ')} | {trials} | {fmt(v)} | {fmt(a)} |")
    return lines


def message_table(work: Path) -> list[str]:
    good = work / "good.zarr"
    spec = str(REPO / "jobs" / "smoke.toml")

    def copy(name: str) -> Path:
        dst = work / name
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(good, dst)
        return dst

    (work / "folder").mkdir(exist_ok=True)
    (work / "a-file").write_text("x")
    broken = copy("broken.zarr")
    (broken / "zarr.json").write_text('{"zarr_format": 3, "node_type": "gro')
    empty = copy("empty.zarr")
    for p in (empty / "done" / "c").iterdir():
        p.unlink()
    flipped = copy("flipped.zarr")
    chunk = flipped / "logits" / "c" / "1" / "0" / "0" / "0"
    b = bytearray(chunk.read_bytes())
    b[len(b) // 2] ^= 0xFF
    chunk.write_bytes(bytes(b))
    deleted = copy("deleted.zarr")
    (deleted / "logits" / "c" / "2" / "1" / "0" / "0").unlink()
    out = str(work / "analysis")
    cases = [
        ("analyze: a folder that is not a store", ["analyze", str(work / "folder"), "--out", out]),
        ("analyze: zarr.json is broken JSON", ["analyze", str(broken), "--out", out]),
        ("analyze: 0 done shadows", ["analyze", str(empty), "--out", out]),
        ("analyze: a bad checksum", ["analyze", str(flipped), "--out", out]),
        ("analyze: a deleted chunk of a done shadow", ["analyze", str(deleted), "--out", out]),
        ("analyze: --out is a file", ["analyze", str(good), "--out", str(work / "a-file")]),
        ("status: zarr.json is broken JSON", ["status", str(broken)]),
        ("run: --out is a file", ["run", spec, "--out", str(work / "a-file")]),
        ("run: --out cannot be created", ["run", spec, "--out", "/proc/mia-hpc/run"]),
        ("run: --parallel -1", ["run", spec, "--out", str(work / "r"), "--parallel", "-1"]),
    ]
    lines = ["| bad input | exit | created | the one line (stderr) |", "|---|---|---|---|"]
    for what, args in cases:
        before = {p.name for p in work.iterdir()}
        res = sd.mia_hpc(*args)
        created = sorted({p.name for p in work.iterdir()} - before) or ["nothing"]
        err = res.stderr.strip().replace(str(work), "DIR")
        tb = " (TRACEBACK)" if "Traceback" in err else ""
        n = len(err.splitlines())
        shown = err if n == 1 else f"{n} LINES: " + err.splitlines()[-1]
        lines.append(f"| {what} | {res.returncode} | {', '.join(created)} | `{shown}`{tb} |")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=20, help="trials per fault (seeds 0..trials-1)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        print(f"### Faults injected ({args.trials} trials each, one fault per trial)\n")
        print("\n".join(fault_table(args.trials, work)))
        print("\n### Bad input through the CLI\n")
        print("\n".join(message_table(work)))


if __name__ == "__main__":
    main()

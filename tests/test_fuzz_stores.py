"""Fuzzing stores, not only specs (hypothesis): a small real store, damaged one to three times the
ways disks and people do (tests/store_damage.py), must be named by ``status --verify``, refused by
the analysis with one line (never numbers from damaged data), and never give a traceback."""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import store_damage as sd
from mia_hpc.contract.store import StoreError

DAMAGES = sorted(sd.LOCAL) + sorted(sd.FOREIGN)
# the copies live in memory where a tmpfs exists: a copy and removal of the store's ~60 files costs
# 0.2 s on this disk and 0.03 s there, most of the fuzzer's time otherwise (still real files)
SCRATCH = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
damage_lists = st.lists(st.tuples(st.sampled_from(DAMAGES), st.integers(0, 2**32 - 1)), min_size=1, max_size=3)


class Stores:
    """The pristine store, a store of another spec (another seed) with the same shapes, and what the
    pristine store holds (what any read of it must return)."""

    def __init__(self, base: Path) -> None:
        import zarr

        self.good = sd.make_synth_store(base / "good.zarr", seed=0)
        self.other = sd.make_synth_store(base / "other.zarr", seed=1)
        root = zarr.open_group(str(self.good), mode="r")
        self.truth = {n: np.asarray(root[n][...]) for n in ("logits", "keep", "label", "accuracy")}
        self.truth.update({n: np.array(root[n][...].tolist(), dtype=str) for n in ("group", "split")})
        self.files = {str(p.relative_to(self.good)): p.read_bytes() for p in self.good.rglob("*") if p.is_file()}

    def changes(self, store: Path) -> list[str]:
        """Files that differ from the pristine store, less deleted chunks that held only the fill
        value (a reader sees no difference: nothing to name)."""
        now = {str(p.relative_to(store)): p for p in store.rglob("*") if p.is_file()}
        out = [rel for rel, p in now.items() if self.files.get(rel) != p.read_bytes()]
        for rel in set(self.files) - set(now):
            p = self.good / rel
            if not (p in sd.chunk_files(self.good) and sd._reads_as_fill(self.good, p)):
                out.append(rel)
        # the outputs of a shadow whose done flag is gone are never read: it is simply redone
        outputs = ("logits", "accuracy", "train_loss", "finished_at", "digest")
        return sorted(rel for rel in out if not (rel.split("/")[0] in outputs and rel.split("/")[1:2] == ["c"]
                                                 and not (store / "done" / "c" / rel.split("/")[2]).exists()))

    def __repr__(self) -> str:  # hypothesis prints the arguments of a failing case
        return f"Stores({self.good})"


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> Stores:
    return Stores(tmp_path_factory.mktemp("fuzz"))


def _damage(store: Path, other: Path, plan: list[tuple[str, int]]) -> list[sd.Damage]:
    done = []
    for name, seed in plan:
        rng = random.Random(seed)
        try:
            done.append(sd.LOCAL[name](store, rng) if name in sd.LOCAL else sd.FOREIGN[name](store, rng, other))
        except (FileNotFoundError, ValueError, IndexError, KeyError, StoreError):
            # the target is gone or unreadable after an earlier damage: damage it no further
            continue
    return done


def _only_lost_done_flags(changed: list[str], store: Path) -> bool:
    """A deleted done flag reads as "not done": the shadow is simply redone, nothing to name."""
    return all(rel.startswith("done/c/") and not (store / rel).exists() for rel in changed)


def _one_line(err: BaseException) -> None:
    assert str(err) and "\n" not in str(err), repr(err)
    assert "Traceback" not in str(err)


@settings(max_examples=340, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(plan=damage_lists)
def test_verify_names_every_damage(stores, plan):
    from mia_hpc.contract.verify import verify_store

    with tempfile.TemporaryDirectory(dir=SCRATCH) as tmp:
        store = Path(tmp) / "s.zarr"
        shutil.copytree(stores.good, store)
        damages = _damage(store, stores.other, plan)
        changed = stores.changes(store)
        try:
            found = verify_store(store, progress=False)
        except StoreError as err:  # the root itself is unreadable: one line naming it
            _one_line(err)
            assert changed, (damages, err)
            return
        real = [d for d in damages if d.changes_reads]
        if not changed:
            assert found == [], (damages, found)
        elif _only_lost_done_flags(changed, store):
            from mia_hpc.contract.store import done_mask, open_store

            assert not done_mask(open_store(store)).all()
        else:
            assert found, f"damage not named: {damages}"
            for b in found:
                assert "\n" not in b.line(store)
            named = {b.shadow for b in found}
            static = any(b.shadow is None for b in found)
            for d in real:  # a damaged shadow is named (unless a metadata finding masks what it reads)
                if d.shadow is not None and len(real) == 1 and not d.target.startswith("done/"):
                    assert d.shadow in named or static, (d, found)


@settings(max_examples=160, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(plan=damage_lists)
def test_analysis_never_reads_damaged_data(stores, plan):
    """What analyze reads (open_shadows, every block of logits): refused with one line, or exactly the
    pristine store's values for the shadows it uses."""
    from analysis.store_io.load import open_shadows

    truth = stores.truth
    with tempfile.TemporaryDirectory(dir=SCRATCH) as tmp:
        store = Path(tmp) / "s.zarr"
        shutil.copytree(stores.good, store)
        damages = _damage(store, stores.other, plan)
        try:
            data = open_shadows(store)
            logits = np.asarray(data.logits_blocks(2).compute())
            via_xarray = np.asarray(data.logits.values)
        except StoreError as err:  # AnalysisError is one
            _one_line(err)
            assert stores.changes(store), (damages, err)
            return
        pos = data.positions  # damage to what the analysis does not read (e.g. images) may pass
        np.testing.assert_array_equal(logits, truth["logits"][pos])
        np.testing.assert_array_equal(via_xarray, truth["logits"][pos])
        np.testing.assert_array_equal(data.keep.values, truth["keep"][pos])
        np.testing.assert_array_equal(data.accuracy().values, truth["accuracy"][pos])
        np.testing.assert_array_equal(data.label, truth["label"])
        np.testing.assert_array_equal(data.group, truth["group"])
        np.testing.assert_array_equal(data.split, truth["split"])


CLI_PLANS = [[("delete_chunk", 3)], [("swap_chunks", 11)], [("edit_metadata", 5)], [("break_json", 2)],
             [("done_without_outputs", 7), ("zero_chunk", 1)], [("foreign_metadata", 0)], [("nonfinite_logits", 4)]]


@pytest.mark.parametrize("plan", CLI_PLANS, ids=lambda p: "+".join(n for n, _ in p))
def test_cli_on_damaged_stores(stores, plan, tmp_path):
    """A sample through the real CLI: status --verify exits 1 naming the damage (or 2 with one line),
    analyze exits 2 with one line and creates nothing; no traceback anywhere."""
    store = tmp_path / "s.zarr"
    shutil.copytree(stores.good, store)
    damages = _damage(store, stores.other, plan)
    assert stores.changes(store), damages
    st_ = sd.mia_hpc("status", str(store), "--verify")
    assert "Traceback" not in st_.stderr + st_.stdout
    if st_.returncode == 2:
        assert len(st_.stderr.strip().splitlines()) == 1 and st_.stderr.startswith("mia-hpc: error: ")
    else:
        assert st_.returncode == 1, st_.stdout + st_.stderr
        assert any(lbl in st_.stdout for lbl in ("broken chunk", "missing chunk", "wrong contents",
                                                   "diverged shadow", "damaged metadata")), st_.stdout
    out = tmp_path / "analysis"
    an = sd.mia_hpc("analyze", str(store), "--out", str(out), "--quick")
    assert an.returncode == 2, an.stdout + an.stderr
    assert len(an.stderr.strip().splitlines()) == 1 and an.stderr.startswith("mia-hpc: error: "), an.stderr
    assert not out.exists()

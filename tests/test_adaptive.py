"""Adaptive shadow budget: waves double, keep masks stay balanced per prefix, the stop rule works."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr

from mia_hpc.adaptive import check_adaptive, run_adaptive, wave_sizes
from mia_hpc.spec import SpecError, spec_from_dict


def _spec(tolerance: float, **shadows):
    return spec_from_dict({
        "data": {"size": 200, "alpha": 0.8, "test_under": 20},
        "model": {"arch": "mlp", "width": 32}, "train": {"epochs": 3, "batch_size": 32},
        "shadows": {"count": 16, "batch": 4, "shards": 2, "keep_block": 4, **shadows},
        "adaptive": {"first_wave": 4, "tolerance": tolerance, "watch": ["lira-fixed-variance/AUROC All"]},
    })


def test_wave_sizes_and_prefix_balance_check():
    assert wave_sizes(_spec(0.1)) == [4, 8, 16]
    assert wave_sizes(spec_from_dict({"shadows": {"count": 24, "keep_block": 6},
                                      "adaptive": {"first_wave": 6}})) == [6, 12, 24]
    with pytest.raises(SpecError, match="shadows.keep_block: --adaptive needs"):
        check_adaptive(spec_from_dict({"shadows": {"count": 16}, "adaptive": {"first_wave": 4}}))


def test_loose_tolerance_stops_early_with_balanced_prefix(tmp_path):
    res = run_adaptive(_spec(0.5), tmp_path, executor="debug", progress=False)
    assert res.converged and res.used == 8 and res.saved_fraction == 0.5
    ds = xr.open_zarr(tmp_path / "store.zarr")
    assert ds.done.values[:8].all() and not ds.done.values[8:].any()  # nothing trained past the stop
    pool = ds.split.values == "train"
    assert (ds.keep.values[:8][:, pool].sum(0) == 4).all()  # every sample IN for half of the prefix
    summary = json.loads((tmp_path / "adaptive.json").read_text())
    assert [w["shadows"] for w in summary["waves"]] == [4, 8]
    assert (tmp_path / "waves" / "000004" / "tables" / "attacks.csv").is_file()


def test_tight_tolerance_trains_everything_and_compares(tmp_path):
    res = run_adaptive(_spec(1e-9), tmp_path, executor="debug", progress=False, compare_full=True)
    assert not res.converged and res.used == 16
    assert [w.shadows for w in res.waves] == [4, 8, 16]
    assert res.full == res.waves[-1].values  # the full run is the last wave here
    for w in res.waves[1:]:
        assert set(w.changes) == {"lira-fixed-variance/AUROC All"} and np.isfinite(list(w.changes.values())).all()


def test_unknown_watch_cell_is_a_one_line_error(tmp_path):
    spec = spec_from_dict({**_spec(0.5).to_dict(), "adaptive": {"first_wave": 4, "watch": ["lira-online/AUROC Nope"]}})
    with pytest.raises(SpecError, match="is not a cell of the attack table"):
        run_adaptive(spec, tmp_path, executor="debug", progress=False)

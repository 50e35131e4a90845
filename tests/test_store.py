"""The store: schema as xarray sees it, done-after-durable semantics, spec mismatch refusal."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from mia_hpc.contract.keep import make_keep
from mia_hpc.contract.queries import make_queries
from mia_hpc.contract.spec import spec_from_dict
from mia_hpc.contract.store import (SUBSETS, StaticData, StoreError, check_spec_matches, create_store, done_mask,
                           open_store, write_shadow)


def _make(path, m=4, n=20, c=3):
    spec = spec_from_dict({"shadows": {"count": m, "shards": 2}})
    split = np.array(["train"] * (n - 4) + ["test"] * 4)
    data = StaticData(image=np.zeros((n, 1, 8, 8), np.float32), label=np.arange(n) % c,
                      group=np.array(["over", "under"] * (n // 2)), split=split, source=np.arange(n),
                      dataset=np.array(["digits"] * n), n_classes=c)
    q = make_queries(1, False)
    create_store(path, spec.to_dict(), spec.hash(), data, make_keep(m, split == "train", 0), q, sample_chunk=8)
    return spec, len(q)


def test_schema_as_seen_by_xarray(tmp_path):
    spec, nq = _make(tmp_path / "s.zarr")
    ds = xr.open_zarr(tmp_path / "s.zarr")
    assert ds.logits.dims == ("shadow", "sample", "query", "class")
    assert ds.logits.shape == (4, 20, nq, 3)
    assert ds.keep.dims == ("shadow", "sample")
    assert ds.logits.encoding["chunks"][0] == 1  # one shadow per chunk: writers own whole chunks
    assert list(ds.subset.values) == list(SUBSETS)
    assert set(ds.group.values) == {"over", "under"}
    assert not ds.done.values.any()
    assert np.isnan(ds.logits.values).all()
    assert ds.attrs["spec_hash"] == spec.hash()
    assert "torch" in ds.attrs["versions"] or "numpy" in ds.attrs["versions"]


def test_write_shadow_sets_done_last(tmp_path):
    _, nq = _make(tmp_path / "s.zarr")
    root = open_store(tmp_path / "s.zarr")
    logits = np.random.default_rng(0).normal(size=(20, nq, 3)).astype(np.float32)
    write_shadow(root, 2, logits, np.array([1, 0.5, 0.25, 0], np.float32), 0.1)
    assert done_mask(root).tolist() == [False, False, True, False]
    ds = xr.open_zarr(tmp_path / "s.zarr")
    np.testing.assert_array_equal(ds.logits.sel(shadow=2).values, logits)
    assert np.isnan(ds.logits.sel(shadow=1).values).all()


def test_create_refuses_existing_and_leaves_no_temp(tmp_path):
    _make(tmp_path / "s.zarr")
    with pytest.raises(StoreError):
        _make(tmp_path / "s.zarr")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr"]


def test_failed_creation_leaves_nothing(tmp_path):
    spec = spec_from_dict({})
    bad = StaticData(image=np.zeros((3, 1, 8, 8), np.float32), label=np.zeros(3, int),
                     group=np.array(["over"] * 3), split=np.array(["train"] * 3), source=np.arange(3),
                     dataset=np.array(["d"] * 3), n_classes=2)
    with pytest.raises(Exception):
        create_store(tmp_path / "s.zarr", spec.to_dict(), spec.hash(), bad, np.zeros((2, 5), bool),
                     make_queries(0, False), 8)  # keep has the wrong number of samples
    assert list(tmp_path.iterdir()) == []


def test_spec_mismatch_refused(tmp_path):
    _make(tmp_path / "s.zarr")
    root = open_store(tmp_path / "s.zarr")
    with pytest.raises(StoreError, match="different spec"):
        check_spec_matches(root, "0000", tmp_path / "s.zarr")


def test_not_a_store(tmp_path):
    with pytest.raises(StoreError, match="not a mia-hpc store"):
        open_store(tmp_path)


def test_no_pickle_anywhere_in_the_store(tmp_path):
    """Stores hold plain arrays and JSON attributes only: no object/pickle codec, nothing executable."""
    import json

    _make(tmp_path / "s.zarr")
    for meta in (tmp_path / "s.zarr").rglob("zarr.json"):
        text = meta.read_text()
        assert "pickle" not in text.lower(), meta
        for codec in json.loads(text).get("codecs", []):
            assert codec["name"] in {"bytes", "vlen-utf8", "zstd", "crc32c"}, (meta, codec)

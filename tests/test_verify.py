"""Chunk checksums: a flipped byte is found, named with its shadow and shard, and repaired by re-running."""

from __future__ import annotations

import numpy as np
import xarray as xr

from mia_hpc import api
from mia_hpc.cli import main
from mia_hpc.contract.spec import spec_from_dict


def _flip(path):
    b = bytearray(path.read_bytes())
    b[len(b) // 2] ^= 0xFF
    path.write_bytes(bytes(b))


def test_flipped_byte_named_and_repaired(tmp_path, capsys):
    spec = spec_from_dict({"data": {"size": 100, "alpha": 0.8, "test_under": 10},
                           "model": {"arch": "mlp", "width": 16}, "train": {"epochs": 1},
                           "shadows": {"count": 4, "batch": 2, "shards": 2}})
    api.run(spec, tmp_path / "r", executor="debug", analyze=False, progress=False)
    store = tmp_path / "r" / "store.zarr"
    original = xr.open_zarr(store).logits.values.copy()
    assert main(["status", str(store), "--verify"]) == 0
    assert "every chunk matches" in capsys.readouterr().out

    _flip(store / "logits" / "c" / "3" / "0" / "0" / "0")
    assert main(["status", str(store), "--verify"]) == 1
    out = capsys.readouterr().out
    assert "logits/c/3/0/0/0: crc32c checksum mismatch; shadow 3 of shard 1" in out

    assert main(["status", str(store), "--verify", "--reset-broken"]) == 1
    assert "shadows [3] marked not done" in capsys.readouterr().out
    again = api.run(spec, tmp_path / "r", executor="debug", analyze=False, progress=False)
    assert again["trained"] == [3]
    assert main(["status", str(store), "--verify"]) == 0
    np.testing.assert_array_equal(xr.open_zarr(store).logits.values, original)


def test_static_chunk_damage_says_recreate(tmp_path, capsys):
    spec = spec_from_dict({"data": {"size": 100, "alpha": 0.8, "test_under": 10},
                           "shadows": {"count": 2, "shards": 1}})
    from mia_hpc.pipeline.experiment import prepare_store

    prepare_store(spec, tmp_path / "s.zarr")
    _flip(tmp_path / "s.zarr" / "label" / "c" / "0")
    assert main(["status", str(tmp_path / "s.zarr"), "--verify"]) == 1
    out = capsys.readouterr().out
    assert "label/c/0" in out and "re-create the store" in out

"""The trainer's speed options, as far as a CPU can test them: bf16 autocast, channels_last,
``shadows.batch = 0`` (auto K), augmentation flips, learning-rate schedules, and no host
synchronisation inside the step loop. (The GPU side is ``benchmarks/gpu_check.sh``.)"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode

from mia_hpc.contract.spec import load_spec, spec_from_dict
from mia_hpc.train.batched import (CPU_AUTO_SHADOWS, ShadowStack, flip_stream, index_stream, iter_batches, lr_at,
                                   resolve_shadow_batch, train_shadows)
from mia_hpc.train.loop import train_loop

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def _spec(tiny_spec_dict, **train):
    return spec_from_dict({**tiny_spec_dict, "train": {**tiny_spec_dict["train"], **train}})


# --- schedules --------------------------------------------------------------------------------------

def test_schedules_and_warmup(tiny_spec_dict):
    total = 100
    cos = _spec(tiny_spec_dict, lr=0.1)
    # without warm-up, cosine is exactly the formula stores were trained with before warm-up existed
    assert [lr_at(cos, s, total) for s in range(total)] == [0.1 * 0.5 * (1 + math.cos(math.pi * s / total))
                                                             for s in range(total)]
    tri = _spec(tiny_spec_dict, lr=0.4, schedule="triangular", warmup=0.2)
    lrs = [lr_at(tri, s, total) for s in range(total)]
    assert lrs[19] == pytest.approx(0.4) and max(lrs) == pytest.approx(0.4)  # the peak ends the warm-up
    assert np.all(np.diff(lrs[:20]) > 0) and np.all(np.diff(lrs[20:]) < 0)  # up, then down
    assert lrs[0] == pytest.approx(0.4 / 20) and lrs[-1] == pytest.approx(0.4 / 80)  # linear, towards 0
    const = _spec(tiny_spec_dict, lr=0.3, schedule="constant", warmup=0.1)
    assert lr_at(const, 4, total) == pytest.approx(0.15) and lr_at(const, 50, total) == 0.3


# --- augmentation -------------------------------------------------------------------------------------

def test_flips_are_per_shadow_and_leave_the_old_streams_alone(tiny_spec_dict, random_train_data):
    plain = _spec(tiny_spec_dict)
    flip = _spec(tiny_spec_dict, augment_flip=True)
    data = random_train_data()
    in_idx = np.flatnonzero(data.keep[2])
    for a, b in zip(index_stream(plain, 2, in_idx, 240), index_stream(flip, 2, in_idx, 240)):
        np.testing.assert_array_equal(a, b)  # order and shifts do not move when flips are switched on
    assert flip_stream(plain, 2, (5, 32)) is None
    f2 = flip_stream(flip, 2, (40, 32))
    np.testing.assert_array_equal(f2, flip_stream(flip, 2, (40, 32)))
    assert 0.4 < f2.mean() < 0.6 and not np.array_equal(f2, flip_stream(flip, 3, (40, 32)))
    # batching invariance holds with flips (8 shadows at once vs 4 + 4)
    one = train_shadows(flip, data, list(range(8)), progress=False)
    two = train_shadows(flip, data, [0, 1, 2, 3], progress=False) + train_shadows(flip, data, [4, 5, 6, 7],
                                                                                   progress=False)
    for a, b in zip(one, two):
        np.testing.assert_allclose(a.logits, b.logits, rtol=0, atol=1e-5)
    # and flips change training (the stream is used)
    base = train_shadows(plain, data, [0], progress=False)[0]
    assert np.abs(base.logits - one[0].logits).max() > 1e-4


# --- precision and layout ---------------------------------------------------------------------------

def digits_train_data(spec):
    """The embedded digits of ``spec`` as TrainData (a learnable task; about a second to build)."""
    from mia_hpc.data import build_dataset
    from mia_hpc.contract.keep import make_keep
    from mia_hpc.contract.queries import make_queries
    from mia_hpc.train.batched import TrainData

    d = build_dataset(spec)
    return TrainData(image=d.image, label=d.label, group=d.group.astype(str), split=d.split.astype(str),
                     keep=make_keep(spec.shadows.count, d.split == "train", spec.seed),
                     queries=make_queries(spec.queries.shift, spec.queries.mirror), n_classes=d.n_classes)


DIGITS = {"seed": 1, "data": {"size": 400, "alpha": 0.9, "test_under": 20, "under": {"n_fractals": 4}},
          "model": {"arch": "cnn32", "width": 8}, "shadows": {"count": 2, "batch": 2, "shards": 1},
          "queries": {"shift": 1}}


def test_bf16_trains_on_cpu_like_fp32():
    fp32 = spec_from_dict({**DIGITS, "train": {"epochs": 8, "batch_size": 32, "lr": 0.02}})
    bf16 = spec_from_dict({**DIGITS, "train": {"epochs": 8, "batch_size": 32, "lr": 0.02, "precision": "bf16"}})
    data = digits_train_data(fp32)
    a = train_shadows(fp32, data, [0, 1], progress=False)
    b = train_shadows(bf16, data, [0, 1], progress=False)
    c = train_loop(bf16, data, [0, 1])
    for ra, rb, rc in zip(a, b, c):
        assert rb.logits.dtype == np.float32 and np.isfinite(rb.logits).all()
        assert np.abs(ra.logits - rb.logits).max() > 1e-4  # bf16 really ran (it rounds)
        # measured: test/over 0.58 / 0.78 in both precisions (chance 0.1)
        assert rb.accuracy[2] > 0.4 and abs(ra.accuracy[2] - rb.accuracy[2]) < 0.1
        np.testing.assert_allclose(rb.logits, rc.logits, rtol=0, atol=1e-3)  # the loop's bf16 is the same bf16


def test_bf16_with_vmap_on_cpu_is_refused(tiny_spec_dict, random_train_data):
    spec = _spec(tiny_spec_dict, precision="bf16")
    with pytest.raises(ValueError, match="bf16' on CPU needs the sequential backend"):
        train_shadows(spec, random_train_data(), [0], progress=False, backend="vmap")


def test_channels_last_gives_the_same_shadows(tiny_spec_dict, random_train_data):
    spec = _spec(tiny_spec_dict)
    data = random_train_data()
    a = train_shadows(spec, data, [0, 1], progress=False, backend="sequential", channels_last=False)
    b = train_shadows(spec, data, [0, 1], progress=False, backend="sequential", channels_last=True)
    c = train_loop(spec, data, [0, 1], channels_last=True)
    for ra, rb, rc in zip(a, b, c):
        np.testing.assert_allclose(ra.logits, rb.logits, rtol=0, atol=1e-5)
        np.testing.assert_allclose(ra.logits, rc.logits, rtol=0, atol=1e-5)


# --- K = 0 ------------------------------------------------------------------------------------------

def test_auto_shadow_batch_on_cpu(tiny_spec_dict, random_train_data):
    data = random_train_data()
    auto = spec_from_dict({**tiny_spec_dict, "shadows": {"count": 8, "batch": 0, "shards": 2}})
    assert resolve_shadow_batch(auto, data, "cpu", 100) == CPU_AUTO_SHADOWS
    assert resolve_shadow_batch(auto, data, "cpu", 3) == 3
    fixed = spec_from_dict({**tiny_spec_dict, "shadows": {"count": 8, "batch": 5, "shards": 2}})
    assert resolve_shadow_batch(fixed, data, "cpu", 100) == 5
    with pytest.raises(ValueError, match="shadows.batch = 0"):
        list(iter_batches([1, 2], 0))


def test_cuda_memory_probe_arithmetic(tiny_spec_dict, random_train_data, monkeypatch):
    """The probe's extrapolation, with the two measured peaks and the free memory stubbed (no GPU here)."""
    import mia_hpc.train.batched as B

    data = random_train_data()
    spec = spec_from_dict({**tiny_spec_dict, "shadows": {"count": 8, "batch": 0, "shards": 2}})
    mib = 2**20
    monkeypatch.setattr(B, "_probe_peak", lambda spec, data, k, *a: (50 + 100 * k) * mib)  # 50 fixed + 100 per shadow
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (10_000 * mib, 20_000 * mib))
    per = 100 * mib + len(data.label) * 10 * 4 * 2
    fixed = 50 * mib + data.image.nbytes + data.label.size * 8
    want = int((10_000 * mib * B.AUTO_MEMORY_FRACTION - fixed) // per)
    assert B.probe_shadow_batch(spec, data, torch.device("cuda")) == want == 84
    assert resolve_shadow_batch(spec, data, "cuda", 1000) == 84
    assert resolve_shadow_batch(spec, data, "cuda", 10) == 10  # never more than the shard has to train
    monkeypatch.setattr(B, "MAX_HOST_LOGITS_BYTES", len(data.label) * len(data.queries) * 10 * 4 * 7)
    assert resolve_shadow_batch(spec, data, "cuda", 1000) == 7  # the host must hold K shadows' logits
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (10 * mib, 20_000 * mib))
    assert B.probe_shadow_batch(spec, data, torch.device("cuda")) == 1  # at least one, even when nothing fits


def test_auto_shadow_batch_end_to_end(tmp_path):
    from mia_hpc import api
    from mia_hpc.contract.store import done_mask, open_store

    spec = spec_from_dict({"name": "auto-k", "data": {"size": 120, "alpha": 0.8, "test_under": 20,
                                                      "under": {"n_fractals": 4}},
                           "model": {"arch": "mlp", "width": 16}, "train": {"epochs": 1, "batch_size": 32},
                           "shadows": {"count": 4, "batch": 0, "shards": 1}, "queries": {"shift": 0}})
    res = api.run(spec, tmp_path / "run", executor="debug", analyze=False, progress=False)
    assert done_mask(open_store(res["store"])).all() and sorted(res["trained"]) == [0, 1, 2, 3]


# --- no host synchronisation in the step loop -----------------------------------------------------------

HOST_READS = {torch.Tensor.item, torch.Tensor.cpu, torch.Tensor.tolist, torch.Tensor.numpy, torch.Tensor.__bool__,
              torch.Tensor.__float__, torch.Tensor.__int__}


class CountHostReads(TorchFunctionMode):
    """Counts tensor -> Python/host reads (each one a device sync on CUDA)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in HOST_READS:
            self.count += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("dp", [False, True])
def test_host_reads_do_not_grow_with_steps(tiny_spec_dict, random_train_data, dp):
    data = random_train_data()
    counts = []
    for epochs in (1, 3):
        d = {**tiny_spec_dict, "train": {**tiny_spec_dict["train"], "epochs": epochs, "augment_flip": True}}
        if dp:
            d["dp"] = {"noise_multiplier": 1.0}
        spec = spec_from_dict(d)
        stack = ShadowStack(spec, [0, 1], 1, 10)
        images, labels = torch.as_tensor(data.image), torch.as_tensor(data.label)
        with CountHostReads() as mode:
            stack.train(data, images, labels)
        counts.append(mode.count)
    # ~4 steps an epoch: what grows from 1 to 3 epochs is the divergence guard's one check per epoch
    # (mia_hpc/train/guard.py: at most 2 reads), never a read per step; the rest is the final read
    # of the losses
    per_epoch = (counts[1] - counts[0]) / 2
    assert per_epoch <= 2 and counts[0] - per_epoch <= 3, counts


def test_hash_of_existing_specs_is_unchanged():
    """Fields added for ResNets, recipes and speed count in the hash only when set (stores stay valid)."""
    assert load_spec(REPO / "jobs" / "demo.toml").hash() == "cfb2942821786388"  # the hash runs/demo was made with
    d = load_spec(REPO / "jobs" / "demo.toml").to_dict()
    for table, key, value in (("train", "precision", "bf16"), ("train", "augment_flip", True),
                              ("train", "warmup", 0.1), ("model", "arch", "resnet9")):
        changed = {**d, table: {**d[table], key: value}}
        assert spec_from_dict(changed).hash() != "cfb2942821786388", key

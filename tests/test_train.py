"""The batched trainer: batching invariance, agreement with a plain loop, shifts, accuracy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mia_hpc.contract.spec import spec_from_dict
from mia_hpc.train.batched import index_stream, shifted, train_shadows
from mia_hpc.train.loop import train_loop

# Batching changes only the grouping inside vmap'd kernels. Measured on this machine: identical
# logits (difference 0.0) for 8 vs 4+4; batched vs loop differ by ~3e-8. The tolerance leaves room
# for other BLAS builds while still catching any leak between shadows (which moves logits by >1e-2).
BATCH_ATOL = 1e-5


def test_batching_invariance_8_vs_4_plus_4(tiny_spec_dict, random_train_data):
    torch.set_num_threads(1)
    spec = spec_from_dict(tiny_spec_dict)
    data = random_train_data()
    one = train_shadows(spec, data, list(range(8)), progress=False)
    two = train_shadows(spec, data, [0, 1, 2, 3], progress=False) + train_shadows(spec, data, [4, 5, 6, 7],
                                                                                  progress=False)
    for a, b in zip(one, two):
        assert a.shadow == b.shadow
        np.testing.assert_allclose(a.logits, b.logits, rtol=0, atol=BATCH_ATOL)
        np.testing.assert_allclose(a.accuracy, b.accuracy)
    # and the shadows really differ from each other (different data, init and order)
    assert np.abs(one[0].logits - one[1].logits).max() > 1e-3


def test_order_within_batch_does_not_matter(tiny_spec_dict, random_train_data):
    spec = spec_from_dict(tiny_spec_dict)
    data = random_train_data()
    fwd = train_shadows(spec, data, [2, 5], progress=False)
    rev = train_shadows(spec, data, [5, 2], progress=False)
    np.testing.assert_allclose(fwd[0].logits, rev[1].logits, rtol=0, atol=BATCH_ATOL)


def test_batched_equals_plain_loop(tiny_spec_dict, random_train_data):
    spec = spec_from_dict(tiny_spec_dict)
    data = random_train_data()
    batched = train_shadows(spec, data, [0, 3, 6], progress=False)
    looped = train_loop(spec, data, [0, 3, 6])
    for a, b in zip(batched, looped):
        np.testing.assert_allclose(a.logits, b.logits, rtol=0, atol=BATCH_ATOL)
        assert a.train_loss == pytest.approx(b.train_loss, abs=1e-5)


def test_index_stream_only_uses_in_samples(tiny_spec_dict, random_train_data):
    spec = spec_from_dict(tiny_spec_dict)
    data = random_train_data()
    in_idx = np.flatnonzero(data.keep[4])
    idx, shifts = index_stream(spec, 4, in_idx, 240)
    assert set(np.unique(idx)) <= set(in_idx)
    # every IN sample is seen about `epochs` times: no sample of the IN set is starved
    counts = np.bincount(idx.ravel(), minlength=300)[in_idx]
    assert counts.min() >= spec.train.epochs - 1
    assert np.abs(shifts).max() <= spec.train.augment_shift


def test_shifted_translates_with_reflect_padding():
    img = torch.arange(16, dtype=torch.float32).reshape(1, 1, 4, 4)
    right = shifted(img, torch.tensor([1]), torch.tensor([0]), 1)
    # content moves one pixel right; the new first column is the reflection of column 1
    assert torch.equal(right[0, 0, :, 1:], img[0, 0, :, :3])
    assert torch.equal(right[0, 0, :, 0], img[0, 0, :, 1])
    down = shifted(img, torch.tensor([0]), torch.tensor([1]), 1)
    assert torch.equal(down[0, 0, 1:, :], img[0, 0, :3, :])
    mirrored = shifted(img, torch.tensor([0]), torch.tensor([0]), 0, torch.tensor([True]))
    assert torch.equal(mirrored, img.flip(-1))


def test_learnable_task_is_learned(tiny_spec_dict, random_train_data):
    """With labels that are a function of the image, shadows must beat chance by far."""
    spec = spec_from_dict({**tiny_spec_dict, "train": {"epochs": 15, "batch_size": 32, "lr": 0.02}})
    data = random_train_data()
    rng = np.random.default_rng(0)
    prototypes = (rng.random((10, 1, 8, 8)) > 0.5).astype(np.float32)
    image = 0.6 * prototypes[data.label] + 0.4 * data.image  # class prototype plus noise
    data = type(data)(**{**data.__dict__, "image": image.astype(np.float32)})
    res = train_shadows(spec, data, [0, 1], progress=False)
    for r in res:
        assert r.accuracy[0] > 0.8  # train/over
        assert r.accuracy[2] > 0.6  # test/over


def test_query_views_per_chunk_are_the_whole_views_bits():
    # query_views shifts eval_batch images at a time (not all N at once, ~3 GB at CIFAR-10's shape):
    # each image is shifted and mirrored on its own, so the chunks joined are the whole view, bit for bit
    from mia_hpc.contract.queries import make_queries
    from mia_hpc.train.batched import query_views

    gen = torch.Generator().manual_seed(0)
    images = torch.randn(37, 3, 8, 8, generator=gen)
    queries = make_queries(2, True)
    pad = max(max(abs(dx), abs(dy)) for _, dx, dy, _ in queries)
    for (_, dx, dy, mirror), views in zip(queries, query_views(images, queries, 5), strict=True):
        chunks = list(views)
        assert [len(c) for c in chunks] == [5] * 7 + [2]
        whole = shifted(images, torch.tensor(dx), torch.tensor(dy), pad, torch.tensor(mirror) if mirror else None)
        assert torch.equal(torch.cat(chunks), whole), (dx, dy, mirror)

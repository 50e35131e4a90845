"""DP-SGD: per-sample clipping against a naive loop, epsilon against Opacus, determinism per shadow."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch.func import stack_module_state
from torch.nn import functional as F

from mia_hpc.train.dp_budget import dp_schedule, epsilon
from mia_hpc.models import build_model
from mia_hpc.contract.spec import spec_from_dict
from mia_hpc.train.batched import train_shadows
from mia_hpc.train.dp_sgd import clipped_sum, pad_step, per_sample_grads, poisson_stream


def _models(k=2, seed=0):
    torch.manual_seed(seed)
    models = [build_model("cnn32", 1, 10, 8, width=4) for _ in range(k)]
    params, buffers = stack_module_state(models)
    return models, {n: p.detach() for n, p in params.items()}, buffers, copy.deepcopy(models[0]).to("meta")


def test_per_sample_clipping_matches_naive_loop():
    models, params, buffers, base = _models()
    rng = torch.Generator().manual_seed(1)
    x = torch.rand(2, 6, 1, 8, 8, generator=rng)
    y = torch.randint(0, 10, (2, 6), generator=rng)
    weight = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.float32)  # padded batch
    grads, losses = per_sample_grads(base, params, buffers, x, y)
    max_norm = 0.05  # small enough that most samples are clipped
    ours = clipped_sum(grads, weight, max_norm)
    names = list(params)
    for k, model in enumerate(models):
        expect = {n: torch.zeros_like(params[n][k]) for n in names}
        n_clipped = 0
        for i in range(6):
            if weight[k, i] == 0:
                continue
            model.zero_grad()
            loss = F.cross_entropy(model(x[k, i:i + 1]), y[k, i:i + 1])
            loss.backward()
            assert loss.item() == pytest.approx(losses[k, i].item(), rel=1e-5)
            g = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
            norm = math.sqrt(sum(float(v.pow(2).sum()) for v in g.values()))
            scale = min(1.0, max_norm / (norm + 1e-6))
            n_clipped += scale < 1
            for n in names:
                expect[n] += scale * g[n]
        assert n_clipped > 0
        for n in names:
            torch.testing.assert_close(ours[n][k], expect[n], rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_epsilon_equals_opacus(accountant):
    from opacus.accountants import PRVAccountant, RDPAccountant

    spec = spec_from_dict({"train": {"epochs": 5, "batch_size": 50},
                           "dp": {"noise_multiplier": 1.1, "max_grad_norm": 1.0, "delta": 1e-5,
                                  "accountant": accountant}})
    n_pool = 1200
    q = 50 / 600
    steps = 5 * math.ceil(1 / q)
    assert dp_schedule(spec, n_pool).sample_rate == pytest.approx(q) and dp_schedule(spec, n_pool).steps == steps
    acc = RDPAccountant() if accountant == "rdp" else PRVAccountant()
    acc.history = [(1.1, q, steps)]
    assert epsilon(spec, n_pool) == pytest.approx(acc.get_epsilon(delta=1e-5), rel=1e-9)
    # more noise, less epsilon
    louder = spec_from_dict({**spec.to_dict(), "dp": {**spec.to_dict()["dp"], "noise_multiplier": 3.0}})
    assert epsilon(louder, n_pool) < epsilon(spec, n_pool)


def test_poisson_sampling_rate_and_padding():
    spec = spec_from_dict({"train": {"epochs": 20, "batch_size": 20}, "dp": {"noise_multiplier": 1.0}})
    in_idx = np.arange(0, 400, 2)  # 200 IN samples of a 400-sample pool: q = 20/200
    stream = poisson_stream(spec, 3, in_idx, 400)
    sizes = np.array([len(i) for i, _ in stream])
    assert len(stream) == 20 * 10
    assert abs(sizes.mean() - 20) < 1.5 and sizes.std() > 1  # Poisson-like, not fixed-size
    assert all(set(i) <= set(in_idx) for i, _ in stream)
    idx, shifts, weight = pad_step([stream[0], stream[1]])
    assert weight.sum() == sizes[0] + sizes[1] and idx.shape[1] == max(sizes[:2])


def _dp_data(random_train_data):
    data = random_train_data()
    rng = np.random.default_rng(0)
    prototypes = (rng.random((10, 1, 8, 8)) > 0.5).astype(np.float32)
    return type(data)(**{**data.__dict__, "image": (0.6 * prototypes[data.label] + 0.4 * data.image).astype(np.float32)})


def test_dp_shadow_depends_only_on_spec_and_index(tiny_spec_dict, random_train_data):
    spec = spec_from_dict({**tiny_spec_dict, "dp": {"noise_multiplier": 1.0, "max_grad_norm": 1.0}})
    data = _dp_data(random_train_data)
    together = train_shadows(spec, data, [0, 1], progress=False)
    alone = train_shadows(spec, data, [1], progress=False)
    np.testing.assert_allclose(together[1].logits, alone[0].logits, rtol=0, atol=1e-4)


def test_noise_destroys_learning_and_small_noise_does_not(tiny_spec_dict, random_train_data):
    data = _dp_data(random_train_data)
    base = {**tiny_spec_dict, "train": {"epochs": 15, "batch_size": 32, "lr": 0.05}}
    quiet = train_shadows(spec_from_dict({**base, "dp": {"noise_multiplier": 0.01, "max_grad_norm": 5.0}}), data,
                          [0], progress=False)[0]
    loud = train_shadows(spec_from_dict({**base, "dp": {"noise_multiplier": 50.0, "max_grad_norm": 5.0}}), data,
                         [0], progress=False)[0]
    assert quiet.accuracy[2] > 0.6  # test/over: learned the class prototypes
    assert loud.accuracy[2] < quiet.accuracy[2] - 0.2


def test_store_records_epsilon(tmp_path):
    from mia_hpc.pipeline.experiment import prepare_store

    spec = spec_from_dict({"data": {"size": 100, "alpha": 0.8, "test_under": 10}, "shadows": {"count": 2, "shards": 1},
                           "dp": {"noise_multiplier": 1.5, "delta": 1e-5}})
    root = prepare_store(spec, tmp_path / "s.zarr")
    dp = root.attrs["dp"]
    assert dp["epsilon"] == pytest.approx(epsilon(spec, 100)) and dp["steps"] == dp_schedule(spec, 100).steps
    plain = prepare_store(spec_from_dict({"data": {"size": 100, "alpha": 0.8, "test_under": 10},
                                          "shadows": {"count": 2, "shards": 1}}), tmp_path / "p.zarr")
    assert "dp" not in plain.attrs


# --- paper §8 / Fig. 4: memorization with and without DP, per group (mia-hpc compare-mem) -----------

def _mem_store(path, under_separation: float, seed: int = 2):
    """A synthetic store whose offsets sit at the decision boundary, so IN flips the argmax often:
    mean memorization grows with the group's IN/OUT separation (0: no memorization at all)."""
    from analysis.tools.synthetic_store import write_synthetic_store

    write_synthetic_store(path, n_shadows=8, n_samples=200, separation={"over": 0.3, "under": under_separation},
                          frac_under=0.3, seed=seed, n_test=20, offset_mean=-2.2, offset_std=0.5)
    return path


def test_compare_mem_figure_and_group_means(tmp_path, capsys):
    from analysis.store_io.load import open_shadows
    from analysis.studies.memorization import memorization
    from mia_hpc.cli import main

    a = _mem_store(tmp_path / "plain.zarr", 4.0)  # "no DP": the under group is memorized
    b = _mem_store(tmp_path / "dp.zarr", 0.3)  # "DP": its memorization collapses to the over group's
    out = tmp_path / "cmp"
    assert main(["compare-mem", str(a), str(b), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "no DP / under" in printed and "DP-SGD / under" in printed
    assert (out / "mem_compare.png").stat().st_size > 10_000
    table = __import__("pandas").read_csv(out / "mem_compare.csv", index_col=[0, 1])
    for label, store in (("no DP", a), ("DP-SGD", b)):  # the means are the plain per-group means of mem
        data = open_shadows(store)
        mem, _ = memorization(data.correct(), data.keep)
        train = data.split == "train"
        for g in ("over", "under"):
            sel = train & (data.group == g)
            assert table.loc[(label, g), "mean mem"] == pytest.approx(float(np.nanmean(mem[sel])), abs=1e-12)
            assert table.loc[(label, g), "n_samples"] == int(sel.sum())
    assert table.loc[("no DP", "under"), "mean mem"] > 0.5
    assert table.loc[("DP-SGD", "under"), "mean mem"] < table.loc[("no DP", "under"), "mean mem"] - 0.3
    assert "| no DP | under |" in (out / "mem_compare.md").read_text()


def test_compare_mem_refuses_different_samples(tmp_path, capsys):
    from mia_hpc.cli import main

    a = _mem_store(tmp_path / "a.zarr", 4.0, seed=2)
    b = _mem_store(tmp_path / "b.zarr", 4.0, seed=3)  # another seed: other labels
    assert main(["compare-mem", str(a), str(b), "--out", str(tmp_path / "cmp")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mia-hpc: error: ") and "\n" not in err and "holds other samples" in err
    assert not (tmp_path / "cmp").exists()  # nothing written
    assert main(["compare-mem", str(a), str(tmp_path / "nope"), "--out", str(tmp_path / "cmp")]) == 2
    assert "not a mia-hpc store" in capsys.readouterr().err

"""The MNIST recipe on real digits: a few CNN32 shadows train to an accuracy a diverged run cannot reach.

Needs real MNIST in torchvision's raw layout: ``MIA_HPC_MNIST`` or ``/work/shared/data/mnist-10k``
(10,000 real digits, see its README). Without it the test skips, except under ``CI=true``, where
that is a failure. The scale is the issue's (8,000 digits + 400 augMNIST, the recipe's 15-epoch schedule, CNN32 at
full width, shadows 0 and 1), trained for the first STEPS steps only: there the old recipe's lr is
at its peak and it diverged, while a short schedule (few epochs) decays the lr before the blow-up
and hides it (measured: 2,000 digits, 6 epochs, lr 0.04 unclipped, seeds 0-1 did not diverge).
The threshold sits between the accuracies ``benchmarks/recipe_stability.py`` measured at this
scale for the fixed recipe and for the old one (see ``docs/reproduction.md``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]

#: Steps trained: the recipe's first steps, where the old recipe (lr 0.04, no warm-up or clipping) diverged.
STEPS = 40
#: Smallest D_O test accuracy (%) each shadow must reach after STEPS steps. Measured there (seeds 0, 1):
#: committed recipe (lr 0.05) 78.1 and 74.6 (at lr 0.02: 74.5 and 65.0), old recipe 9.9 and 10.6
#: (collapsed to chance); see THRESHOLD_EVIDENCE.
THRESHOLD = 40.0
THRESHOLD_EVIDENCE = ("benchmarks/recipe_stability.py --over 8000 --under 400 --test-over 0 --test-under 200 "
                      "--epochs 15 --max-steps 40 --seeds 0-1 (docs/reproduction.md)")


@pytest.mark.usefixtures("one_torch_thread")
def test_mnist_recipe_survives_the_steps_where_the_old_one_diverged(mnist_root):
    import torch

    from mia_hpc.data import build_dataset
    from mia_hpc.contract.keep import make_keep
    from mia_hpc.contract.spec import load_spec, spec_from_dict
    from mia_hpc.train.batched import ShadowStack, TrainData

    d = load_spec(REPO / "jobs" / "paper" / "mnist-augmnist-random.toml").to_dict()
    d["data"].update(root=str(mnist_root), size=8400, alpha=8000 / 8400, test_over=0, test_under=200)
    d["data"]["under"]["n_fractals"] = 256
    d["train"]["epochs"] = 15  # the recipe's schedule (495 steps here): lr near its peak in the first steps
    d["shadows"].update(count=2, batch=2, shards=1)
    spec = spec_from_dict(d)  # the committed [train] recipe, unchanged
    data = build_dataset(spec)
    split = data.split.astype(str)
    td = TrainData(image=data.image, label=data.label, group=data.group.astype(str), split=split,
                   keep=make_keep(2, split == "train", spec.seed, spec.shadows.keep_block),
                   queries=[("identity", 0, 0, False)], n_classes=data.n_classes)
    stack = ShadowStack(spec, [0, 1], 1, data.n_classes)
    images = torch.as_tensor(data.image)
    # a non-finite loss raises here (mia_hpc.train.guard): a NaN divergence fails the test by itself
    stack.train(td, images, torch.as_tensor(data.label.astype(np.int64)), max_steps=STEPS)
    test = np.flatnonzero((split == "test") & (data.group.astype(str) == "over"))
    logits = stack.query_logits(images[test], td.queries)[:, :, 0]  # (2, n_test, classes)
    assert np.isfinite(logits).all()
    acc = 100 * (logits.argmax(-1) == data.label[test]).mean(axis=1)
    assert (acc >= THRESHOLD).all(), (acc, THRESHOLD_EVIDENCE)

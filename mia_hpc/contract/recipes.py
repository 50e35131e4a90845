"""The training recipes of the paper specs (``jobs/paper/``), in one place with their reasons.

Every hyperparameter still appears in each spec's ``[train]`` / ``[queries]`` tables, written out
(airbench style: a spec is the whole recipe; nothing is looked up by name at run time). This module
is the reference the specs are checked against (``tests/test_paper_specs.py``), so the 15 specs
cannot drift apart, and the place that says why each value was chosen.

The paper (Choi et al., Appendix B/C) names the models (CNN32, CNN64 of Carlini et al.'s LiRA code;
ResNet-9, ResNet-18) and the accuracies they reached (Table 1) but not the optimizer settings, so
the recipes below are standard ones for these models, sized for a shadow's training set (half the
pool: ~30,500 MNIST or ~25,500 CIFAR-10 images):

``mnist-cnn`` (CNN32: MNIST alone, + augMNIST, + SVHN; CNN64: MNIST + CIFAR-10)
    SGD with Nesterov momentum 0.9, peak lr 0.05 at batch 128 after a linear warm-up over the first
    5% of the steps, each shadow's whole gradient clipped to L2 norm 1.0 (``clip_grad_norm``),
    weight decay 5e-4, cosine decay over 15 epochs (about 3,600 steps), random translations of up
    to 1 pixel (reflect padding), no flips (digits are not mirror symmetric). Queries: the identity
    and +-1 pixel shifts (5), as the demo.
    **Why (measured on real digits, issue 15 §4).** The earlier lr 0.04 without warm-up or clipping
    failed on real MNIST (the embedded 8x8 digits had hidden it: two scales instead of three).
    Cause: CNN32 has no normalization layer; its gradient norm is 3-6 at initialization and grows
    to 10-50 once it starts to fit, and the SGD step lr * |g| (x10 through Nesterov momentum) grows
    with it. Unwarmed, the first steps at lr 0.04 overshoot (loss 2.3 -> 3.2 at step 1, gradient
    norm 13), the net lands in a flat region (gradient norm ~0.5, loss stuck at chance) and the
    later spikes feed on each other: at the issue's scale (8,000 digits + 400 augMNIST, the
    15-epoch schedule) shadows 0 and 1 were at chance (test 9.9% / 10.6%) after 40 steps, and in
    a first diagnosis shadow 0 reached loss 5,279 and gradient norm 1.1e5 by step 20; the issue saw
    NaN by step ~70. Not the cause: the input range (D_O and the PixMix D_U are both in [0, 1],
    means 0.13 / 0.20) or the initialization (initial loss 2.3-2.5, about ln 10). Clipping alone
    (lr 0.04, no warm-up) kept shadow 0 training in the diagnosis (loss 0.67 at step 40); warm-up
    and the halved peak lr add margin (the issue saw seeds diverge even at lr 0.02 unclipped).
    Fixed recipe, same 40 steps: test 74.5% / 65.0%, loss falling steadily. Curves, per-seed
    numbers and commands: ``docs/reproduction.md`` (``benchmarks/recipe_stability.py``).
    **Why lr 0.05, not 0.02 (measured 2026-12-07).** Clipping at 1 acts on every step: in five
    full-length seeds at lr 0.02 the gradient norm before clipping was never below 1 (median 6.8),
    so each step is lr times a unit direction and lr alone sets its length. At 0.02 that step was
    too short: the shadows ended at training loss 0.08-0.16 and D_O test accuracy 96.0-96.8%
    (median 96.5%, under the 97% the issue asks). Seeds 0 and 1, full length, same scale: lr 0.05
    -> loss 0.011 / 0.019, test 98.1% / 97.7%; lr 0.1 -> 98.25% / 98.25%; clipping at 10 instead
    (lr 0.02) -> 97.8% / 97.55%. The range test (``benchmarks/lr_range.py``) puts this recipe's
    break at lr ~1.8, 36x above 0.05; 0.05 is taken over 0.1 for that margin.
    **Target (Table 1):** MNIST test accuracy ~98.4% (D_O), train ~98.5-99.4%; with augMNIST /
    SVHN the D_U test accuracy ~65%, with CIFAR-10 ~41% (CNN64).
``cifar10-resnet`` (ResNet-9: CIFAR-10 alone, + CIFAR-100; ResNet-18: + augCIFAR-10)
    Page's DAWNBench / airbench recipe for ResNet-9 with the usual mean-loss scaling: SGD with
    Nesterov momentum 0.9, peak lr 0.2 at batch 256 (0.4 at 512, scaled linearly), weight decay
    5e-4, a triangular schedule (linear warm-up over the first 20% of the steps, then linear decay
    to 0), 30 epochs (about 3,000 steps), random crops of the 4-pixel reflect-padded image and random
    horizontal flips. Queries: shifts of up to 2 pixels and their mirrors (18), as LiRA queries
    CIFAR models. **Target (Table 1):** CIFAR-10 test accuracy ~88-90% (ResNet-9 90.0%, ResNet-18
    with augCIFAR-10 87.8%), train ~96-97%.
``mnist-cnn-dp`` (Fig. 4: CNN32 on MNIST + SVHN under DP-SGD)
    The paper's DP parameters: noise multiplier 1.3, clipping norm 1.0, delta 1e-5, 100 epochs.
    Batch 184 makes Opacus's RDP accountant give epsilon ~3.2 for our sampling (Poisson with
    q = 184 / 30,500, 16,600 steps), the paper's value. SGD lr 0.1, Nesterov momentum 0.9, no
    weight decay (it fights the clipping), constant lr, no augmentation.

**What is verified, and how.** On real MNIST digits (``/work/shared/data/mnist-10k``, 2 shared CPU
cores, no GPU): the diagnosis and the 40-step comparison above (``benchmarks/recipe_stability.py``;
``tests/test_real_mnist.py`` checks the 40-step accuracy of the committed recipe under CI); and
the reproduction of the MNIST + augMNIST settings at a small scale, width-8 CNN32 shadows trained
with this recipe, none diverging (``benchmarks/reproduce_mnist.py``, ``docs/reproduction.md``).
Every recipe code path (optimizers, schedules with warm-up, clipping, shifts, flips, bf16, DP)
trains on the embedded digits above chance (``tests/test_paper_specs.py``), and the paper specs
run end to end in ``--tiny`` form.

**Measured on real digits (2026-12-07/08, ``docs/reproduction.md`` §4), lr 0.05.** 32 seeds over the
first 100 steps (warm-up and peak lr): none diverged, gradient norms up to ~51 before clipping, D_O
test accuracy 85.8-94.7% (median 92.5%) at step 100 (lr 0.02: 81.8-91.2%). The same 32 seeds at full
length (15 epochs of a 4,200-digit shadow training set, 495 steps): none diverged, D_O test
97.6-98.45% (median 98.0%; the bar of issue #15 is 97%), D_U test 73.5-82.5%, final training loss
0.002-0.093.
The range test (``docs/reproduction/lr-range``): CNN32 and CNN64 with this recipe break (loss 4x
its minimum) at lr 1.5-2.1, 31-42x above 0.05; the loss is back at its start from lr 0.13.
**Not verified.** Table 1's accuracies at full scale (3,600 steps instead of 495); training on
real SVHN / CIFAR-10 images (the MNIST + SVHN / CIFAR-10 specs grayscale them to 28x28, so their
D_O side is what was measured); CNN64 beyond the range test (a full-length CNN64 shadow costs about
4x a CNN32 one and was not run); the ``cifar10-resnet`` recipe beyond the range test on 32x32 RGB
digits (ResNet-9: break at 0.52, 2.6x above its peak 0.2; ResNet-18: the loss back at its start
from 0.15, below the peak, within a ramp that reaches 0.2 in about 40 steps where the recipe warms
up over 600); the DP recipe beyond one epoch on real digits (2 shadows, 23 steps, D_U = augMNIST:
finite, D_O test 42%). The first GPU run should check ``OUT/analysis/tables/paper_accuracy``
against Table 1 before the 2000 shadows are trained, run ``benchmarks/recipe_stability.py --device
cuda --width 64 --seeds 0-7`` for CNN64 and the DP spec for its 100 epochs, and train a few
ResNet-18 shadows of ``cifar10-augcifar10-random`` on real CIFAR-10 through their warm-up before
trusting lr 0.2 there.

``precision`` stays ``fp32`` in the paper specs: ``bf16`` roughly halves a ResNet step on tensor
cores but its batched (``vmap``) path has not been run on a GPU yet; ``benchmarks/gpu_check.sh``
measures it and its accuracy parity, after which a spec can switch with one line.
"""

from __future__ import annotations

from typing import Any

RECIPES: dict[str, dict[str, Any]] = {
    "mnist-cnn": {
        "epochs": 15, "batch_size": 128, "optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4,
        "schedule": "cosine", "warmup": 0.05, "augment_shift": 1, "augment_flip": False, "precision": "fp32",
        "clip_grad_norm": 1.0,
    },
    "cifar10-resnet": {
        "epochs": 30, "batch_size": 256, "optimizer": "sgd", "lr": 0.2, "momentum": 0.9, "weight_decay": 5e-4,
        "schedule": "triangular", "warmup": 0.2, "augment_shift": 4, "augment_flip": True, "precision": "fp32",
        "clip_grad_norm": 0.0,
    },
    "mnist-cnn-dp": {
        "epochs": 100, "batch_size": 184, "optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 0.0,
        "schedule": "constant", "warmup": 0.0, "augment_shift": 0, "augment_flip": False, "precision": "fp32",
        "clip_grad_norm": 0.0,
    },
}

QUERIES: dict[str, dict[str, Any]] = {
    "mnist": {"shift": 1, "mirror": False},
    "cifar10": {"shift": 2, "mirror": True},
}

DP: dict[str, Any] = {"noise_multiplier": 1.3, "max_grad_norm": 1.0, "delta": 1e-5, "accountant": "rdp"}

#: Table 1 accuracies (percent) each recipe is meant to reach: (D_O train, D_U train, D_O test, D_U test).
TABLE1_TARGETS: dict[str, tuple[float | None, float | None, float, float | None]] = {
    "mnist": (98.54, None, 98.36, None),
    "mnist-augmnist": (99.15, 89.10, 98.43, 65.88),
    "mnist-svhn": (99.44, 90.07, 98.60, 64.76),
    "mnist-cifar10": (99.27, 82.69, 98.18, 40.72),
    "cifar10": (97.06, None, 90.02, None),
    "cifar10-augcifar10": (96.39, 86.85, 87.79, 54.41),
    "cifar10-cifar100": (96.59, 79.12, 88.39, 35.37),
}


def recipe_for(source: str, dp: bool = False) -> str:
    """The recipe name of a paper spec with D_O ``source``."""
    if dp:
        return "mnist-cnn-dp"
    return "mnist-cnn" if source == "mnist" else "cifar10-resnet"

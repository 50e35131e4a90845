"""``--tiny``: the same experiment, shrunk until it runs in seconds on a CPU.

:func:`tiny_spec` keeps a spec's *structure* -- its datasets (D_O source, D_U kind), groups,
stages (``[selection]`` kind), DP, queries, precision and recipe shape (optimizer, schedule,
augmentation) -- and shrinks its sizes: :data:`TINY_OVER_PER_CLASS` D_O and
:data:`TINY_UNDER_PER_CLASS` D_U samples per class, small test splits, :data:`TINY_SHADOWS`
shadows, one epoch, minibatches of at most :data:`TINY_BATCH` and a tiny model width. It is how
``tests/test_paper_specs.py`` runs every paper spec end to end on format fixtures, and how a user
checks a spec and a staged data root before spending device-hours (``mia-hpc run SPEC --tiny
--out DIR``).

One rule changes meaning: a singletons selection keeps D_U candidates with oracle memorization
above ``selection.threshold``; one-epoch tiny models memorize nothing like the paper's 0.8 / 0.5,
so the tiny form sets the threshold to 0 (keep what the tiny oracle memorized at all).
"""

from __future__ import annotations

from typing import Any

from mia_hpc.contract.spec import Spec, spec_from_dict

TINY_OVER_PER_CLASS = 4
TINY_UNDER_PER_CLASS = 2
TINY_TEST_OVER = 20  # real sources (the digits' test split is set by data.test_fraction)
TINY_TEST_UNDER = 10
TINY_SHADOWS = 4
TINY_BATCH = 16
TINY_WIDTH = {"cnn32": 4, "cnn64": 4, "mlp": 16, "resnet9": 4, "resnet18": 4}
N_CLASSES = 10


def tiny_dict(spec: Spec) -> dict[str, Any]:
    """The tiny form of ``spec`` as a spec dictionary (see the module docstring)."""
    d = spec.to_dict()
    d["name"] = f"{spec.name}-tiny"
    data = d["data"]
    has_under = data["under"]["kind"] != "none" and spec.n_under > 0
    n_over = TINY_OVER_PER_CLASS * N_CLASSES
    n_under = TINY_UNDER_PER_CLASS * N_CLASSES if has_under else 0
    data["size"] = n_over + n_under
    data["alpha"] = n_over / (n_over + n_under)
    if data["under"]["kind"] != "none":
        data["test_under"] = min(data["test_under"], TINY_TEST_UNDER) if data["test_under"] else 0
    if data["source"] != "digits":
        data["test_over"] = TINY_TEST_OVER
    data["under"]["n_fractals"] = min(data["under"]["n_fractals"], 8)
    d["model"]["width"] = TINY_WIDTH[spec.model.arch]
    d["train"]["epochs"] = 1
    d["train"]["batch_size"] = min(spec.train.batch_size, TINY_BATCH)
    # keep_block 2: every wave prefix (first_wave 2) is balanced, so `--tiny --adaptive` runs too
    d["shadows"].update(count=TINY_SHADOWS, batch=TINY_SHADOWS, shards=min(spec.shadows.shards, 2), keep_block=2)
    d["analysis"]["targets"] = 0
    d["adaptive"]["first_wave"] = 2
    sel = d["selection"]
    if sel["kind"] != "none":
        sel.update(oracle_shadows=0, oracle_epochs=0, candidates=0, min_selected=1)
        if sel["kind"] == "singletons":
            sel["threshold"] = 0.0
    return d


def tiny_spec(spec: Spec) -> Spec:
    """The tiny form of ``spec``, validated like any spec."""
    return spec_from_dict(tiny_dict(spec))


def with_data_root(spec: Spec, root: str) -> Spec:
    """``spec`` reading its real datasets from ``root`` (not part of the spec hash: same experiment)."""
    d = spec.to_dict()
    d["data"]["root"] = str(root)
    return spec_from_dict(d)

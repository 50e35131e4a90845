"""Experiment specs: TOML files in ``jobs/`` parsed into typed, validated config objects.

Every hyperparameter of an experiment lives in one of the dataclasses below, with its default,
its allowed values and a one-line description: this file is the place to read what a spec can say.

Validation is strict and happens before anything touches the disk: an unknown key, a wrong type
or an out-of-range value raises :class:`SpecError`, whose message is one line naming the file, the
key path and what is allowed. The CLI turns it into exit code 2.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, TypeVar

from mia_hpc.contract.settings import SAMPLE_CHUNK

T = TypeVar("T")


class SpecError(ValueError):
    """A spec (or profile) is malformed. ``str(err)`` is the one-line message shown to users."""


def option(default: Any, doc: str, *, ge: float | None = None, gt: float | None = None,
       le: float | None = None, lt: float | None = None, even: bool = False) -> Any:
    """A dataclass field carrying its description and numeric bounds."""
    meta = {"doc": doc, "ge": ge, "gt": gt, "le": le, "lt": lt, "even": even}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class UnderSpec:
    """How the under-represented group D_U is made (PixMix with fractals, as for augMNIST)."""

    kind: Literal["pixmix", "none", "svhn", "cifar10", "cifar100"] = option(
        "pixmix", "D_U: 'pixmix' (PixMix'd D_O images: augdigits/augMNIST/augCIFAR-10), 'none', or a real "
        "dataset read from data.root ('svhn', 'cifar10', 'cifar100': its first 10 classes)")
    mixing_severity: float = option(2.0, "PixMix mixing severity (beta of the mixing weights)", gt=0, le=10)
    aug_severity: int = option(4, "severity of the base augmentations (rotate, shear, ...)", ge=1, le=10)
    iterations: int = option(4, "maximum number of mixing rounds per image", ge=1, le=16)
    n_fractals: int = option(64, "number of procedurally generated fractal images", ge=1, le=100_000)
    fractal_dir: str = option("", "optional folder of fractal images (png/jpg) used instead of the generator")


@dataclass(frozen=True)
class DataSpec:
    """The mixture D_tr = D_O u D_U and its held-out test split."""

    source: Literal["digits", "mnist", "cifar10"] = option(
        "digits", "over-represented group D_O: 'digits' (embedded scikit-learn digits) or a real dataset read "
        "from data.root ('mnist', 'cifar10'; train split for the pool, test split for the test samples)")
    size: int = option(1200, "number of pool samples |D_tr| (candidate members)", ge=20, le=10_000_000)
    alpha: float = option(0.85, "fraction of the pool from D_O (paper's mixing ratio)", gt=0, le=1)
    test_fraction: float = option(0.25, "fraction of the digits held out as the test split (digits only: "
                                   "real sources have their own test split)", gt=0, lt=1)
    test_under: int = option(200, "number of D_U test samples", ge=0, le=10_000_000)
    image_size: int = option(8, "side length the images are resized to", ge=4, le=256)
    under: UnderSpec = field(default_factory=UnderSpec, metadata={"doc": "D_U generation"})
    root: str = option("", "folder holding real datasets in torchvision's layout (MNIST/raw/, train_32x32.mat, "
                           "cifar-10-batches-py/, cifar-100-python/)")
    download: bool = option(False, "download missing real-dataset files into data.root via torchvision "
                                   "(needs internet); false: a missing file is an error naming it")
    test_over: int = option(0, "D_O test samples, class-balanced from the real test split (0: the whole "
                               "split; the digits test split is set by test_fraction instead)",
                            ge=0, le=10_000_000)


@dataclass(frozen=True)
class ModelSpec:
    """The shadow architecture."""

    arch: Literal["cnn32", "cnn64", "mlp", "resnet9", "resnet18"] = option(
        "cnn32", "shadow architecture: LiRA's CNN32/CNN64, an MLP, or ResNet-9 / ResNet-18 (mia_hpc.models)")
    width: int = option(0, "override of the first layer width (0: the architecture's own)", ge=0, le=4096)
    norm: Literal["batch", "group"] = option(
        "batch", "ResNet normalization: 'batch' (BatchNorm, per-shadow running statistics) or 'group' "
        "(GroupNorm: needed for DP-SGD); CNNs and the MLP have none")


@dataclass(frozen=True)
class TrainSpec:
    """One shadow's training recipe; every shadow uses the same recipe, its own data and seed."""

    epochs: int = option(20, "passes over the shadow's IN set", ge=1, le=10_000)
    batch_size: int = option(64, "minibatch size per shadow", ge=1, le=65_536)
    optimizer: Literal["sgd", "adam"] = option("sgd", "optimizer (applied per shadow)")
    lr: float = option(0.02, "peak learning rate", gt=0, le=10)
    momentum: float = option(0.9, "SGD momentum", ge=0, lt=1)
    weight_decay: float = option(5e-4, "L2 weight decay", ge=0, le=1)
    schedule: Literal["cosine", "constant", "triangular"] = option(
        "cosine", "learning-rate schedule over all steps ('triangular': linear up to lr at train.warmup, then "
        "linearly down to 0, as airbench / one-cycle)")
    augment_shift: int = option(0, "random translation (pixels) applied to training images: a random crop of the "
                                   "image reflect-padded by this many pixels", ge=0, le=16)
    warmup: float = option(0.0, "fraction of all steps with a linear learning-rate warm-up from 0 (the peak of "
                                "'triangular'; before cosine/constant)", ge=0, lt=1)
    augment_flip: bool = option(False, "random horizontal flips of training images (CIFAR; not for digits)")
    clip_grad_norm: float = option(
        0.0, "clip each shadow's whole gradient to this L2 norm before the optimizer step (0: no clipping; "
             "ignored by DP-SGD, which clips per sample with dp.max_grad_norm)", ge=0, le=1e6)
    precision: Literal["fp32", "bf16"] = option(
        "fp32", "training arithmetic: 'bf16' runs forward and backward under torch.autocast in bfloat16 (fp32 "
        "weights and optimizer; queries stay fp32); on CPU it runs too, with CPU autocast (sequential backend)")
    threads: int = option(
        1, "torch intra-op CPU threads of every shadow's training, whatever the node, --parallel or Slurm "
           "cpus_per_task (CPU kernels split their sums by thread count: fixing it makes a shadow bit-exact "
           "wherever it is redone); 0: the worker's own count (faster, not bit-exact across runs)", ge=0, le=1024)


@dataclass(frozen=True)
class DPSpec:
    """DP-SGD (paper §8, Fig. 4): per-sample clipping, Gaussian noise, Poisson sampling."""

    noise_multiplier: float = option(0.0, "Gaussian noise multiplier sigma (0: plain training, no DP)", ge=0,
                                     le=1000)
    max_grad_norm: float = option(1.0, "per-sample gradient clipping norm C", gt=0, le=1e6)
    delta: float = option(1e-5, "delta of the (epsilon, delta) guarantee recorded in the store", gt=0, lt=1)
    accountant: Literal["rdp", "prv"] = option("rdp", "Opacus privacy accountant for epsilon")


@dataclass(frozen=True)
class ShadowSpec:
    """How many shadows, and how they are split into batches and shards."""

    count: int = option(16, "number of shadow models M (even: each sample is IN for exactly M/2)", ge=2,
                    le=1_000_000, even=True)
    batch: int = option(8, "shadows trained at once in one process (K); 0: auto (CUDA: as many as a memory "
                           "probe says fit in 85% of free device memory; CPU: 8)", ge=0, le=4096)
    shards: int = option(2, "array tasks the shadows are split into", ge=1, le=100_000)
    keep_block: int = option(0, "keep masks balanced within blocks of this many shadows (0: all M)", ge=0,
                         le=1_000_000, even=True)


@dataclass(frozen=True)
class QuerySpec:
    """Queries (label-preserving augmentations) under which every sample's logits are recorded."""

    shift: int = option(1, "largest translation in pixels; queries are the identity and +-1..shift in x and y",
                    ge=0, le=8)
    mirror: bool = option(False, "also query the horizontal mirror (not for digits)")


@dataclass(frozen=True)
class AnalysisSpec:
    """What the analysis computes from the store."""

    targets: int = option(0, "target shadows evaluated in turn against the rest (0: all)", ge=0, le=1_000_000)
    fpr: list[float] = option([0.001, 0.01], "false-positive rates at which TPR is reported")
    singleton_threshold: float = option(0.8, "memorization above which an under-represented sample is a singleton",
                                    ge=0, le=1)
    lira_variant: Literal["ours", "reference"] = option(
        "ours", "how LiRA is scored: 'ours' (means, ddof 1, balanced leave-pair-out references, one-sided offline "
        "test) or 'reference' (Carlini et al.'s plot.py: medians, ddof 0, every other shadow truncated to the "
        "smallest per-sample count, two-sided offline density); see docs/lira-variants.md")


@dataclass(frozen=True)
class AdaptiveSpec:
    """``mia-hpc run --adaptive``: train shadows in doubling waves until the watched metrics settle."""

    first_wave: int = option(8, "shadows in the first wave; each next wave doubles the total", ge=2, le=1_000_000,
                             even=True)
    watch: list[str] = option(["lira-online/AUROC Under", "lira-online/TPR@0.1% Under"],
                              "quantities that must converge: 'ATTACK/METRIC GROUP' (METRIC 'AUROC' or 'TPR@<x>%'; "
                              "GROUP 'All', 'Under' (= 'random'), 'over', 'singletons', 'subpopulation', 'samples') "
                              "or 'mem/mean GROUP'; see analysis/studies/watch.py")
    tolerance: float = option(0.02, "stop when every watched value moved by at most this over the last doubling",
                              gt=0, le=1)
    samples: list[int] = option([], "store sample indices of the watch group 'samples' (train split)")


@dataclass(frozen=True)
class StoreSpec:
    """Layout of the Zarr store."""

    sample_chunk: int = option(SAMPLE_CHUNK, "samples per chunk of the logits array", ge=1, le=10_000_000)


@dataclass(frozen=True)
class SelectionSpec:
    """Multi-stage D_U selection (paper §6 (b), (c)): a memorization-oracle run on the candidate pool
    D_O u (all D_U candidates) in ``OUT/oracle/``, the selection (``OUT/selection.json``), then the
    attack run on D_O u (the selected D_U) in ``OUT/store.zarr``; see :mod:`mia_hpc.pipeline.stages`."""

    kind: Literal["none", "singletons", "subpopulation"] = option(
        "none", "'none': one stage (D_U as drawn); 'singletons': keep the D_U candidates whose oracle memorization "
        "exceeds selection.threshold; 'subpopulation': keep the D_U candidates of the smallest KMeans cluster of the "
        "oracle's penultimate features (PCA 10, 5 clusters)")
    threshold: float = option(0.8, "singletons: oracle memorization above which a D_U candidate is kept "
                                   "(paper: 0.8 MNIST-like, 0.5 CIFAR-like)", ge=0, le=1)
    candidates: int = option(0, "D_U candidates in the oracle's pool (0: the spec's D_U, size - round(alpha * size))",
                             ge=0, le=10_000_000)
    oracle_shadows: int = option(0, "shadows of the oracle run (0: shadows.count)", ge=0, le=1_000_000, even=True)
    oracle_epochs: int = option(0, "epochs of the oracle run (0: train.epochs)", ge=0, le=10_000)
    min_selected: int = option(1, "the selection stage fails when fewer D_U candidates are selected", ge=0,
                               le=10_000_000)


@dataclass(frozen=True)
class Spec:
    """A whole experiment."""

    name: str = option("experiment", "experiment name")
    seed: int = option(0, "root seed: every random choice derives from (seed, purpose, shadow)", ge=0,
                   le=2**63 - 1)
    data: DataSpec = field(default_factory=DataSpec, metadata={"doc": "dataset"})
    model: ModelSpec = field(default_factory=ModelSpec, metadata={"doc": "model"})
    train: TrainSpec = field(default_factory=TrainSpec, metadata={"doc": "training"})
    dp: DPSpec = field(default_factory=DPSpec, metadata={"doc": "DP-SGD"})
    shadows: ShadowSpec = field(default_factory=ShadowSpec, metadata={"doc": "shadows"})
    queries: QuerySpec = field(default_factory=QuerySpec, metadata={"doc": "queries"})
    analysis: AnalysisSpec = field(default_factory=AnalysisSpec, metadata={"doc": "analysis"})
    adaptive: AdaptiveSpec = field(default_factory=AdaptiveSpec, metadata={"doc": "adaptive shadow budget"})
    store: StoreSpec = field(default_factory=StoreSpec, metadata={"doc": "store"})
    selection: SelectionSpec = field(default_factory=SelectionSpec,
                                     metadata={"doc": "multi-stage D_U selection (oracle run first)"})

    # --- derived quantities -------------------------------------------------------------------
    @property
    def n_over(self) -> int:
        """Pool samples from D_O."""
        return int(round(self.data.alpha * self.data.size))

    @property
    def n_under(self) -> int:
        """Pool samples from D_U."""
        return self.data.size - self.n_over

    def to_dict(self) -> dict[str, Any]:
        """The normalized spec: every field, defaults filled in."""
        return dataclasses.asdict(self)

    def hash(self) -> str:
        """Hash of the fields that determine the store's content.

        ``analysis`` and ``adaptive`` are left out: they decide what is computed from the store and
        how many of its shadows are trained, not what a shadow is. ``name``, ``data.root`` and
        ``data.download`` are left out too, so renaming a spec file or moving the staged data does
        not orphan a store. ``selection`` counts only when its ``kind`` is not "none" (it then decides
        which D_U samples the store holds), so single-stage specs keep their hash.
        """
        d = self.to_dict()
        d.pop("analysis")
        d.pop("adaptive")
        # where the staged files live (and whether they may be downloaded) is not what they are:
        # a run resumed on a node that mounts the data elsewhere is the same experiment
        d["data"].pop("root")
        d["data"].pop("download")
        d.pop("name")
        # [selection] decides which D_U samples the store holds; single-stage specs keep their old hash
        if d["selection"]["kind"] == "none":
            d.pop("selection")
        # fields added after stores existed count only when set away from their default, so the
        # stores made before them keep their hash (their shadows were made exactly so)
        for table, key in _LATER_FIELDS:
            if d[table][key] == getattr(getattr(Spec(), table), key):
                d[table].pop(key)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


#: (table, key) of fields added after the first stores were written (see :meth:`Spec.hash`).
_LATER_FIELDS = (("model", "norm"), ("train", "warmup"), ("train", "augment_flip"), ("train", "precision"),
                 ("train", "threads"), ("train", "clip_grad_norm"))


# --- parsing ----------------------------------------------------------------------------------

def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_describe(typing.get_args(tp)[0])}s"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


def _bounds(meta: dict[str, Any]) -> str:
    parts = []
    for key, sym in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
        if meta.get(key) is not None:
            v = meta[key]
            parts.append(f"{sym} {int(v)}" if float(v).is_integer() else f"{sym} {v:g}")
    if meta.get("even"):
        parts.append("even")
    return " and ".join(parts)


def _check_scalar(value: Any, tp: Any, meta: dict[str, Any], where: str) -> Any:
    """Validate one leaf value against its annotated type and bounds; return it normalized."""
    origin = typing.get_origin(tp)
    want = _describe(tp)
    if origin is Literal:
        if value not in typing.get_args(tp) or isinstance(value, bool) != isinstance(typing.get_args(tp)[0], bool):
            raise SpecError(f"{where}: must be {want}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise SpecError(f"{where}: must be {want}, got {value!r}")
        (inner,) = typing.get_args(tp)
        return [_check_scalar(v, inner, meta, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise SpecError(f"{where}: must be true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise SpecError(f"{where}: must be a string, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SpecError(f"{where}: must be an integer{_suffix(meta)}, got {value!r}")
    elif tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise SpecError(f"{where}: must be a finite number{_suffix(meta)}, got {value!r}")
        value = float(value)
    ok = ((meta.get("ge") is None or value >= meta["ge"]) and (meta.get("gt") is None or value > meta["gt"])
          and (meta.get("le") is None or value <= meta["le"]) and (meta.get("lt") is None or value < meta["lt"])
          and (not meta.get("even") or value % 2 == 0))
    if not ok:
        raise SpecError(f"{where}: must be {want} {_bounds(meta)}, got {value!r}")
    return value


def _suffix(meta: dict[str, Any]) -> str:
    b = _bounds(meta)
    return f" {b}" if b else ""


def build_config(cls: type, raw: Any, where: str) -> Any:
    """Build dataclass ``cls`` from a TOML table, refusing unknown keys and bad values."""
    if not isinstance(raw, dict):
        raise SpecError(f"{where or 'spec'}: must be a table, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        key = f"{where}.{unknown[0]}" if where else unknown[0]
        raise SpecError(f"{key}: unknown key; allowed here: {', '.join(fields)}")
    kwargs = {}
    for name, value in raw.items():
        path = f"{where}.{name}" if where else name
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = build_config(tp, value, path)
        else:
            kwargs[name] = _check_scalar(value, tp, dict(fields[name].metadata), path)
    return cls(**kwargs)


def _cross_checks(spec: Spec) -> None:
    """Constraints that involve more than one field."""
    s = spec.shadows
    if s.keep_block and s.count % s.keep_block:
        raise SpecError(f"shadows.keep_block: must divide shadows.count ({s.count}), got {s.keep_block}")
    if s.shards > s.count:
        raise SpecError(f"shadows.shards: must be <= shadows.count ({s.count}), got {s.shards}")
    if spec.n_over < 10:
        raise SpecError(f"data.alpha: leaves {spec.n_over} D_O samples; need >= 10 (one per class)")
    if spec.data.under.kind == "none" and spec.n_under:
        raise SpecError("data.under.kind: 'none' needs data.alpha = 1 (no D_U samples)")
    if spec.data.under.kind != "none" and spec.data.alpha < 1 and spec.n_under < 10:
        raise SpecError(f"data.alpha: leaves {spec.n_under} D_U samples; need 0 or >= 10 (one per class)")
    _data_cross_checks(spec.data)
    if spec.analysis.targets > s.count:
        raise SpecError(f"analysis.targets: must be <= shadows.count ({s.count}), got {spec.analysis.targets}")
    for i, f in enumerate(spec.analysis.fpr):
        if not 0 < f < 1:
            raise SpecError(f"analysis.fpr[{i}]: must be a number > 0 and < 1, got {f!r}")
    for i, w in enumerate(spec.adaptive.watch):
        if w.count("/") != 1 or not all(w.split("/")):
            raise SpecError(f"adaptive.watch[{i}]: must be 'ATTACK/METRIC GROUP', e.g. 'lira-online/AUROC Under', "
                            f"got {w!r}")
    if spec.model.arch.startswith("cnn") and spec.data.image_size < 8:
        raise SpecError(f"data.image_size: CNN models need >= 8 pixels, got {spec.data.image_size}")
    _model_cross_checks(spec)
    _selection_cross_checks(spec)


def _model_cross_checks(spec: Spec) -> None:
    """ResNet input size and normalization, and what DP-SGD can train."""
    m = spec.model
    resnet = m.arch.startswith("resnet")
    if resnet and spec.data.image_size < 8:
        raise SpecError("data.image_size: ResNet models need >= 8 pixels (three 2x poolings), "
                        f"got {spec.data.image_size}")
    if m.norm != "batch" and not resnet:
        raise SpecError(f"model.norm: {m.norm!r} applies to resnet9/resnet18 only; {m.arch!r} has no normalization "
                        "layers (leave model.norm = 'batch')")
    if spec.dp.noise_multiplier > 0:
        if resnet and m.norm == "batch":
            raise SpecError("model.norm: DP-SGD needs per-sample gradients, which BatchNorm mixes across the batch; "
                            "set model.norm = 'group' for a ResNet under [dp]")
        if spec.train.precision != "fp32":
            raise SpecError(f"train.precision: {spec.train.precision!r} is not supported with DP-SGD "
                            "(dp.noise_multiplier > 0); use 'fp32'")


def _selection_cross_checks(spec: Spec) -> None:
    """A staged spec needs a D_U to select from and an oracle that can estimate memorization."""
    sel = spec.selection
    if sel.kind == "none":
        return
    if spec.data.under.kind == "none":
        raise SpecError(f"selection.kind: {sel.kind!r} selects from D_U; data.under.kind 'none' has none")
    if sel.candidates == 0 and spec.n_under < 10:
        raise SpecError(f"selection.candidates: the spec's D_U has {spec.n_under} samples; set data.alpha < 1 or "
                        "selection.candidates >= 10")
    if 0 < sel.candidates < 10:
        raise SpecError(f"selection.candidates: must be 0 or >= 10 (one per class), got {sel.candidates}")


#: Native side length of each real dataset (D_O is not resized: the paper resizes D_U to D_O).
REAL_IMAGE_SIZE = {"mnist": 28, "cifar10": 32}
REAL_UNDER = ("svhn", "cifar10", "cifar100")


def _data_cross_checks(d: DataSpec) -> None:
    """The data constraints that involve more than one field (real datasets and their mixtures)."""
    kind = d.under.kind
    if d.source == "digits" and kind in REAL_UNDER:
        raise SpecError(f"data.under.kind: {kind!r} needs a real data.source ('mnist' or 'cifar10'); "
                        "the embedded digits pair with 'pixmix' or 'none'")
    if d.source == kind:
        raise SpecError(f"data.under.kind: {kind!r} is D_O itself; use 'pixmix' for aug{d.source}")
    real = [n for n in (d.source, kind) if n in REAL_IMAGE_SIZE or n in REAL_UNDER]
    if real and not d.root:
        raise SpecError(f"data.root: needed for {real[0]!r}; set it to the folder holding torchvision's files "
                        "(data.download = true fetches them there)")
    if d.source in REAL_IMAGE_SIZE and d.image_size != REAL_IMAGE_SIZE[d.source]:
        size = REAL_IMAGE_SIZE[d.source]
        raise SpecError(f"data.image_size: data.source {d.source!r} is {size}x{size}; set data.image_size = {size}, "
                        f"got {d.image_size}")
    if d.test_over and d.source == "digits":
        raise SpecError("data.test_over: only for real sources; the digits test split is set by data.test_fraction")


def spec_from_dict(raw: dict[str, Any]) -> Spec:
    """Validate a parsed TOML document (or the ``spec`` attr of a store) into a :class:`Spec`."""
    spec = build_config(Spec, raw, "")
    _cross_checks(spec)
    return spec


def load_toml_file(path: str | Path, kind: str, example: str, parse: Callable[[dict[str, Any]], T]) -> T:
    """Read a TOML file and validate it with ``parse``; every failure is one SpecError line.

    ``kind`` ("spec", "profile") and ``example`` (a path to suggest) go into the messages.
    """
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise SpecError(f"{path}: {kind} file not found; pass a TOML file such as {example}") from None
    except IsADirectoryError:
        raise SpecError(f"{path}: is a directory; pass a TOML {kind} file") from None
    except UnicodeDecodeError:
        raise SpecError(f"{path}: not UTF-8 text; a {kind} is a TOML file") from None
    except OSError as err:
        raise SpecError(f"{path}: cannot read ({err.strerror})") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise SpecError(f"{path}: invalid TOML: {err}") from None
    try:
        return parse(raw)
    except SpecError as err:
        raise SpecError(f"{path}: {err}") from None


def load_spec(path: str | Path) -> Spec:
    """Read and validate a TOML spec. Raises :class:`SpecError` with the file name in the message."""
    return load_toml_file(path, "spec", "jobs/demo.toml", spec_from_dict)


def describe_fields(cls: type = Spec, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(key path, type, default, description) for every field: what ``mia-hpc spec`` prints (docs/spec.md)."""
    rows = []
    hints = typing.get_type_hints(cls)
    defaults = cls()
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        path = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(tp):
            rows.extend(describe_fields(tp, path + "."))
        else:
            b = _bounds(dict(f.metadata))
            rows.append((path, _describe(tp) + (f" {b}" if b else ""), repr(getattr(defaults, f.name)),
                         f.metadata.get("doc", "")))
    return rows


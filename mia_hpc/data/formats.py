"""Readers for the real datasets in torchvision's on-disk formats, under one data root.

=========  ==============================================================  =========================
dataset    files (relative to ``data.root``)                               format
=========  ==============================================================  =========================
MNIST      ``MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``  idx (big-endian dims)
SVHN       ``{train,test}_32x32.mat`` (cropped digits)                       MATLAB v5 (scipy.io)
CIFAR-10   ``cifar-10-batches-py/data_batch_1..5``, ``test_batch``          python pickles
CIFAR-100  ``cifar-100-python/train``, ``test``                             python pickles
=========  ==============================================================  =========================

These are exactly the paths ``torchvision.datasets.{MNIST,SVHN,CIFAR10,CIFAR100}(root,
download=True)`` leaves behind, so a root staged with torchvision on a machine with internet can be
copied to shared storage as is. Every reader returns ``(images, labels)``: images ``(N, C, H, W)``
uint8 (C = 1 for MNIST, 3 otherwise), labels ``(N,)`` int64, in the file's order (the order
``source`` indexes).

Nothing here imports torch: torchvision is imported lazily, and only when ``download`` is true and
a file is missing (:func:`ensure_files`).
"""

from __future__ import annotations

import gzip
import io
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mia_hpc.contract.spec import SpecError

SPLITS = ("train", "test")

#: How each dataset is staged: the torchvision class that downloads it.
TORCHVISION_CLASS = {"mnist": "MNIST", "svhn": "SVHN", "cifar10": "CIFAR10", "cifar100": "CIFAR100"}
DISPLAY = {"mnist": "MNIST", "svhn": "SVHN (cropped digits)", "cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}


def dataset_files(name: str, split: str) -> list[str]:
    """The files (relative to the data root) that hold ``split`` of dataset ``name``."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if name == "mnist":
        prefix = "train" if split == "train" else "t10k"
        return [f"MNIST/raw/{prefix}-images-idx3-ubyte", f"MNIST/raw/{prefix}-labels-idx1-ubyte"]
    if name == "svhn":
        return [f"{split}_32x32.mat"]
    if name == "cifar10":
        names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        return [f"cifar-10-batches-py/{n}" for n in names]
    if name == "cifar100":
        return [f"cifar-100-python/{split}"]
    raise ValueError(f"unknown dataset {name!r}")


def _existing(path: Path) -> Path | None:
    """``path`` or, for MNIST's idx files, its ``.gz`` (torchvision keeps both; either will do)."""
    if path.is_file():
        return path
    gz = path.with_name(path.name + ".gz")
    if "idx" in path.name and gz.is_file():
        return gz
    return None


def _missing_message(root: Path, name: str, rel: str) -> str:
    alt = " (or .gz)" if name == "mnist" else ""
    cls = TORCHVISION_CLASS[name]
    how = (f"torchvision.datasets.{cls}(root, split=..., download=True)" if name == "svhn"
           else f"torchvision.datasets.{cls}(root, download=True)")
    return (f"data.root: {root / rel}{alt} not found; stage {DISPLAY[name]} there ({how} on a machine "
            f"with internet, then copy the root) or set data.download = true")


def _download(root: Path, name: str, split: str) -> None:  # pragma: no cover - needs internet
    """Fetch one split through torchvision (imported here only: the data side is torch-free)."""
    try:
        import torchvision.datasets as tvd
    except ImportError as err:
        raise SpecError(f"data.download: needs torchvision ({err}); stage the files by hand instead") from None
    cls = getattr(tvd, TORCHVISION_CLASS[name])
    try:
        if name == "svhn":
            cls(str(root), split=split, download=True)
        else:
            cls(str(root), train=(split == "train"), download=True)
    except Exception as err:  # noqa: BLE001 - network, checksum, disk: all end the same way
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise SpecError(f"data.download: torchvision could not download {DISPLAY[name]} into {root} "
                        f"({first}); stage the files by hand (see data.root)") from None


#: Replaced in tests, which cannot reach the internet.
DOWNLOADER: Callable[[Path, str, str], None] = _download


def ensure_files(root: str | Path, name: str, split: str, download: bool = False) -> list[Path]:
    """The paths of ``split`` of ``name`` under ``root``; downloads them first when allowed.

    Raises
    ------
    SpecError
        A file is missing (and ``download`` is false, or downloading did not produce it): one
        line naming the expected path and how to stage it.
    """
    root = Path(root).expanduser()
    rels = dataset_files(name, split)
    found = [_existing(root / r) for r in rels]
    if download and any(f is None for f in found):
        DOWNLOADER(root, name, split)
        found = [_existing(root / r) for r in rels]
    for rel, f in zip(rels, found):
        if f is None:
            raise SpecError(_missing_message(root, name, rel))
    return [f for f in found if f is not None]


# --- MNIST: idx files -----------------------------------------------------------------------------

_IDX_UBYTE = 0x08


def read_idx(path: str | Path) -> np.ndarray:
    """An idx file (optionally gzipped) as a uint8 array of its stated shape.

    The format: two zero bytes, a type code (0x08: unsigned byte, the only one MNIST uses), the
    number of dimensions, then each dimension as a big-endian int32, then the data.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as err:
        raise SpecError(f"data.root: cannot read {path} ({err}); re-stage the file") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != _IDX_UBYTE or raw[3] == 0:
        raise SpecError(f"data.root: {path} is not an unsigned-byte idx file (magic {raw[:4].hex() or 'empty'}); "
                        "re-stage MNIST")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise SpecError(f"data.root: {path} is truncated (idx header); re-stage MNIST")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    n = int(np.prod(dims, dtype=np.int64))
    if len(raw) - header != n:
        raise SpecError(f"data.root: {path} holds {len(raw) - header} data bytes, its header says {dims} "
                        f"({n}); re-stage MNIST")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()


def load_mnist(root: str | Path, split: str, download: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """MNIST ``split``: images (N, 1, 28, 28) uint8, labels (N,) int64."""
    img_path, lbl_path = ensure_files(root, "mnist", split, download)
    images, labels = read_idx(img_path), read_idx(lbl_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise SpecError(f"data.root: {img_path} ({images.shape}) and {lbl_path} ({labels.shape}) do not "
                        "form an image/label pair; re-stage MNIST")
    return images[:, None], labels.astype(np.int64)


# --- SVHN: MATLAB files ---------------------------------------------------------------------------

def load_svhn(root: str | Path, split: str, download: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Cropped SVHN ``split``: images (N, 3, 32, 32) uint8, labels (N,) int64 with digit 0 as 0.

    The .mat files hold ``X`` as (32, 32, 3, N) and ``y`` as (N, 1) with label 10 for the digit 0
    (torchvision maps it to 0 too).
    """
    (path,) = ensure_files(root, "svhn", split, download)
    import scipy.io  # lazily: scipy.io costs a noticeable import and only SVHN needs it

    try:
        mat = scipy.io.loadmat(str(path), variable_names=["X", "y"])
    except Exception as err:  # noqa: BLE001 - scipy raises several types for a bad file
        raise SpecError(f"data.root: cannot read {path} as a MATLAB file ({type(err).__name__}); "
                        "re-stage SVHN") from None
    x, y = mat.get("X"), mat.get("y")
    if x is None or y is None or x.ndim != 4 or x.shape[2] != 3 or x.shape[3] != y.size:
        raise SpecError(f"data.root: {path} lacks SVHN's X (32, 32, 3, N) and y (N, 1); re-stage SVHN")
    images = np.ascontiguousarray(np.transpose(x, (3, 2, 0, 1)), dtype=np.uint8)
    labels = y.reshape(-1).astype(np.int64)
    labels[labels == 10] = 0
    return images, labels


# --- CIFAR: python pickles ------------------------------------------------------------------------

def _latin1_encode(text: str, encoding: str = "latin1", errors: str = "strict") -> bytes:
    # Python 3's protocol-2 pickles store bytes as _codecs.encode(text, "latin1").
    if encoding.lower().replace("-", "") not in ("latin1", "iso88591"):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r} is not allowed")
    return text.encode("latin1", errors)


def _numpy_global(module: str, name: str) -> object | None:
    """The few numpy callables an array pickle needs, looked up without importing numpy.core."""
    core = getattr(np, "_core", None) or np.core  # numpy 2 / numpy 1
    table = {
        ("multiarray", "_reconstruct"): core.multiarray._reconstruct,
        ("numeric", "_frombuffer"): getattr(core.numeric, "_frombuffer", None),
    }
    if module in ("numpy", "numpy.core", "numpy._core") and name in ("ndarray", "dtype"):
        return getattr(np, name)
    for prefix in ("numpy.core.", "numpy._core."):
        if module.startswith(prefix):
            return table.get((module[len(prefix):], name))
    return None


class _ArrayUnpickler(pickle.Unpickler):
    """An unpickler that can build dicts, lists, bytes, strings, numbers and numpy arrays, nothing else.

    A pickle can call any importable callable while it loads (that is how it rebuilds objects), so
    loading an untrusted one runs arbitrary code. The CIFAR batches are pickles; torchvision loads
    them with plain ``pickle.load``. We allow only the globals a numpy array needs (``ndarray``,
    ``dtype``, ``_reconstruct``/``_frombuffer``) and latin-1 ``_codecs.encode``: a file that names
    anything else (``os.system``, ``builtins.eval``, ...) is refused before it can run.
    """

    def find_class(self, module: str, name: str) -> object:
        if module == "_codecs" and name == "encode":
            return _latin1_encode
        found = _numpy_global(module, name)
        if found is None:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a dataset file")
        return found


def safe_unpickle(data: bytes) -> object:
    """Unpickle ``data`` allowing only builtins and numpy arrays (see :class:`_ArrayUnpickler`).

    ``encoding="bytes"`` is what the CIFAR page prescribes for its Python 2 pickles: their str
    keys come back as bytes (b"data"), and the array buffers as the bytes numpy needs.
    """
    return _ArrayUnpickler(io.BytesIO(data), encoding="bytes").load()


def _cifar_batch(path: Path, label_key: str, display: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        obj = safe_unpickle(path.read_bytes())
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, OSError) as err:
        raise SpecError(f"data.root: cannot read {path} as a {display} batch ({type(err).__name__}: "
                        f"{str(err).splitlines()[0] if str(err) else ''}); re-stage {display}") from None
    if not isinstance(obj, dict):
        raise SpecError(f"data.root: {path} is not a {display} batch (a dict); re-stage {display}")
    # Python 2 pickles loaded with encoding="bytes" have bytes keys; files re-pickled in Python 3
    # may have str keys: accept both.
    batch = {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}
    data, labels = batch.get("data"), batch.get(label_key)
    if data is None or labels is None:
        raise SpecError(f"data.root: {path} lacks the keys 'data' and {label_key!r}; re-stage {display}")
    data = np.asarray(data)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(labels):
        raise SpecError(f"data.root: {path}: 'data' must be (N, 3072) uint8 with N labels, got "
                        f"{data.shape} {data.dtype} and {labels.shape}; re-stage {display}")
    return data.reshape(-1, 3, 32, 32), labels


def load_cifar10(root: str | Path, split: str, download: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 ``split`` (train: batches 1-5 in order): images (N, 3, 32, 32) uint8, labels (N,)."""
    parts = [_cifar_batch(p, "labels", "CIFAR-10") for p in ensure_files(root, "cifar10", split, download)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def load_cifar100(root: str | Path, split: str, download: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-100 ``split`` with its fine labels 0..99: images (N, 3, 32, 32) uint8, labels (N,)."""
    (path,) = ensure_files(root, "cifar100", split, download)
    return _cifar_batch(path, "fine_labels", "CIFAR-100")


LOADERS: dict[str, Callable[..., tuple[np.ndarray, np.ndarray]]] = {
    "mnist": load_mnist, "svhn": load_svhn, "cifar10": load_cifar10, "cifar100": load_cifar100,
}


def load_split(root: str | Path, name: str, split: str, download: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``split`` of dataset ``name`` ("mnist", "svhn", "cifar10", "cifar100") from ``root``."""
    return LOADERS[name](root, split, download)

"""Datasets with fixed, seeded splits, so every run sees the same val and test rows.

Specs (the `--data` argument):
  * `digits` — scikit-learn's 1,797 handwritten 8x8 digits (shipped with scikit-learn, no
    download), x/16 as float32 (N, 1, 8, 8). Split by `default_rng(0).permutation(1797)`:
    the first 1,078 rows (60%) train, the next 359 (20%) val, the last 360 test.
  * `cifar100:DIR`, `cifar10:DIR` — the standard python-pickle layout (`cifar-100-python/`:
    `train`, `test`, `meta`; `cifar-10-batches-py/`: `data_batch_1..5`, `test_batch`,
    `batches.meta`), DIR being that folder or its parent; SCAN's normalisation, float32
    (N, 3, 32, 32). train = the training file(s); the test file is split into val (first
    half of `default_rng(0).permutation(n_test)`) and test (the rest).
  * `fashion-mnist[:DIR]`, `mnist:DIR` — the MNIST IDX layout (MNIST, Fashion-MNIST, KMNIST;
    raw or `.gz`), float32 (N, 1, H, W) normalised with the training file's pixel mean/std,
    split like CIFAR; `fashion-mnist` alone reads Debian's `dataset-fashion-mnist`
    (/usr/share/datasets/fashion-mnist). See data_mnist.py.
  * `npz:PATH` — arrays `x` (fed to the model as it is, cast to float32), `y` (integers),
    optional `split` (train/val/test); without `split`, rows are split half/half into val
    and test by `default_rng(0).permutation(N)` (first N//2 val).

The CIFAR batches are pickles; they are read with a restricted unpickler that can build
numpy arrays and plain containers and nothing else, so a doctored file cannot run code.
"""

from __future__ import annotations

import codecs
import functools
import hashlib
import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tradeoff.cache.format import SPLIT_NAMES

SPECS_HELP = "digits, cifar100:DIR, cifar10:DIR, fashion-mnist[:DIR], mnist:DIR or npz:PATH"
# SCAN's CIFAR normalisation (per RGB channel).
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)
DIGITS_FRACTIONS = (0.6, 0.2)  # train, val; test gets the rest


@dataclass(frozen=True)
class Dataset:
    """The rows of the requested splits, ready to feed a model.

    Attributes:
        name: short, file-name-safe label ("digits", "cifar100", "npz-foo").
        spec: the spec it was loaded from.
        x: float32 inputs, (N, C, H, W) for images (npz `x` keeps its own shape).
        y: (N,) int64 labels in [0, num_classes).
        split: (N,) str, each "train", "val" or "test".
        num_classes: classes of the task (for npz: max label + 1 over the whole file).
        input_shape: x.shape without the batch dimension.
        fingerprint: sha256 hex over the kind and the x, y, split bytes; equal data gives
            the same value on any machine, whatever the file is called.
    """

    name: str
    spec: str
    x: np.ndarray
    y: np.ndarray
    split: np.ndarray
    num_classes: int
    input_shape: tuple
    fingerprint: str

    def __len__(self) -> int:
        return int(self.y.shape[0])


def load_data(spec: str = "digits", *, splits=("val", "test")) -> Dataset:
    """Load a dataset by spec and keep the rows of `splits` (in file order).

    Args:
        spec: see the module docstring for the accepted forms.
        splits: which of "train", "val", "test" to return (training asks for train+val).

    Raises:
        ValueError: an unknown spec, bad splits, malformed arrays or files.
        FileNotFoundError: a missing directory or file, naming the expected layout.
    """
    if not isinstance(spec, str):
        raise TypeError(f"data spec must be a string ({SPECS_HELP}); got {type(spec).__name__}")
    wanted = _check_splits(splits)
    kind, sep, arg = spec.partition(":")
    if spec == "digits":
        x, y, split, num_classes, name = _digits()
    elif kind in ("cifar10", "cifar100") and sep:
        if not arg:
            raise ValueError(f"data spec {spec!r} needs a directory: {kind}:DIR")
        x, y, split, num_classes, name = _cifar(kind, Path(arg), wanted)
    elif kind == "fashion-mnist" or (kind == "mnist" and sep and arg):
        from tradeoff.data_mnist import FASHION_MNIST_DIR

        directory = Path(arg) if arg else FASHION_MNIST_DIR
        x, y, split, num_classes, name = _mnist(kind, directory, wanted)
        kind = "mnist-idx"  # one fingerprint for the same files, whichever spec named them
    elif kind == "npz" and sep:
        if not arg:
            raise ValueError(f"data spec {spec!r} needs a file: npz:PATH")
        x, y, split, num_classes, name = _npz(Path(arg))
        kind = "npz"
    else:
        hint = f" (add the location: {kind}:DIR)" if kind in ("cifar10", "cifar100") else ""
        hint = " (add the file: npz:PATH)" if kind == "npz" else hint
        hint = " (add the location: mnist:DIR, or use fashion-mnist)" if kind == "mnist" else hint
        raise ValueError(f"unknown data spec {spec!r}; expected one of {SPECS_HELP}{hint}")

    keep = np.isin(split, wanted)
    if not keep.any():
        have = {str(k): int(v) for k, v in zip(*np.unique(split, return_counts=True))}
        raise ValueError(f"data {spec!r} has no rows in splits {list(wanted)}; its splits hold {have}")
    if not keep.all():
        x, y, split = x[keep], y[keep], split[keep]
    x, y = np.ascontiguousarray(x, dtype=np.float32), np.ascontiguousarray(y, dtype=np.int64)
    split = split.astype(f"<U{max(len(s) for s in SPLIT_NAMES)}")
    return Dataset(
        name=name,
        spec=spec,
        x=x,
        y=y,
        split=split,
        num_classes=int(num_classes),
        input_shape=tuple(int(d) for d in x.shape[1:]),
        fingerprint=data_fingerprint(kind, x, y, split),
    )


def _check_splits(splits) -> tuple[str, ...]:
    if isinstance(splits, str):
        splits = (splits,)
    try:
        wanted = tuple(splits)
    except TypeError:
        raise TypeError(f"splits must be a sequence of split names {SPLIT_NAMES}; got {splits!r}") from None
    bad = [s for s in wanted if s not in SPLIT_NAMES]
    if not wanted or bad:
        raise ValueError(f"splits must be a non-empty selection of {SPLIT_NAMES}; got {splits!r}")
    return wanted


def data_fingerprint(kind: str, x: np.ndarray, y: np.ndarray, split: np.ndarray) -> str:
    """sha256 over the data itself (not its path), in a fixed byte order.

    Shapes and dtypes enter the hash so that reshaped data cannot collide.
    """
    digest = hashlib.sha256()
    digest.update(f"tradeoff-data-v1|{kind}|x{tuple(x.shape)}|y{tuple(y.shape)}|".encode())
    digest.update(np.ascontiguousarray(x, dtype="<f4").data)
    digest.update(np.ascontiguousarray(y, dtype="<i8").data)
    digest.update("\n".join(split.tolist()).encode())
    return digest.hexdigest()


def seeded_split(n: int, names: tuple[str, ...], counts: tuple[int, ...]) -> np.ndarray:
    """Assign names to rows in the order of `default_rng(0).permutation(n)`, counts[i] each."""
    order = np.random.default_rng(0).permutation(n)
    split = np.empty(n, dtype="<U5")
    start = 0
    for name, count in zip(names, counts):
        split[order[start : start + count]] = name
        start += count
    return split


def val_test_halves(n: int) -> np.ndarray:
    """The split used wherever none is given (npz data, imported logits): the first n // 2
    rows of `default_rng(0).permutation(n)` are val, the rest test. (n,) str."""
    return seeded_split(n, ("val", "test"), (n // 2, n - n // 2))


# ---------------------------------------------------------------- digits


def _digits():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.data / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    y = bunch.target.astype(np.int64)
    n = len(y)
    n_train, n_val = int(DIGITS_FRACTIONS[0] * n), int(DIGITS_FRACTIONS[1] * n)
    split = seeded_split(n, SPLIT_NAMES, (n_train, n_val, n - n_train - n_val))
    return x, y, split, 10, "digits"


# ---------------------------------------------------------------- CIFAR

_CIFAR = {
    "cifar100": {
        "folder": "cifar-100-python",
        "train": ("train",),
        "test": "test",
        "labels": b"fine_labels",
        "classes": 100,
        "layout": "cifar-100-python/{train, test, meta}",
    },
    "cifar10": {
        "folder": "cifar-10-batches-py",
        "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
        "test": "test_batch",
        "labels": b"labels",
        "classes": 10,
        "layout": "cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}",
    },
}


@functools.cache
def _allowed_globals() -> dict:
    """(module, name) -> object for the globals a numpy-only pickle may name."""
    try:  # numpy >= 2
        from numpy._core import multiarray, numeric
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray, numeric

    safe = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,  # how Python 3 writes bytes in protocol 2
    }
    for module in ("numpy.core", "numpy._core"):
        safe[(f"{module}.multiarray", "_reconstruct")] = multiarray._reconstruct
        safe[(f"{module}.multiarray", "scalar")] = multiarray.scalar
        safe[(f"{module}.numeric", "_frombuffer")] = numeric._frombuffer  # protocol 5
    for module in ("builtins", "__builtin__"):
        for plain in (list, dict, tuple, set, frozenset, bytes, bytearray, str, int, float, complex, bool):
            safe[(module, plain.__name__)] = plain
    return safe


class _ForbiddenGlobal(pickle.UnpicklingError):
    """The pickle names something other than numpy array parts and plain containers."""


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Builds numpy arrays and plain containers; refuses every other global."""

    def find_class(self, module, name):
        try:
            return _allowed_globals()[(module, name)]
        except KeyError:
            raise _ForbiddenGlobal(f"{module}.{name}") from None


def _read_batch(path: Path, labels_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR pickle -> (data (N, 3072) uint8, labels (N,) int64), checked."""
    try:
        with open(path, "rb") as handle:
            batch = _ArraysOnlyUnpickler(handle, encoding="bytes").load()
    except _ForbiddenGlobal as exc:
        raise ValueError(
            f"{path} asks to unpickle global {exc}, which is not allowed (it could run code); CIFAR batches hold "
            "only numpy arrays and lists, so re-extract the official archive"
        ) from None
    except Exception as exc:  # truncated or garbage bytes surface as many error types
        raise ValueError(
            f"{path} is not a readable CIFAR batch ({type(exc).__name__}: {str(exc)[:100]}); re-extract the archive"
        ) from None
    if not isinstance(batch, dict):
        raise ValueError(f"{path} holds a {type(batch).__name__}, not a CIFAR batch dict; re-extract the archive")
    batch = {k.encode() if isinstance(k, str) else k: v for k, v in batch.items()}
    if b"data" not in batch or labels_key not in batch:
        raise ValueError(
            f"{path} lacks {b'data'!r} or {labels_key!r} (has {sorted(batch)}); is it the other CIFAR variant?"
        )
    data, labels = np.asarray(batch[b"data"]), np.asarray(batch[labels_key])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(f"{path}: data must be uint8 of shape (N, 3072); got {data.dtype} {data.shape}")
    if labels.shape != (data.shape[0],) or labels.dtype.kind not in "iu":
        raise ValueError(f"{path}: {labels_key!r} must be {data.shape[0]} integers; got {labels.dtype} {labels.shape}")
    return data, labels.astype(np.int64)


def _cifar(kind: str, directory: Path, wanted: tuple[str, ...]):
    info = _CIFAR[kind]
    if not directory.is_dir():
        raise FileNotFoundError(
            f"{kind} directory {directory} does not exist; expected the python-pickle layout {info['layout']} "
            f"(pass that folder or its parent as {kind}:DIR)"
        )
    root = directory / info["folder"] if (directory / info["folder"]).is_dir() else directory
    names = (info["train"] if "train" in wanted else ()) + (
        (info["test"],) if {"val", "test"} & set(wanted) else ()
    )
    for name in names:
        if not (root / name).is_file():
            raise FileNotFoundError(
                f"{kind}: missing {root / name}; expected the python-pickle layout {info['layout']} "
                f"(pass that folder or its parent as {kind}:DIR)"
            )
    parts, labels, splits = [], [], []
    for name in names:
        data, y = _read_batch(root / name, info["labels"])
        if (y < 0).any() or (y >= info["classes"]).any():
            raise ValueError(f"{root / name}: labels must lie in [0, {info['classes']}) for {kind}; is it {kind}?")
        if name == info["test"]:
            n = len(y)
            split = val_test_halves(n)
        else:
            split = np.full(len(y), "train", dtype="<U5")
        keep = np.isin(split, wanted)  # drop unwanted rows while they are still 1 byte a value
        parts.append(data[keep])
        labels.append(y[keep])
        splits.append(split[keep])
    # In place, so a full CIFAR training set peaks near one float32 copy (~600 MB).
    x = np.concatenate(parts).reshape(-1, 3, 32, 32).astype(np.float32)
    # (v/255 - mean)/std as one scale and one shift: two passes over the array, not three.
    std = np.asarray(CIFAR_STD, np.float64)
    x *= (1.0 / (255.0 * std)).astype(np.float32).reshape(1, 3, 1, 1)
    x -= (np.asarray(CIFAR_MEAN, np.float64) / std).astype(np.float32).reshape(1, 3, 1, 1)
    return x, np.concatenate(labels), np.concatenate(splits), info["classes"], kind


# ---------------------------------------------------------------- npz


def _mnist(kind: str, directory: Path, wanted: tuple[str, ...]):
    """(x, y, split, num_classes, name) of an MNIST-layout folder, rows of `wanted` splits only.

    x is float32 (N, 1, H, W), normalised with the training file's pixel mean/std;
    num_classes is 1 + the largest label in either file.
    """
    from tradeoff.data_mnist import find_idx_files, pixel_mean_std, read_pair

    files = find_idx_files(directory, kind)
    train_x, train_y = read_pair(files["train_images"], files["train_labels"])
    test_x, test_y = read_pair(files["test_images"], files["test_labels"])
    if train_x.shape[1:] != test_x.shape[1:]:
        raise ValueError(
            f"{kind}: training images are {train_x.shape[1:]} but test images are {test_x.shape[1:]}; "
            "the files must come from the same dataset"
        )
    mean, std = pixel_mean_std(train_x)
    if std == 0:
        raise ValueError(f"{files['train_images']}: every pixel has the same value; is it a real image file?")
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    parts, labels, splits = [], [], []
    if "train" in wanted:
        parts.append(train_x)
        labels.append(train_y)
        splits.append(np.full(len(train_y), "train", dtype="<U5"))
    if {"val", "test"} & set(wanted):
        split = val_test_halves(len(test_y))
        keep = np.isin(split, wanted)
        parts.append(test_x[keep])
        labels.append(test_y[keep])
        splits.append(split[keep])
    x = np.concatenate(parts).astype(np.float32)[:, None]
    x -= np.float32(mean * 255.0)
    x *= np.float32(1.0 / (255.0 * std))
    return x, np.concatenate(labels).astype(np.int64), np.concatenate(splits), num_classes, kind


def _npz(path: Path):
    if not path.is_file():
        raise FileNotFoundError(f"npz data file {path} does not exist; expected an .npz with arrays x, y [, split]")
    try:
        archive = np.load(path, allow_pickle=False)
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise ValueError(
            f"{path} is not a readable .npz archive ({str(exc)[:100]}); write it with numpy.savez(path, x=..., y=...)"
        ) from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(
            f"{path} holds a single array, not an .npz archive; write it with numpy.savez(path, x=..., y=...)"
        )
    with archive:
        missing = [k for k in ("x", "y") if k not in archive.files]
        if missing:
            raise ValueError(f"{path} lacks array(s) {missing} (has {archive.files}); save x (inputs) and y (labels)")
        try:
            x, y = archive["x"], archive["y"]
            split = archive["split"] if "split" in archive.files else None
        except ValueError as exc:  # object arrays refused under allow_pickle=False
            raise ValueError(f"{path}: {exc}; store numeric x/y and a string split, not Python objects") from None
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise ValueError(f"{path} is a damaged .npz archive ({exc}); write it again") from None
        except MemoryError:  # a damaged or hostile .npy header declaring an enormous shape
            raise ValueError(
                f"{path}: an array header declares more data than fits in memory; is the file damaged? "
                "write it again with numpy.savez(path, x=..., y=...)"
            ) from None
    n = _check_npz_arrays(path, x, y, split)
    if split is None:
        split = val_test_halves(n)
    elif split.dtype.kind == "S":
        split = np.char.decode(split, "ascii")
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", path.stem).strip("-.") or "data"
    return x.astype(np.float32), y.astype(np.int64), split, int(y.max()) + 1, f"npz-{stem}"


def _check_npz_arrays(path: Path, x: np.ndarray, y: np.ndarray, split) -> int:
    """Shapes, dtypes and values of an npz dataset; returns N."""
    if x.ndim < 1 or x.shape[0] == 0:
        raise ValueError(f"{path}: x must have shape (N, ...) with N > 0; got {x.shape}")
    if x.dtype.kind not in "biuf":
        raise ValueError(f"{path}: x must be numeric; got dtype {x.dtype}")
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise ValueError(f"{path}: x holds {int((~np.isfinite(x)).sum())} NaN/inf values; clean them before caching")
    n = x.shape[0]
    if y.shape != (n,):
        raise ValueError(f"{path}: y must have shape ({n},) to match x {x.shape}; got {y.shape}")
    if y.dtype.kind not in "iu":
        raise ValueError(f"{path}: y must hold integer class labels; got dtype {y.dtype} (save y.astype(int))")
    if (y < 0).any():
        raise ValueError(f"{path}: y must be class indices >= 0; got minimum {int(y.min())}")
    if split is not None:
        if split.shape != (n,) or split.dtype.kind not in "US":
            raise ValueError(f"{path}: split must be {n} strings; got {split.dtype} {split.shape}")
        names = {s.decode("latin-1") if isinstance(s, bytes) else s for s in np.unique(split).tolist()}
        bad = sorted(names - set(SPLIT_NAMES))
        if bad:
            raise ValueError(f"{path}: split holds unknown names {bad}; use only {list(SPLIT_NAMES)}")
    return n

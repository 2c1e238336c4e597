"""MNIST-layout datasets (MNIST, Fashion-MNIST, KMNIST) read from their IDX files with NumPy.

The layout (LeCun's MNIST page; Zalando's Fashion-MNIST keeps it): four files in one folder,
each raw or gzipped (`.gz`):

    train-images-idx3-ubyte  train-labels-idx1-ubyte  t10k-images-idx3-ubyte  t10k-labels-idx1-ubyte

An IDX file is a big-endian header — magic number (two zero bytes, a type code, 0x08 for
unsigned bytes, then the number of dimensions: 0x00000803 for images, 0x00000801 for labels),
one uint32 per dimension — followed by the values in C order.

Reading only: `data._mnist` makes the splits and the normalisation. Splits follow the CIFAR rule: the training file is `train`; the test file is split
into val (first half of `default_rng(0).permutation(n_test)`) and test (the rest). Pixels
become float32 (N, 1, H, W), normalised as (v - mean) / std with the mean and standard
deviation of ALL training-file pixels (so val and test never inform the normalisation, and
the training file is read even when only val/test are requested).

`fashion-mnist` without a folder reads Debian's package `dataset-fashion-mnist`
(`apt-get install dataset-fashion-mnist`), which installs the gzipped files under
/usr/share/datasets/fashion-mnist. Its `.gz` files were recompressed, so their checksums
differ from upstream's; the decompressed bytes (and so `Dataset.fingerprint`) are the same.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_PACKAGE = "dataset-fashion-mnist"
INSTALL_HINT = f"install Debian's package {FASHION_MNIST_PACKAGE} (sudo apt-get install {FASHION_MNIST_PACKAGE})"
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
LAYOUT = "four IDX files " + ", ".join(IDX_FILES.values()) + " (each raw or .gz)"
_MAGIC = {3: 0x00000803, 1: 0x00000801}  # unsigned-byte values, 3 or 1 dimensions


def find_idx_files(directory: Path, kind: str) -> dict[str, Path]:
    """The four IDX files of an MNIST-layout folder, raw preferred over `.gz`.

    Raises:
        FileNotFoundError: the folder is missing (naming the Debian package for
            fashion-mnist) or lacks some of the four files (naming them).
    """
    if not directory.is_dir():
        if kind == "fashion-mnist":
            raise FileNotFoundError(
                f"fashion-mnist directory {directory} does not exist; {INSTALL_HINT}, or pass a folder holding "
                f"the {LAYOUT} as fashion-mnist:DIR"
            )
        raise FileNotFoundError(f"{kind} directory {directory} does not exist; expected a folder holding the {LAYOUT}")
    found, missing = {}, []
    for key, stem in IDX_FILES.items():
        path = next((p for p in (directory / stem, directory / f"{stem}.gz") if p.is_file()), None)
        if path is None:
            missing.append(stem)
        else:
            found[key] = path
    if missing:
        have = sorted(p.name for p in directory.iterdir())[:8]
        raise FileNotFoundError(
            f"{kind}: {directory} lacks {', '.join(missing)} (raw or .gz; it holds {have}); an MNIST-layout folder "
            f"needs all {LAYOUT}"
        )
    return found


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """One IDX file of unsigned bytes -> uint8 array of the shape its header declares.

    Args:
        path: the file, raw or gzipped (told apart by its first two bytes, not its name).
        ndim: 3 for images (N, H, W), 1 for labels (N,).

    Raises:
        ValueError: unreadable or truncated gzip data, a wrong magic number, or fewer or
            more value bytes than the header declares.
    """
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as exc:
            raise ValueError(
                f"{path} is a damaged or truncated gzip file ({exc}); reinstall or re-download it"
            ) from None
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path} has {len(raw)} bytes, fewer than an IDX header of {ndim} dimension(s); is it truncated?")
    magic = int.from_bytes(raw[:4], "big")
    if magic != _MAGIC[ndim]:
        what = "images" if ndim == 3 else "labels"
        raise ValueError(
            f"{path} has magic number 0x{magic:08x}, expected 0x{_MAGIC[ndim]:08x} (IDX unsigned-byte {what}, "
            f"{ndim} dimension(s)); is it an MNIST-layout {what} file?"
        )
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        raise ValueError(
            f"{path}: header declares shape {shape} ({expected} bytes of values) but the file holds "
            f"{len(raw) - header}; is it truncated or damaged?"
        )
    return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


def read_pair(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    images, labels = read_idx(images_path, 3), read_idx(labels_path, 1)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{images_path} holds {images.shape[0]} images but {labels_path} holds {labels.shape[0]} labels; "
            "the two files must come from the same release"
        )
    if images.shape[0] == 0:
        raise ValueError(f"{images_path} holds no images")
    return images, labels


def pixel_mean_std(images: np.ndarray) -> tuple[float, float]:
    """Exact mean and standard deviation of uint8 pixels (over all of them), in [0, 1] units."""
    counts = np.bincount(images.reshape(-1), minlength=256).astype(np.float64)
    values = np.arange(256, dtype=np.float64) / 255.0
    n = counts.sum()
    mean = float(counts @ values / n)
    std = float(np.sqrt(counts @ (values - mean) ** 2 / n))
    return mean, std

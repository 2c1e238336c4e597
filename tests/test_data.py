import pathlib
import pickle

import numpy as np
import pytest

from tradeoff.data import CIFAR_MEAN, CIFAR_STD, load_data

# ---------------------------------------------------------------- digits


def test_digits_split_counts_and_rule():
    from sklearn.datasets import load_digits

    parts = {s: load_data("digits", splits=(s,)) for s in ("train", "val", "test")}
    assert {s: len(d) for s, d in parts.items()} == {"train": 1078, "val": 359, "test": 360}
    order = np.random.default_rng(0).permutation(1797)
    target = load_digits().target
    # Rows come back in file order; the split is decided by the seeded permutation.
    np.testing.assert_array_equal(parts["val"].y, target[np.sort(order[1078:1437])])
    np.testing.assert_array_equal(parts["test"].y, target[np.sort(order[1437:])])
    d = parts["train"]
    assert d.x.dtype == np.float32 and d.x.shape == (1078, 1, 8, 8) and d.input_shape == (1, 8, 8)
    assert d.x.min() == 0.0 and d.x.max() == 1.0 and d.num_classes == 10 and d.name == "digits"


def test_digits_is_deterministic_and_fingerprint_tracks_the_rows():
    a, b = load_data(), load_data()
    assert a.fingerprint == b.fingerprint and len(a.fingerprint) == 64
    np.testing.assert_array_equal(a.split, b.split)
    assert set(a.split.tolist()) == {"val", "test"} and len(a) == 719
    assert load_data(splits=("train", "val")).fingerprint != a.fingerprint


# ---------------------------------------------------------------- CIFAR layouts written here


def _batch(n, labels_key, num_classes, seed):
    rng = np.random.default_rng(seed)
    return {
        b"batch_label": b"testing batch",
        labels_key: [int(v) for v in rng.integers(0, num_classes, n)],
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [b"img%d.png" % i for i in range(n)],
    }


def _dump(path, obj, protocol=2):
    with open(path, "wb") as handle:
        pickle.dump(obj, handle, protocol=protocol)


def _write_cifar100(root: pathlib.Path, n_train=6, n_test=4):
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    train, test = _batch(n_train, b"fine_labels", 100, 1), _batch(n_test, b"fine_labels", 100, 2)
    _dump(folder / "train", train)
    _dump(folder / "test", test, protocol=5)  # as Python 3 would re-save it
    _dump(folder / "meta", {b"fine_label_names": [b"c%d" % i for i in range(100)]})
    return folder, train, test


def _write_cifar10(root: pathlib.Path):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = [_batch(2, b"labels", 10, i) for i in range(1, 6)]
    for i, batch in enumerate(batches, 1):
        _dump(folder / f"data_batch_{i}", batch)
    test = _batch(5, b"labels", 10, 9)
    _dump(folder / "test_batch", test)
    _dump(folder / "batches.meta", {b"label_names": [b"c%d" % i for i in range(10)]})
    return folder, batches, test


def test_cifar100_values_normalisation_and_splits(tmp_path):
    folder, train, test = _write_cifar100(tmp_path)
    d = load_data(f"cifar100:{folder}", splits=("train", "val", "test"))
    assert d.x.shape == (10, 3, 32, 32) and d.x.dtype == np.float32 and d.num_classes == 100
    assert d.name == "cifar100" and d.input_shape == (3, 32, 32)
    # One pixel by hand: row 0 of train, green channel, row 2, column 3.
    value = train[b"data"][0, 1024 * 1 + 32 * 2 + 3]
    assert d.x[0, 1, 2, 3] == pytest.approx((value / 255 - CIFAR_MEAN[1]) / CIFAR_STD[1], abs=2e-6)
    reference = (train[b"data"].reshape(-1, 3, 32, 32) / 255 - np.reshape(CIFAR_MEAN, (1, 3, 1, 1))) / np.reshape(
        CIFAR_STD, (1, 3, 1, 1)
    )
    np.testing.assert_allclose(d.x[:6], reference, rtol=0, atol=2e-6)
    # Train rows first, then the test file split in half by default_rng(0).permutation(4).
    order = np.random.default_rng(0).permutation(4)
    expected = np.array(["train"] * 6 + ["test"] * 4, dtype=object)
    expected[6 + order[:2]] = "val"
    np.testing.assert_array_equal(d.split, expected.astype(str))
    np.testing.assert_array_equal(d.y, train[b"fine_labels"] + test[b"fine_labels"])


def test_cifar_parent_or_folder_and_only_needed_files(tmp_path):
    folder, _, _ = _write_cifar100(tmp_path)
    a, b = load_data(f"cifar100:{tmp_path}"), load_data(f"cifar100:{folder}")
    assert a.fingerprint == b.fingerprint and len(a) == 4
    (folder / "train").unlink()  # val/test never read the training file
    assert load_data(f"cifar100:{folder}").fingerprint == a.fingerprint
    with pytest.raises(FileNotFoundError, match=r"cifar100: missing .*cifar-100-python/train; expected the python-pickle layout"):
        load_data(f"cifar100:{folder}", splits=("train", "val"))


def test_cifar10_layout(tmp_path):
    folder, batches, test = _write_cifar10(tmp_path)
    d = load_data(f"cifar10:{tmp_path}", splits=("train", "val", "test"))
    assert d.num_classes == 10 and len(d) == 15 and d.name == "cifar10"
    assert (d.split == "train").sum() == 10 and (d.split == "val").sum() == 2 and (d.split == "test").sum() == 3
    value = test[b"data"][4, 2 * 1024 + 31 * 32 + 31]  # last test row, blue, bottom-right
    assert d.x[14, 2, 31, 31] == pytest.approx((value / 255 - CIFAR_MEAN[2]) / CIFAR_STD[2], abs=2e-6)
    np.testing.assert_array_equal(d.y[:10], sum((b[b"labels"] for b in batches), []))


def test_cifar_missing_directory_and_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"cifar10 directory .*nowhere does not exist; expected .*cifar-10-batches-py/\{data_batch_1"):
        load_data(f"cifar10:{tmp_path / 'nowhere'}")
    with pytest.raises(FileNotFoundError, match=r"cifar100: missing .*/test; .*cifar-100-python/\{train, test, meta\}"):
        load_data(f"cifar100:{tmp_path}")


class _TouchOnUnpickle:
    def __init__(self, marker):
        self.marker = pathlib.Path(marker)

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def test_cifar_pickles_cannot_run_code(tmp_path):
    folder, _, test = _write_cifar100(tmp_path)
    marker = tmp_path / "pwned"
    _dump(folder / "test", {**test, b"extra": _TouchOnUnpickle(marker)})
    with pytest.raises(ValueError, match=r"test asks to unpickle global (__builtin__|builtins).getattr, which is not allowed \(it could run code\)"):
        load_data(f"cifar100:{folder}")
    assert not marker.exists()
    _dump(folder / "test", {b"data": __import__("os").system})
    with pytest.raises(ValueError, match=r"global (posix|os)\.system, which is not allowed"):
        load_data(f"cifar100:{folder}")


@pytest.mark.parametrize(
    "content, match",
    [
        (b"\x80\x02}q\x00(U\x04data", r"not a readable CIFAR batch"),  # truncated pickle
        (b"just some text", r"not a readable CIFAR batch"),
        (pickle.dumps([1, 2]), r"holds a list, not a CIFAR batch dict"),
        (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]}), r"lacks b'data' or b'fine_labels'"),
        (pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"fine_labels": [0, 1]}), r"uint8 of shape \(N, 3072\); got uint8 \(2, 100\)"),
        (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"fine_labels": [0]}), r"must be 2 integers"),
        (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"fine_labels": [0, 100]}), r"labels must lie in \[0, 100\)"),
    ],
)
def test_corrupt_cifar_batches(tmp_path, content, match):
    folder, _, _ = _write_cifar100(tmp_path)
    (folder / "test").write_bytes(content)
    with pytest.raises(ValueError, match=match):
        load_data(f"cifar100:{folder}")


# ---------------------------------------------------------------- npz


def test_npz_with_split_keeps_x_shape(tmp_path):
    x = np.arange(5 * 7, dtype=np.float64).reshape(5, 7)
    y = np.array([0, 2, 1, 2, 0])
    split = np.array(["train", "val", "test", "val", "test"])
    np.savez(tmp_path / "my data.npz", x=x, y=y, split=split)
    d = load_data(f"npz:{tmp_path / 'my data.npz'}")
    assert d.name == "npz-my-data" and d.x.dtype == np.float32 and d.x.shape == (4, 7) and d.input_shape == (7,)
    np.testing.assert_array_equal(d.x, x[1:].astype(np.float32))
    np.testing.assert_array_equal(d.split, split[1:])
    assert d.num_classes == 3 and d.y.dtype == np.int64


def test_npz_without_split_halves_val_test_and_fingerprint_ignores_path(tmp_path):
    x = np.random.default_rng(3).normal(size=(9, 2, 3)).astype(np.float32)
    y = np.arange(9) % 4
    np.savez(tmp_path / "a.npz", x=x, y=y)
    np.savez(tmp_path / "b.npz", x=x, y=y)
    a, b = load_data(f"npz:{tmp_path / 'a.npz'}"), load_data(f"npz:{tmp_path / 'b.npz'}")
    order = np.random.default_rng(0).permutation(9)
    expected = np.full(9, "test")
    expected[order[:4]] = "val"
    np.testing.assert_array_equal(a.split, expected)
    assert a.fingerprint == b.fingerprint and a.name != b.name
    np.savez(tmp_path / "c.npz", x=x, y=(y + 1) % 4)
    assert load_data(f"npz:{tmp_path / 'c.npz'}").fingerprint != a.fingerprint
    with pytest.raises(ValueError, match=r"has no rows in splits \['train'\]; its splits hold \{'test': 5, 'val': 4\}"):
        load_data(f"npz:{tmp_path / 'a.npz'}", splits=("train",))


@pytest.mark.parametrize(
    "arrays, match",
    [
        (dict(y=np.zeros(3, int)), r"lacks array\(s\) \['x'\]"),
        (dict(x=np.zeros((3, 2)), y=np.zeros(3)), r"y must hold integer class labels; got dtype float64"),
        (dict(x=np.zeros((3, 2)), y=np.zeros(4, int)), r"y must have shape \(3,\) to match x \(3, 2\); got \(4,\)"),
        (dict(x=np.zeros((3, 2)), y=np.array([0, -1, 0])), r"class indices >= 0"),
        (dict(x=np.array([[0.0], [np.nan]]), y=np.zeros(2, int)), r"x holds 1 NaN/inf"),
        (dict(x=np.zeros((0, 2)), y=np.zeros(0, int)), r"x must have shape \(N, ...\) with N > 0"),
        (dict(x=np.zeros((2, 2)), y=np.zeros(2, int), split=np.array(["val", "dev"])), r"split holds unknown names \['dev'\]"),
        (dict(x=np.zeros((2, 2)), y=np.zeros(2, int), split=np.array([1, 2])), r"split must be 2 strings"),
        (dict(x=np.array([{"a": 1}, None], dtype=object), y=np.zeros(2, int)), r"not Python objects"),
    ],
)
def test_npz_malformed(tmp_path, arrays, match):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match=match):
        load_data(f"npz:{tmp_path / 'bad.npz'}")


def test_npz_not_an_archive(tmp_path):
    (tmp_path / "t.npz").write_text("x,y\n1,2\n")
    with pytest.raises(ValueError, match=r"t.npz is not a readable .npz archive"):
        load_data(f"npz:{tmp_path / 't.npz'}")
    np.save(tmp_path / "one.npy", np.zeros(3))
    with pytest.raises(ValueError, match=r"holds a single array, not an .npz archive"):
        load_data(f"npz:{tmp_path / 'one.npy'}")
    with pytest.raises(FileNotFoundError, match=r"npz data file .*missing.npz does not exist"):
        load_data(f"npz:{tmp_path / 'missing.npz'}")


# ---------------------------------------------------------------- specs


@pytest.mark.parametrize(
    "spec, match",
    [
        ("kmnist", r"unknown data spec 'kmnist'; expected one of digits, cifar100:DIR, cifar10:DIR, "
                   r"fashion-mnist\[:DIR\], mnist:DIR or npz:PATH$"),
        ("mnist", r"unknown data spec 'mnist'.* \(add the location: mnist:DIR, or use fashion-mnist\)$"),
        ("cifar100", r"add the location: cifar100:DIR"),
        ("npz", r"add the file: npz:PATH"),
        ("cifar10:", r"needs a directory: cifar10:DIR"),
        ("digits:x", r"unknown data spec 'digits:x'"),
    ],
)
def test_unknown_specs(spec, match):
    with pytest.raises(ValueError, match=match):
        load_data(spec)


def test_bad_splits_argument():
    with pytest.raises(ValueError, match=r"splits must be a non-empty selection of \('train', 'val', 'test'\); got \('dev',\)"):
        load_data("digits", splits=("dev",))
    assert len(load_data("digits", splits="val")) == 359


# ---------------------------------------------------------------- MNIST IDX layout written here

FASHION_DIR = pathlib.Path("/usr/share/datasets/fashion-mnist")
needs_fashion = pytest.mark.skipif(
    not FASHION_DIR.is_dir(),
    reason="Fashion-MNIST not installed: apt-get install dataset-fashion-mnist (Debian package dataset-fashion-mnist)",
)


def _idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    array = np.asarray(array, dtype=np.uint8)
    magic = (0x0800 | array.ndim) if magic is None else magic
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.tobytes()


def _write_mnist(root: pathlib.Path, n_train=12, n_test=10, size=(5, 4), gz=True, seed=0):
    import gzip

    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, *size), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, *size), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    root.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        data = _idx_bytes(array)
        if gz:
            (root / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (root / name).write_bytes(data)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_layout_values_normalisation_and_splits(tmp_path, gz):
    arrays = _write_mnist(tmp_path / "m", gz=gz)
    d = load_data(f"mnist:{tmp_path / 'm'}", splits=("train", "val", "test"))
    train_px = arrays["train-images-idx3-ubyte"].astype(np.float64) / 255
    mean, std = train_px.mean(), train_px.std()
    assert d.x.dtype == np.float32 and d.x.shape == (22, 1, 5, 4) and d.input_shape == (1, 5, 4)
    assert d.name == "mnist" and d.num_classes == 10
    # train rows first, in file order, normalised with the training file's statistics
    np.testing.assert_allclose(d.x[:12, 0], (train_px - mean) / std, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(d.y[:12], arrays["train-labels-idx1-ubyte"])
    # the test file: first half of default_rng(0).permutation(10) val, the rest test (CIFAR's rule)
    order = np.random.default_rng(0).permutation(10)
    test_split = d.split[12:]
    assert sorted(np.flatnonzero(test_split == "val").tolist()) == sorted(order[:5].tolist())
    test_px = arrays["t10k-images-idx3-ubyte"].astype(np.float64) / 255
    np.testing.assert_allclose(d.x[12:, 0], (test_px - mean) / std, rtol=1e-5, atol=1e-5)
    # val/test only: the same rows and values (normalisation still from the training file)
    only = load_data(f"mnist:{tmp_path / 'm'}")
    np.testing.assert_array_equal(only.x, d.x[12:])
    assert set(only.split.tolist()) == {"val", "test"}


def test_mnist_fingerprint_ignores_gzip_and_spec(tmp_path):
    _write_mnist(tmp_path / "gz", gz=True)
    _write_mnist(tmp_path / "raw", gz=False)
    a, b = load_data(f"mnist:{tmp_path / 'gz'}"), load_data(f"fashion-mnist:{tmp_path / 'raw'}")
    assert a.fingerprint == b.fingerprint and b.name == "fashion-mnist"
    _write_mnist(tmp_path / "other", seed=1)
    assert load_data(f"mnist:{tmp_path / 'other'}").fingerprint != a.fingerprint


def test_mnist_missing_folder_names_the_debian_package(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"apt-get install dataset-fashion-mnist"):
        load_data(f"fashion-mnist:{tmp_path / 'nope'}")
    with pytest.raises(FileNotFoundError, match=r"mnist directory .*nope does not exist; expected a folder"):
        load_data(f"mnist:{tmp_path / 'nope'}")
    with pytest.raises(ValueError, match=r"add the location: mnist:DIR"):
        load_data("mnist")


def test_mnist_folder_with_only_some_files(tmp_path):
    _write_mnist(tmp_path / "m")
    (tmp_path / "m" / "t10k-labels-idx1-ubyte.gz").unlink()
    (tmp_path / "m" / "train-images-idx3-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"lacks train-images-idx3-ubyte, t10k-labels-idx1-ubyte \(raw or \.gz"):
        load_data(f"mnist:{tmp_path / 'm'}")


def _damage(folder: pathlib.Path, name: str, data: bytes):
    (folder / f"{name}.gz").unlink()
    (folder / name).write_bytes(data)


@pytest.mark.parametrize(
    "name, make, match",
    [
        ("train-images-idx3-ubyte", lambda a: _idx_bytes(a, magic=0x0801), r"magic number 0x00000801, expected 0x00000803"),
        ("t10k-labels-idx1-ubyte", lambda a: _idx_bytes(a, magic=0x0803), r"magic number 0x00000803, expected 0x00000801"),
        ("train-labels-idx1-ubyte", lambda a: _idx_bytes(a[:-1]), r"holds 12 images but .* holds 11 labels"),
        ("t10k-images-idx3-ubyte", lambda a: _idx_bytes(a)[:-7], r"header declares shape \(10, 5, 4\) .* truncated"),
        ("t10k-images-idx3-ubyte", lambda a: b"\x00\x00", r"fewer than an IDX header"),
    ],
)
def test_mnist_bad_idx_files(tmp_path, name, make, match):
    arrays = _write_mnist(tmp_path / "m")
    _damage(tmp_path / "m", name, make(arrays[name]))
    with pytest.raises(ValueError, match=match):
        load_data(f"mnist:{tmp_path / 'm'}")


def test_mnist_truncated_gzip(tmp_path):
    _write_mnist(tmp_path / "m")
    path = tmp_path / "m" / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-12])
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte.gz is a damaged or truncated gzip file"):
        load_data(f"mnist:{tmp_path / 'm'}")


def test_mnist_cli_errors_are_one_line_and_write_nothing(tmp_path, capsys):
    from tradeoff.commands import main

    _write_mnist(tmp_path / "m")
    path = tmp_path / "m" / "train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:20])
    out = tmp_path / "model.pt"
    assert main(["train", "--arch", "scan_cnn", "--data", f"mnist:{tmp_path / 'm'}", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "damaged or truncated gzip" in err and not out.exists()


@needs_fashion
def test_fashion_mnist_real_files():
    d = load_data("fashion-mnist", splits=("train", "val", "test"))
    counts = {s: int((d.split == s).sum()) for s in ("train", "val", "test")}
    assert counts == {"train": 60000, "val": 5000, "test": 5000}
    assert d.input_shape == (1, 28, 28) and d.num_classes == 10 and d.name == "fashion-mnist"
    train = d.x[d.split == "train"]
    assert abs(float(train.mean())) < 1e-4 and abs(float(train.std()) - 1) < 1e-4
    assert np.bincount(d.y[d.split == "train"]).tolist() == [6000] * 10
    # test labels are balanced (1,000 a class); val + test together are the whole test file
    assert np.bincount(d.y[d.split != "train"]).tolist() == [1000] * 10
    assert load_data(f"mnist:{FASHION_DIR}").fingerprint == load_data("fashion-mnist").fingerprint

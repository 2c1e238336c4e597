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
        ("mnist", r"unknown data spec 'mnist'; expected one of digits, cifar100:DIR, cifar10:DIR or npz:PATH$"),
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

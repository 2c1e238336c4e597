"""Fuzzed cache and thresholds files: a correct result or one clean line, nothing else.

Valid files are mutated (truncation, flipped bytes, arrays of the wrong dtype or shape,
NaN/inf, object arrays, `.npy` headers declaring huge shapes, missing keys, bad meta
JSON; for thresholds, JSON of wrong types, lengths and values, huge numbers, non-UTF-8
bytes) and loaded with the one reader of each format. Every outcome must be either a
result equal to what an independent reader sees in the same bytes, or a ValueError /
FileNotFoundError whose message is one line naming the file: never another exception
type, a hang (an alarm fails the example) or a memory blow-up (tracemalloc, which sees
NumPy's allocations, bounds the peak).
"""

import io
import json
import math
import signal
import tracemalloc
import zipfile
from contextlib import contextmanager

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tradeoff.cache.format import REQUIRED_KEYS, load_cache, write_cache
from tradeoff.commands import main
from tradeoff.policy.scoring import CONFIDENCE_MEASURES
from tradeoff.cache.synthetic import synthetic_cache
from tradeoff.policy.rule_file import read_rule

FUZZ = settings(max_examples=200, derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
MEMORY_LIMIT = 32 << 20  # bytes; the files are a few kB, so anything near this is a blow-up
SECONDS_LIMIT = 10


class _Hang(BaseException):
    """Not an Exception, so no reader's broad `except Exception` can turn a hang into a clean error."""


@contextmanager
def _bounded():
    """Fail on a hang (SIGALRM) and return the traced peak memory in `peak[0]`."""

    def on_alarm(signum, frame):
        raise _Hang(f"loading took over {SECONDS_LIMIT} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(SECONDS_LIMIT)
    tracemalloc.start()
    peak = [0]
    try:
        yield peak
    finally:
        peak[0] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _load_outcome(loader, path):
    """(result, None) or (None, exc) for the allowed exceptions; anything else propagates."""
    with _bounded() as peak:
        try:
            result, error = loader(path), None
        except (ValueError, FileNotFoundError) as exc:
            result, error = None, exc
    assert peak[0] < MEMORY_LIMIT, f"loading peaked at {peak[0] / 2**20:.0f} MiB"
    if error is not None:
        message = str(error)
        assert "\n" not in message and 0 < len(message) < 1000, message
        assert str(path) in message, message
    return result, error


# ----------------------------------------------------------------------- caches
BASE = synthetic_cache(48, 4, (0.5, 0.7, 0.9), seed=5)
BASE_META = json.dumps(BASE.meta, sort_keys=True)


def _npy(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


def _members(**overrides) -> dict:
    """name.npy -> bytes of a valid cache, with some members replaced (bytes) or dropped (None)."""
    arrays = {"logits": BASE.logits, "labels": BASE.labels, "split": BASE.split, "flops": BASE.flops,
              "meta": np.array(BASE_META)}
    members = {f"{key}.npy": _npy(value) for key, value in arrays.items()}
    for key, value in overrides.items():
        if value is None:
            members.pop(f"{key}.npy")
        else:
            members[f"{key}.npy"] = value if isinstance(value, bytes) else _npy(value)
    return members


def _zip(members: dict, compressed: bool = False) -> bytes:
    buffer = io.BytesIO()
    method = zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED
    with zipfile.ZipFile(buffer, "w", method) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _with_header(array: np.ndarray, shape: tuple) -> bytes:
    """`array`'s bytes behind a header that declares another `shape`."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": np.lib.format.dtype_to_descr(array.dtype),
                                                  "fortran_order": False, "shape": shape})
    return buffer.getvalue() + np.ascontiguousarray(array).tobytes()


def _reference(path):
    """What NumPy itself reads from the same bytes (no pickles), canonical dtypes applied."""
    with np.load(path, allow_pickle=False) as archive:
        arrays = {key: archive[key] for key in REQUIRED_KEYS}
    return arrays


def _check_cache_outcome(path):
    cache, error = _load_outcome(load_cache, path)
    if cache is None:
        return error
    ref = _reference(path)  # the loader accepted it, so NumPy must read the same values
    np.testing.assert_array_equal(cache.logits, ref["logits"])
    assert cache.logits.dtype == ref["logits"].dtype
    np.testing.assert_array_equal(cache.labels, ref["labels"].astype(np.int64))
    np.testing.assert_array_equal(cache.split, ref["split"])
    np.testing.assert_array_equal(cache.flops, ref["flops"].astype(np.float64))
    assert cache.meta == json.loads(str(ref["meta"][()]))
    K, N, C = cache.logits.shape
    assert cache.labels.shape == (N,) and cache.flops.shape == (K,) and np.isfinite(cache.logits).all()
    assert cache.labels.min() >= 0 and cache.labels.max() < C and np.all(np.diff(cache.flops) >= 0)
    return None


VALID_CACHE = _zip(_members())
VALID_COMPRESSED = _zip(_members(), compressed=True)


def test_the_unmutated_files_load(tmp_path):
    for name, data in (("plain.npz", VALID_CACHE), ("deflated.npz", VALID_COMPRESSED)):
        (tmp_path / name).write_bytes(data)
        assert _check_cache_outcome(tmp_path / name) is None
    write_cache(tmp_path / "written.npz", BASE)
    assert (tmp_path / "written.npz").read_bytes()[:2] == b"PK"
    assert _check_cache_outcome(tmp_path / "written.npz") is None


@FUZZ
@given(compressed=st.booleans(), data=st.data())
def test_truncated_caches(tmp_path, compressed, data):
    whole = VALID_COMPRESSED if compressed else VALID_CACHE
    cut = data.draw(st.integers(0, len(whole) - 1))
    path = tmp_path / "cut.npz"
    path.write_bytes(whole[:cut])
    assert _check_cache_outcome(path) is not None  # a prefix is never a whole cache


@FUZZ
@given(compressed=st.booleans(), flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(1, 255)),
                                               min_size=1, max_size=8))
def test_flipped_bytes_in_caches(tmp_path, compressed, flips):
    raw = bytearray(VALID_COMPRESSED if compressed else VALID_CACHE)
    for where, mask in flips:
        raw[int(where * len(raw))] ^= mask
    path = tmp_path / "flipped.npz"
    path.write_bytes(bytes(raw))
    _check_cache_outcome(path)


def _arrays(draw_dtype=True):
    dtypes = st.sampled_from(["<f4", "<f2", "<f8", ">f4", "<i8", "<i4", "<u1", "|b1", "<c8", "<U4", "|S3",
                              "<M8[s]", "|V4"])
    shapes = st.lists(st.integers(0, 5), min_size=0, max_size=4).map(tuple)

    @st.composite
    def build(draw):
        dtype = np.dtype(draw(dtypes))
        shape = draw(shapes)
        raw = draw(st.binary(min_size=dtype.itemsize * math.prod(shape), max_size=dtype.itemsize * math.prod(shape)))
        return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()

    return build()


@FUZZ
@given(key=st.sampled_from(REQUIRED_KEYS), array=_arrays())
def test_arrays_of_any_dtype_and_shape(tmp_path, key, array):
    path = tmp_path / "replaced.npz"
    path.write_bytes(_zip(_members(**{key: array})))
    _check_cache_outcome(path)


@FUZZ
@given(exit_=st.integers(0, 2), row=st.integers(0, 47), value=st.sampled_from([np.nan, np.inf, -np.inf]),
       as_half=st.booleans())
def test_non_finite_logits_name_the_exit(tmp_path, exit_, row, value, as_half):
    logits = BASE.logits.astype(np.float16 if as_half else np.float32)
    logits[exit_, row, row % 4] = value
    path = tmp_path / "nan.npz"
    path.write_bytes(_zip(_members(logits=logits)))
    error = _check_cache_outcome(path)
    assert error is not None and f"exit {exit_ + 1} has 1 NaN/inf" in str(error)


@FUZZ
@given(key=st.sampled_from(REQUIRED_KEYS),
       shape=st.sampled_from([(2**40,), (3, 2**40, 4), (2**31, 2**31), (2**62,), (3, 48, 2**20), (10**6,), (-2, -3)]))
def test_huge_declared_shapes_are_refused_before_allocation(tmp_path, key, shape):
    source = {"logits": BASE.logits, "labels": BASE.labels, "split": BASE.split, "flops": BASE.flops,
              "meta": np.array(BASE_META)}[key]
    path = tmp_path / "huge.npz"
    path.write_bytes(_zip(_members(**{key: _with_header(source, shape)})))
    error = _check_cache_outcome(path)
    assert error is not None and ("declares" in str(error)), error


@FUZZ
@given(missing=st.sets(st.sampled_from(REQUIRED_KEYS), min_size=1))
def test_missing_keys(tmp_path, missing):
    path = tmp_path / "missing.npz"
    path.write_bytes(_zip(_members(**{key: None for key in missing})))
    error = _check_cache_outcome(path)
    assert error is not None and "missing keys" in str(error)


def test_object_arrays_are_never_unpickled(tmp_path):
    for key in REQUIRED_KEYS:
        path = tmp_path / f"object-{key}.npz"
        path.write_bytes(_zip(_members(**{key: np.array([{"a": 1}, None], dtype=object)})))
        error = _check_cache_outcome(path)
        assert error is not None and "never unpickled" in str(error)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**30), 10**30) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
META_KEYS = st.sampled_from(["schema", "baseline_flops", "arch", "checkpoint_sha256", "num_classes", "exit_names",
                             "created", "anything"])


@st.composite
def _meta_texts(draw):
    kind = draw(st.sampled_from(["value", "document", "text", "deep", "bigint"]))
    if kind == "value":
        meta = dict(BASE.meta)
        meta[draw(META_KEYS)] = draw(JSON_VALUES)
        return json.dumps(meta, allow_nan=True)
    if kind == "document":
        return json.dumps(draw(JSON_VALUES), allow_nan=True)
    if kind == "text":
        return draw(st.text(max_size=40))
    if kind == "deep":
        return "[" * draw(st.integers(1000, 200_000))
    return '{"baseline_flops": 1' + "0" * draw(st.integers(300, 6000)) + "}"


@FUZZ
@given(text=_meta_texts())
def test_bad_meta_json(tmp_path, text):
    path = tmp_path / "meta.npz"
    path.write_bytes(_zip(_members(meta=np.array(text))))
    _check_cache_outcome(path)


def test_wrong_zip_compression_and_encryption_flags(tmp_path):
    raw = bytearray(VALID_CACHE)
    # Central-directory compression method of the first member -> LZMA (14); then the encryption bit.
    central = raw.rfind(b"PK\x01\x02", 0, raw.rfind(b"PK\x05\x06"))
    first = raw.find(b"PK\x01\x02")
    for offset, value, expect in ((first + 10, 14, "compression method"), (first + 8, 1, "encrypted")):
        mutated = bytearray(raw)
        mutated[offset] = value
        path = tmp_path / "flags.npz"
        path.write_bytes(bytes(mutated))
        error = _check_cache_outcome(path)
        assert error is not None and expect in str(error), error
    assert central >= first


def test_not_a_cache_at_all(tmp_path):
    cases = {"empty.npz": b"", "text.npz": b"hello", "npy.npz": _npy(BASE.logits), "dir": None}
    for name, data in cases.items():
        path = tmp_path / name
        if data is None:
            path.mkdir()
        else:
            path.write_bytes(data)
        assert _check_cache_outcome(path) is not None
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_cache(tmp_path / "absent.npz")


# ----------------------------------------------------------------------- the CLI
CLI_CASES = {
    "truncated": lambda: VALID_CACHE[: len(VALID_CACHE) // 2],
    "huge-header": lambda: _zip(_members(logits=_with_header(BASE.logits, (3, 2**40, 4)))),
    "nan": lambda: _zip(_members(logits=np.where(np.arange(4) == 2, np.nan, BASE.logits).astype(np.float32))),
    "object-meta": lambda: _zip(_members(meta=np.array([print], dtype=object))),
    "deep-meta": lambda: _zip(_members(meta=np.array("[" * 100_000))),
}


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_search_on_a_mutated_cache_fails_in_one_line(case, tmp_path, capsys):
    path = tmp_path / f"{case}.npz"
    path.write_bytes(CLI_CASES[case]())
    out = tmp_path / "run"
    assert main(["search", "--cache", str(path), "--out", str(out), "--pop", "8", "--gens", "2", "--no-plots"]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("tradeoff search: error: ") and str(path) in err
    assert not out.exists()


# ----------------------------------------------------------------------- thresholds files
K = 4
BASE_DOC = {
    "thresholds": [0.9, 0.8, 0.7], "confidence": "maxprob", "ensemble": False, "calibration": None,
    "num_exits": K, "cache": "results/cache/x.npz", "cache_sha256": "ab" * 32, "arch": "scan_small",
    "checkpoint_sha256": "cd" * 32, "pick": {"target_acc": 0.9},
    "val": {"accuracy": 0.9, "flops": 1e6, "speedup": 1.5, "exit_fractions": [0.4, 0.3, 0.2, 0.1]},
    "test": {"accuracy": 0.89, "flops": 1e6, "speedup": 1.5, "exit_fractions": [0.4, 0.3, 0.2, 0.1],
             "accuracy_ci95": [0.85, 0.92]},
}
DOC_KEYS = st.sampled_from(sorted(BASE_DOC))
NUMBERS = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(10**400), 10**400)


@st.composite
def _thresholds_texts(draw):
    kind = draw(st.sampled_from(["value", "delete", "list", "calibration", "bytes", "raw"]))
    doc = json.loads(json.dumps(BASE_DOC))
    if kind == "value":
        doc[draw(DOC_KEYS)] = draw(JSON_VALUES | NUMBERS)
    elif kind == "delete":
        for key in draw(st.sets(DOC_KEYS, min_size=1, max_size=4)):
            doc.pop(key)
    elif kind == "list":
        doc["thresholds"] = draw(st.lists(NUMBERS | st.sampled_from([0.0, 0.5, 1.0, True, None, "0.5"]), max_size=6))
    elif kind == "calibration":
        doc["calibration"] = {"temperatures": draw(st.lists(NUMBERS | st.just(1.0), max_size=6))}
    text = json.dumps(doc, allow_nan=True).encode()
    if kind == "bytes":
        raw = bytearray(text)
        for where, value in draw(st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)),
                                          min_size=1, max_size=4)):
            raw[int(where * len(raw))] = value
        text = bytes(raw[: draw(st.integers(0, len(raw)))])
    elif kind == "raw":
        text = draw(st.sampled_from([
            b"", b"\xff\xfe{}", "\ufeff{}".encode(), b"[" * 100_000, b'{"thresholds": [1' + b"0" * 5000 + b"]}",
            b'{"thresholds": [1e999], "confidence": "maxprob", "ensemble": false, "calibration": null}',
            b'{"thresholds": [NaN], "confidence": "maxprob", "ensemble": false, "calibration": null}',
        ]))
    return text


def _check_thresholds_outcome(path, num_exits):
    loaded, error = _load_outcome(lambda p: read_rule(p, num_exits=num_exits), path)
    if loaded is None:
        return error
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert loaded.thresholds.dtype == np.float64 and loaded.thresholds.tolist() == [float(t) for t in doc["thresholds"]]
    assert np.all((loaded.thresholds >= 0) & (loaded.thresholds <= 1))
    assert loaded.num_exits == loaded.thresholds.size + 1 and loaded.confidence in CONFIDENCE_MEASURES
    assert num_exits is None or loaded.num_exits == num_exits
    assert isinstance(loaded.ensemble, bool)
    if loaded.temperatures is not None:
        assert loaded.temperatures.shape == (loaded.num_exits,) and np.all(np.isfinite(loaded.temperatures))
        assert np.all(loaded.temperatures > 0)
    return None


def test_the_valid_thresholds_file_loads(tmp_path):
    path = tmp_path / "thresholds.json"
    path.write_text(json.dumps(BASE_DOC))
    assert _check_thresholds_outcome(path, K) is None
    assert _check_thresholds_outcome(path, None) is None
    assert _check_thresholds_outcome(path, K + 1) is not None


@FUZZ
@given(text=_thresholds_texts(), num_exits=st.sampled_from([None, K, 2]))
def test_fuzzed_thresholds_files(tmp_path, text, num_exits):
    path = tmp_path / "thresholds.json"
    path.write_bytes(text)
    _check_thresholds_outcome(path, num_exits)


def test_thresholds_edge_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_rule(tmp_path / "absent.json")
    for text, match in ((b"[" * 100_000, "nested|JSON"), (b'{"thresholds": [1' + b"0" * 400 + b"]}", "lacks"),
                        (b"\xff\xfe{}", "not a text JSON")):
        path = tmp_path / "t.json"
        path.write_bytes(text)
        with pytest.raises(ValueError, match=match):
            read_rule(path)
    doc = dict(BASE_DOC, thresholds=[10**400, 0.5, 0.5])
    (tmp_path / "big.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=r"thresholds must lie in \[0, 1\]"):
        read_rule(tmp_path / "big.json")
    doc = dict(BASE_DOC, calibration={"temperatures": [10**400, 1, 1, 1]})
    (tmp_path / "bigt.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="temperatures must be 4 positive numbers"):
        read_rule(tmp_path / "bigt.json")


# ----------------------------------------------------------------------- npz data files
def test_npz_data_with_an_enormous_header_is_refused_in_one_line(tmp_path):
    from tradeoff.data import load_data

    x = np.zeros((20, 4), np.float32)
    path = tmp_path / "data.npz"
    path.write_bytes(_zip({"x.npy": _with_header(x, (2**40, 4)), "y.npy": _npy(np.arange(20) % 3)}))
    with pytest.raises(ValueError, match="declares more data than fits in memory") as info:
        load_data(f"npz:{path}")
    assert "\n" not in str(info.value) and str(path) in str(info.value)


# ----------------------------------------------------------------------- checkpoints
def test_a_checkpoint_declaring_a_huge_class_count_is_refused_before_building(tmp_path):
    import torch

    from tradeoff.checkpoint import load_checkpoint, save_checkpoint
    from tradeoff.models import create_model

    path = tmp_path / "model.pt"
    save_checkpoint(path, create_model("scan_small", num_classes=10), arch="scan_small", arch_kwargs={},
                    num_classes=10, data="digits")
    doc = torch.load(path, weights_only=True)
    for declared in (2**33, 11, 0):
        torch.save({**doc, "num_classes": declared}, tmp_path / "bad.pt")
        with pytest.raises(ValueError, match=f"records num_classes {declared} but its final layer has 10 outputs"):
            load_checkpoint(tmp_path / "bad.pt")  # (2**33 classes would need a 4 TB head; refused first)
    assert load_checkpoint(path).num_classes == 10

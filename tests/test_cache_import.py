"""`tradeoff import`: caches from the user's own arrays, and every malformed input refused."""

import json

import numpy as np
import pytest
import torch

from tradeoff.cache.format import load_cache
from tradeoff.cache.importer import default_split, import_cache, parse_flops
from tradeoff.commands import main
from tradeoff.data import load_data
from tradeoff.errors import UnsafeCheckpointError

K, N, C = 3, 40, 5


@pytest.fixture()
def arrays(tmp_path):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(K, N, C)).astype(np.float32)
    labels = rng.integers(0, C, N)
    np.save(tmp_path / "all.npy", logits)
    for k in range(K):
        np.save(tmp_path / f"exit{k}.npy", logits[k])
    np.save(tmp_path / "labels.npy", labels)
    return logits, labels


def test_one_3d_file_round_trips_with_the_npz_split_rule(tmp_path, arrays, capsys):
    logits, labels = arrays
    out = tmp_path / "c.npz"
    code = main(["import", str(tmp_path / "all.npy"), "--labels", str(tmp_path / "labels.npy"),
                 "--flops", "1e8,2e8,3e8", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "val acc" in printed and f"wrote {out}" in printed
    with np.load(out, allow_pickle=False) as raw:
        np.testing.assert_array_equal(raw["logits"], logits)
        np.testing.assert_array_equal(raw["labels"], labels)
        np.testing.assert_array_equal(raw["flops"], [1e8, 2e8, 3e8])
        split = raw["split"]
        meta = json.loads(str(raw["meta"][()]))
    # The fixed rule: first N // 2 of default_rng(0).permutation(N) are val - as npz data.
    order = np.random.default_rng(0).permutation(N)
    assert set(split[order[: N // 2]]) == {"val"} and set(split[order[N // 2 :]]) == {"test"}
    np.savez(tmp_path / "d.npz", x=np.zeros((N, 2), np.float32), y=labels)
    np.testing.assert_array_equal(split, load_data(f"npz:{tmp_path / 'd.npz'}").split)
    assert meta["baseline_flops"] == 3e8 and meta["baseline_flops_source"] == "last exit (not given)"
    assert meta["flop_counter"] == "given" and meta["num_classes"] == C


def test_per_exit_files_and_pt_tensors_equal_the_stacked_array(tmp_path, arrays):
    logits, labels = arrays
    per_exit = import_cache([tmp_path / f"exit{k}.npy" for k in range(K)], tmp_path / "labels.npy", flops=[1, 2, 3])
    np.testing.assert_array_equal(per_exit.logits, logits)
    torch.save(torch.from_numpy(logits).half(), tmp_path / "all.pt")
    torch.save(torch.from_numpy(labels), tmp_path / "labels.pt")
    split = np.where(np.arange(N) < 10, "test", "val")
    np.save(tmp_path / "split.npy", split)
    from_pt = import_cache([tmp_path / "all.pt"], tmp_path / "labels.pt", split_path=tmp_path / "split.npy",
                           flops=[1, 2, 3], baseline_flops=2.5)
    assert from_pt.logits.dtype == np.float16
    np.testing.assert_array_equal(from_pt.logits, logits.astype(np.float16))
    np.testing.assert_array_equal(from_pt.split, split)
    assert from_pt.baseline_flops == 2.5


def test_flops_from_json_list_or_object(tmp_path):
    (tmp_path / "f.json").write_text("[1e8, 2e8]")
    (tmp_path / "g.json").write_text('{"flops": [1e8, 2e8], "baseline_flops": 1.5e8}')
    assert parse_flops(str(tmp_path / "f.json")) == ([1e8, 2e8], None)
    assert parse_flops(str(tmp_path / "g.json")) == ([1e8, 2e8], 1.5e8)
    assert parse_flops(" 1e8, 2e8 ") == ([1e8, 2e8], None)


class _Marker:
    """Unpickling this touches a file: proof that code ran."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.path),))


def test_pickled_pt_never_runs_code(tmp_path, arrays, capsys):
    marker = tmp_path / "marker"
    torch.save({"logits": _Marker(str(marker))}, tmp_path / "evil.pt")
    with pytest.raises(UnsafeCheckpointError, match=r"evil.pt needs unpickling.*--trust-checkpoint"):
        import_cache([tmp_path / "evil.pt"], tmp_path / "labels.npy", flops=[1, 2, 3])
    code = main(["import", str(tmp_path / "evil.pt"), "--labels", str(tmp_path / "labels.npy"),
                 "--flops", "1,2,3", "--out", str(tmp_path / "c.npz")])
    assert code == 1 and "--trust-checkpoint" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "c.npz").exists()


def _write(tmp_path, name, array):
    np.save(tmp_path / name, array)
    return str(tmp_path / name)


@pytest.mark.parametrize(
    "case, match",
    [
        ("n_mismatch", r"mismatched N: .*exit0.npy has 40 rows but .*short.npy has 39"),
        ("single_2d", r"shape \(40, 5\), one exit's \(N, C\); give one \(N, C\) file per exit"),
        ("3d_among_many", r"all.npy has shape \(3, 40, 5\); with one file per exit each must be \(N, C\)"),
        ("flops_count", r"--flops gives 2 costs but the logits have K = 3 exits"),
        ("flops_text", r"--flops '1e8,abc,3e8': 'abc' is not a number"),
        ("flops_decreasing", r"flops must not decrease with depth.*exit 2 costs 1e\+08 < exit 1's 2e\+08"),
        ("labels_n", r"--labels .*: expected shape \(40,\) to match the logits' N = 40; got \(39,\)"),
        ("labels_float", r"labels must be integers; got dtype float64"),
        ("split_names", r"split holds unknown names \['dev'\]"),
        ("int_logits", r"has dtype int64; logits must be floating point"),
        ("object_npy", r"holds Python objects, not numbers"),
        ("missing", r"labels file .*nope.npy does not exist"),
        ("suffix", r"expected a .npy or .pt file; got '.csv'"),
        ("garbage_pt", r"logits file .*garbage.pt is not a readable torch file"),
        ("truncated_npy", r"logits file .*cut.npy is not a readable .npy array"),
        ("dict_pt", r"holds a dict with keys \['logits'\]; expected one tensor"),
    ],
)
def test_bad_input_is_one_line_and_no_file(tmp_path, arrays, capsys, case, match):
    logits, labels = arrays
    files = [str(tmp_path / "all.npy")]
    lab, flops, extra = str(tmp_path / "labels.npy"), "1e8,2e8,3e8", []
    if case == "n_mismatch":
        files = [str(tmp_path / "exit0.npy"), _write(tmp_path, "short.npy", logits[1, :-1]), str(tmp_path / "exit2.npy")]
    elif case == "single_2d":
        files = [str(tmp_path / "exit0.npy")]
    elif case == "3d_among_many":
        files = [str(tmp_path / "exit0.npy"), str(tmp_path / "all.npy")]
    elif case == "flops_count":
        flops = "1e8,2e8"
    elif case == "flops_text":
        flops = "1e8,abc,3e8"
    elif case == "flops_decreasing":
        flops = "2e8,1e8,3e8"
    elif case == "labels_n":
        lab = _write(tmp_path, "l39.npy", labels[:-1])
    elif case == "labels_float":
        lab = _write(tmp_path, "lf.npy", labels.astype(float))
    elif case == "split_names":
        extra = ["--split", _write(tmp_path, "s.npy", np.array(["dev"] * N))]
    elif case == "int_logits":
        files = [_write(tmp_path, "int.npy", np.zeros((K, N, C), np.int64))]
    elif case == "object_npy":
        np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
        files = [str(tmp_path / "obj.npy")]
    elif case == "missing":
        lab = str(tmp_path / "nope.npy")
    elif case == "garbage_pt":
        (tmp_path / "garbage.pt").write_bytes(b"hello, not a tensor file")
        files = [str(tmp_path / "garbage.pt")]
    elif case == "truncated_npy":
        (tmp_path / "cut.npy").write_bytes((tmp_path / "all.npy").read_bytes()[:1000])
        files = [str(tmp_path / "cut.npy")]
    elif case == "dict_pt":
        torch.save({"logits": torch.from_numpy(logits)}, tmp_path / "d.pt")
        files = [str(tmp_path / "d.pt")]
    else:
        (tmp_path / "x.csv").write_text("1,2")
        files = [str(tmp_path / "x.csv")]
    out = tmp_path / "out" / "c.npz"
    assert main(["import", *files, "--labels", lab, "--flops", flops, "--out", str(out), *extra]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert __import__("re").search(match, err), err
    assert not (tmp_path / "out").exists()


def test_default_split_is_deterministic_half_half():
    a, b = default_split(11), default_split(11)
    np.testing.assert_array_equal(a, b)
    assert (a == "val").sum() == 5 and (a == "test").sum() == 6


def test_imported_cache_loads_back(tmp_path, arrays):
    out = tmp_path / "c.npz"
    assert main(["import", str(tmp_path / "all.npy"), "--labels", str(tmp_path / "labels.npy"),
                 "--flops", "1,2,3", "--baseline-flops", "2", "--out", str(out)]) == 0
    cache = load_cache(out)
    assert cache.baseline_flops == 2.0 and cache.meta["baseline_flops_source"] == "given"


def test_out_is_never_a_file_that_is_not_a_cache(tmp_path, arrays, capsys):
    precious = tmp_path / "model.pt"
    precious.write_bytes(b"weights")
    args = [str(tmp_path / "all.npy"), "--labels", str(tmp_path / "labels.npy"), "--flops", "1,2,3"]
    assert main(["import", *args, "--out", str(precious)]) == 1
    assert "exists and is not a tradeoff cache" in capsys.readouterr().err and precious.read_bytes() == b"weights"
    assert main(["import", *args, "--out", str(tmp_path / "labels.npy")]) == 1
    assert "is one of the input files" in capsys.readouterr().err
    out = tmp_path / "c.npz"
    assert main(["import", *args, "--out", str(out)]) == 0
    assert main(["import", *args[:-1], "2,3,4", "--out", str(out)]) == 0  # a cache is replaced
    assert load_cache(out).flops.tolist() == [2.0, 3.0, 4.0]


# --------------------------------------------------------------------------- probabilities (issue 15, item 1)
def _proba_exits(seed=0, n=200, c=4):
    """Three exits' predict_proba-like outputs (rows sum to 1) and labels."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, c, n)
    exits = []
    for sharp in (1.0, 2.0, 4.0):
        z = rng.normal(size=(n, c)) + sharp * np.eye(c)[labels]
        p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
        exits.append(p)  # float64, like scikit-learn
    return exits, labels


def test_probability_rows_are_detected_and_converted_with_a_notice():
    from tradeoff.policy.scoring import softmax

    exits, labels = _proba_exits()
    notes = []
    cache = import_cache(exits, labels, flops=[1, 2, 3], log=notes.append)  # arrays, not paths
    assert notes and "probabilities" in notes[0] and "--logits" in notes[0]
    assert cache.meta["input_kind"] == "probabilities (converted with log)"
    # softmax of the cached logits gives back the probabilities, so maxprob thresholds mean predict_proba.max(1)
    for k, p in enumerate(exits):
        np.testing.assert_allclose(softmax(cache.logits[k].astype(np.float64), 1.0), p, rtol=1e-5, atol=1e-7)


def test_explicit_logits_keeps_rows_as_they_are_and_probabilities_refuses_logits():
    exits, labels = _proba_exits()
    kept = import_cache(exits, labels, flops=[1, 2, 3], kind="logits")
    np.testing.assert_allclose(kept.logits[0], exits[0].astype(np.float32))
    rng = np.random.default_rng(1)
    with pytest.raises(ValueError, match="--probabilities given but exit 1, exit 2, exit 3 has rows"):
        import_cache(rng.normal(size=(3, 20, 4)).astype(np.float32), rng.integers(0, 4, 20), flops=[1, 2, 3],
                     kind="probabilities")


def test_mixed_probabilities_and_logits_are_refused_with_the_fix():
    exits, labels = _proba_exits()
    exits[2] = np.log(exits[2]) + 3.0  # logits for the last exit only
    with pytest.raises(ValueError, match=r"exit 1, exit 2 of the logits hold probabilities .* pass --logits"):
        import_cache(exits, labels, flops=[1, 2, 3])


def test_cli_import_of_predict_proba_files_says_so(tmp_path, capsys):
    exits, labels = _proba_exits()
    for k, p in enumerate(exits):
        np.save(tmp_path / f"p{k}.npy", p)
    np.save(tmp_path / "y.npy", labels)
    args = ["import", *(str(tmp_path / f"p{k}.npy") for k in range(3)), "--labels", str(tmp_path / "y.npy"),
            "--flops", "1,2,3", "--out", str(tmp_path / "c.npz")]
    assert main(args) == 0
    assert "converted with log" in capsys.readouterr().err
    assert main(args + ["--logits", "--out", str(tmp_path / "d.npz")]) == 0
    assert "converted" not in capsys.readouterr().err
    assert load_cache(tmp_path / "d.npz").meta["input_kind"] == "logits (as given)"

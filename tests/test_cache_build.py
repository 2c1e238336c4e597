"""`tradeoff cache` end to end: real scan_small on digits, reuse, refusals, NaN exits,
and an official-layout bare state_dict of scan_resnet18 on a CIFAR-layout directory."""

import dataclasses
import json
import pickle

import numpy as np
import pytest
import torch

from tradeoff.cache.build import INFORMATIONAL_META, build_cache
from tradeoff.checkpoint import load_checkpoint, save_checkpoint
from tradeoff.commands import main
from tradeoff.data import load_data
from tradeoff.fileio import sha256_file
from tradeoff.flops import exit_costs
from tradeoff.models import create_model


def _save_small(path, seed=0, nan_exit=None):
    torch.manual_seed(seed)
    model = create_model("scan_small")
    if nan_exit is not None:
        fc = model.stages()[nan_exit - 1].head.fc
        with torch.no_grad():
            fc.bias.fill_(float("nan"))
    save_checkpoint(path, model, arch="scan_small", arch_kwargs={}, num_classes=10, data="digits")
    return path


@pytest.fixture(scope="module")
def small_ckpt(tmp_path_factory):
    return _save_small(tmp_path_factory.mktemp("ckpt") / "small.pt")


@pytest.fixture(scope="module")
def digits():
    return load_data("digits")


def _files(directory):
    return sorted(p.name for p in directory.iterdir())


def test_cache_end_to_end_matches_the_model(small_ckpt, digits, tmp_path, capsys):
    out = tmp_path / "c.npz"
    assert main(["cache", "--ckpt", str(small_ckpt), "--out", str(out), "--batch-size", "100"]) == 0
    printed = capsys.readouterr().out
    assert "val acc" in printed and "test acc" in printed and f"wrote {out}" in printed
    assert _files(tmp_path) == ["c.npz"]

    model = load_checkpoint(small_ckpt).model.eval()
    with np.load(out, allow_pickle=False) as raw:
        logits, labels, split, flops = raw["logits"], raw["labels"], raw["split"], raw["flops"]
        meta = json.loads(str(raw["meta"][()]))
    assert logits.shape == (3, len(digits), 10) and logits.dtype == np.float32
    with torch.inference_mode():  # the same batches, so the same bytes
        direct = [torch.stack(model(torch.from_numpy(digits.x[a : a + 100]))).numpy() for a in range(0, len(digits), 100)]
    np.testing.assert_array_equal(logits, np.concatenate(direct, axis=1))
    np.testing.assert_array_equal(labels, digits.y)
    np.testing.assert_array_equal(split, digits.split)
    costs = exit_costs(model, digits.input_shape)
    np.testing.assert_array_equal(flops, costs.flops)
    assert meta["baseline_flops"] == costs.baseline_flops
    assert meta["checkpoint_sha256"] == sha256_file(small_ckpt)
    assert meta["data_fingerprint"] == digits.fingerprint
    assert meta["arch"] == "scan_small" and meta["num_classes"] == 10 and meta["logits_dtype"] == "float32"
    assert meta["params_per_exit"] == costs.params_per_exit and meta["splits"] == ["test", "val"]
    # The table's accuracies are those of the logits.
    acc = (logits[0].argmax(1) == labels)[split == "val"].mean()
    row = next(line for line in printed.splitlines() if line.startswith("exit1"))
    assert row.split()[1] == f"{acc:.4f}"


def test_one_forward_pass_per_batch(small_ckpt, digits):
    model = load_checkpoint(small_ckpt).model.train()
    calls = []
    model.register_forward_pre_hook(lambda module, inputs: calls.append(inputs[0].shape[0]))
    costs = exit_costs(model, digits.input_shape)
    cache = build_cache(model, digits, costs, batch_size=256, progress=False, meta={"arch": "scan_small"})
    assert calls == [256, 256, len(digits) - 512]  # never K passes
    assert cache.logits.shape == (3, len(digits), 10) and model.training  # mode restored


def test_second_run_reuses_and_another_model_is_refused(small_ckpt, tmp_path, capsys):
    out = tmp_path / "c.npz"
    assert main(["cache", "--ckpt", str(small_ckpt), "--out", str(out)]) == 0
    before = (out.read_bytes(), out.stat().st_mtime_ns)
    capsys.readouterr()
    assert main(["cache", "--ckpt", str(small_ckpt), "--out", str(out)]) == 0
    assert "reusing" in capsys.readouterr().out
    assert (out.read_bytes(), out.stat().st_mtime_ns) == before

    other = _save_small(tmp_path / "other.pt", seed=1)
    assert main(["cache", "--ckpt", str(other), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "another model" in err and "delete it or pass another --out" in err and len(err.splitlines()) == 1
    assert out.read_bytes() == before[0]

    np.savez(tmp_path / "d.npz", x=np.zeros((6, 1, 8, 8), np.float32), y=np.arange(6))
    assert main(["cache", "--ckpt", str(small_ckpt), "--out", str(out), "--data", f"npz:{tmp_path / 'd.npz'}"]) == 1
    assert "holds a cache of another data" in capsys.readouterr().err and out.read_bytes() == before[0]

    # Same model, other dtype: rebuilt in place, with float16 logits.
    assert main(["cache", "--ckpt", str(small_ckpt), "--out", str(out), "--logits-dtype", "float16"]) == 0
    assert "rebuilding" in capsys.readouterr().err
    with np.load(out, allow_pickle=False) as raw:
        assert raw["logits"].dtype == np.float16


def test_nan_exit_is_named_and_nothing_is_written(tmp_path, capsys):
    bad = _save_small(tmp_path / "nan.pt", nan_exit=2)
    out = tmp_path / "out" / "c.npz"
    assert main(["cache", "--ckpt", str(bad), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "exit 2 gave NaN/inf logits" in err and "nothing was written" in err
    assert not out.exists() and (not out.parent.exists() or _files(out.parent) == [])


def test_default_output_and_include_train(small_ckpt, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["cache", "--ckpt", str(small_ckpt), "--include-train"]) == 0
    out = tmp_path / "results" / "cache" / "small-digits.npz"
    with np.load(out, allow_pickle=False) as raw:
        assert sorted(set(raw["split"].tolist())) == ["test", "train", "val"] and raw["labels"].shape == (1797,)


def _npz_data(path, x, y):
    np.savez(path, x=x, y=y)
    return f"npz:{path}"


@pytest.mark.parametrize(
    "case, match",
    [
        ("missing", r"does not exist"),
        ("spec", r"unknown data spec 'mnist'"),
        ("shape", r"does not accept data 'npz-bad' of input shape \(3, 32, 32\)"),
        ("classes", r"model has 10 classes but data .npz-bad. has 12"),
        ("batch", r"--batch-size must be a positive integer; got 0"),
        ("truncated", r"small.pt is not a PyTorch checkpoint.*truncated"),
        ("unsafe", r"--trust-checkpoint"),
        ("nodir", r"cifar10 directory .*nowhere does not exist"),
    ],
)
def test_bad_input_is_one_line_and_no_file(small_ckpt, tmp_path, capsys, case, match):
    rng = np.random.default_rng(0)
    args = ["cache", "--ckpt", str(small_ckpt), "--out", str(tmp_path / "out" / "c.npz")]
    if case == "missing":
        args[2] = str(tmp_path / "nope.pt")
    elif case == "spec":
        args += ["--data", "mnist"]
    elif case == "shape":
        args += ["--data", _npz_data(tmp_path / "bad.npz", rng.random((4, 3, 32, 32)), np.arange(4))]
    elif case == "classes":
        args += ["--data", _npz_data(tmp_path / "bad.npz", rng.random((12, 1, 8, 8)), np.arange(12))]
    elif case == "truncated":
        (tmp_path / "small.pt").write_bytes(small_ckpt.read_bytes()[:5000])
        args[2] = str(tmp_path / "small.pt")
    elif case == "unsafe":
        torch.save({"state_dict": {}, "hook": _Marker(str(tmp_path / "marker"))}, tmp_path / "evil.pt")
        args[2] = str(tmp_path / "evil.pt")
    elif case == "nodir":
        args += ["--data", f"cifar10:{tmp_path / 'nowhere'}"]
    else:
        args += ["--batch-size", "0"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert __import__("re").search(match, err), err
    assert not (tmp_path / "out").exists() and not (tmp_path / "marker").exists()


class _Marker:
    """Unpickling this touches a file: proof that code ran."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.path),))


@pytest.mark.parametrize(
    "output, match",
    [
        (lambda b: torch.zeros(b, 10), r"returned one tensor of shape \(4, 10\).*list of K logits tensors"),
        (lambda b: {"out": torch.zeros(b, 10)}, r"returned dict; expected a list of K logits tensors"),
        (lambda b: [torch.zeros(b, 10), torch.zeros(b, 5)], r"exits returned shapes \[\(4, 10\), \(4, 5\)\]"),
        (lambda b: [torch.zeros(b), torch.zeros(b)], r"exits returned shapes \[\(4,\), \(4,\)\]"),
        (lambda b: [torch.zeros(b, 7), torch.zeros(b, 7)], r"model has 7 classes but data 'digits' has 10"),
    ],
)
def test_malformed_model_outputs_are_refused(digits, output, match):
    class Odd(torch.nn.Module):
        def forward(self, x):
            return output(x.shape[0])

    costs = exit_costs(create_model("scan_small"), digits.input_shape)
    with pytest.raises(ValueError, match=match):
        build_cache(Odd(), digits, costs, batch_size=4, progress=False)


def _write_cifar10(root, n=6, seed=0):
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": rng.integers(0, 10, n).tolist()}
    with open(folder / "test_batch", "wb") as handle:
        pickle.dump(batch, handle, protocol=2)
    return batch


def test_official_bare_state_dict_on_cifar_layout(tmp_path, capsys):
    torch.manual_seed(0)
    model = create_model("scan_resnet18", num_classes=10)
    state = model.state_dict()
    assert len(state) == 233 and {k.split(".")[0] for k in state} >= {"conv1", "scala3", "attention3", "fc4"}
    torch.save(state, tmp_path / "bestmodel.pth")  # what the official SCAN code writes
    _write_cifar10(tmp_path / "data")
    out = tmp_path / "c.npz"
    args = ["cache", "--ckpt", str(tmp_path / "bestmodel.pth"), "--arch", "scan_resnet18", "--num-classes", "10",
            "--data", f"cifar10:{tmp_path / 'data'}", "--out", str(out)]
    assert main(args) == 0
    cache = load_data(f"cifar10:{tmp_path / 'data'}")
    with np.load(out, allow_pickle=False) as raw:
        logits, meta = raw["logits"], json.loads(str(raw["meta"][()]))
    model.eval()
    with torch.inference_mode():
        direct = torch.stack(model(torch.from_numpy(cache.x))).numpy()
    np.testing.assert_array_equal(logits, direct)
    assert meta["arch"] == "scan_resnet18" and meta["num_classes"] == 10 and meta["data_name"] == "cifar10"
    assert len(meta["exit_names"]) == 4 and not set(INFORMATIONAL_META) - set(meta)

    # Without --arch, or with the wrong one, a bare state_dict cannot be built: one line, no file.
    out.unlink()
    capsys.readouterr()
    assert main(args[:3] + args[7:]) == 1
    assert "--arch" in capsys.readouterr().err and not out.exists()
    assert main(args[:4] + ["scan_resnet34"] + args[5:]) == 1
    err = capsys.readouterr().err
    assert "scan_resnet18" in err and len(err.strip().splitlines()) == 1 and not out.exists()


def test_float16_overflow_is_caught_after_the_cast(digits):
    class Loud(torch.nn.Module):
        def forward(self, x):
            b = x.shape[0]
            return [torch.zeros(b, 10), torch.full((b, 10), 1e6)]

    costs = exit_costs(create_model("scan_small"), digits.input_shape)
    costs = dataclasses.replace(costs, flops=costs.flops[:2])  # a two-exit model's costs
    with pytest.raises(ValueError, match=r"exit 2 gave NaN/inf logits \(first at sample 0\).*float16 overflows"):
        build_cache(Loud(), digits, costs, batch_size=64, logits_dtype="float16", progress=False)
    cache = build_cache(Loud(), digits, costs, batch_size=64, logits_dtype="float32", progress=False)
    assert cache.logits.dtype == np.float32 and cache.logits[1].max() == 1e6

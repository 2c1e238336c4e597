"""The demo pipeline on a reduced budget: every file, consistent with each other."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tradeoff.cache.format import load_cache
from tradeoff.checkpoint import load_checkpoint
from tradeoff.commands import main
from tradeoff.commands.demo import demo_summary, run_demo
from tradeoff.fileio import sha256_file

FILES = ("model.pt", "cache.npz", "thresholds.json", "pareto.csv", "summary.json", "pareto.png", "exits.png", "report.html")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("results") / "demo"
    return run_demo(out, epochs=2, pop=8, gens=3, progress=False, log=lambda line: None)


def test_demo_writes_every_file_and_they_agree(demo):
    out = demo.out
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".demo.")]  # no staging left behind
    loaded = load_checkpoint(out / "model.pt")
    assert loaded.arch == "scan_small" and loaded.data == "digits"
    cache = load_cache(out / "cache.npz")
    assert cache.meta["checkpoint_sha256"] == loaded.sha256
    assert cache.split_counts() == {"test": 360, "val": 359}
    thresholds = json.loads((out / "thresholds.json").read_text())
    assert thresholds["cache"] == "cache.npz"  # relative to the run directory (issue 15 item 8)
    assert thresholds["cache_sha256"] == sha256_file(out / "cache.npz")
    assert tuple(thresholds["thresholds"]) == pytest.approx(demo.thresholds)
    assert thresholds["test"]["accuracy"] == pytest.approx(demo.test_accuracy)
    assert len(demo.exit_test_accuracy) == cache.num_exits == len(demo.thresholds) + 1
    test = cache.select("test")
    deepest = float(np.mean(test.logits[-1].argmax(axis=1) == test.labels))
    assert demo.exit_test_accuracy[-1] == pytest.approx(deepest)
    for name in ("pareto.png", "exits.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_summary_names_the_numbers(demo):
    text = demo_summary(demo)
    # accuracies as fractions, like search, cache and --target-acc (issue 15 item 4); shares of samples in %
    assert f"deepest exit {demo.exit_test_accuracy[-1]:.4f}\n" in text and "%" not in text.split("test samples")[0]
    assert f"test {demo.speedup_test:.2f}x" in text
    assert "chosen thresholds: " + ", ".join(f"{t:.4f}" for t in demo.thresholds) in text


def test_demo_replaces_an_old_run_and_refuses_a_file(demo, tmp_path, capsys):
    (demo.out / "stale.txt").write_text("old")
    again = run_demo(demo.out, epochs=1, pop=8, gens=2, progress=False, log=lambda line: None)
    assert not (again.out / "stale.txt").exists() and (again.out / "model.pt").is_file()
    target = tmp_path / "file"
    target.write_text("x")
    assert main(["demo", "--out", str(target), "--epochs", "1"]) == 1
    assert "is an existing file" in capsys.readouterr().err


def test_demo_data_choices(tmp_path, capsys):
    with pytest.raises(ValueError, match=r"--data 'cifar10' has no demo; choose one of digits, fashion-mnist"):
        run_demo(tmp_path / "d", data="cifar10", progress=False, log=lambda line: None)
    assert not (tmp_path / "d").exists()
    with pytest.raises(SystemExit):
        main(["demo", "--data", "npz:x.npz", "--out", str(tmp_path / "d")])
    assert "invalid choice: 'npz:x.npz'" in capsys.readouterr().err

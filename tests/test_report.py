"""report.py: the table formatter, the three result files, and whole-run replacement."""

import json
import threading
from pathlib import Path

import numpy as np
import pytest

from tradeoff.report import documents as report
from tradeoff.report import rundir, tables
from tradeoff.search.run import run_search
from tradeoff.search.settings import Pick
from tradeoff.cache.synthetic import synthetic_cache


@pytest.fixture(scope="module")
def results():
    """Two results of one small cache that differ (another seed and target)."""
    cache = synthetic_cache(1200, 8, (0.55, 0.7, 0.8), seed=11)
    a = run_search(cache, pick=Pick.from_options(target_acc=0.7), pop=12, gens=5, seed=0, cache_path=None)
    b = run_search(cache, pick=Pick.from_options(target_acc=0.75), pop=12, gens=5, seed=1, cache_path=None)
    return a, b


def test_format_table_aligns_text_left_and_numbers_right():
    text = tables.format_table(
        [["exit1", 0.61234, 290, "1.93x"], ["exit10", 0.7, 12345, "0.80x"], ["e", None, 1, "-"]],
        ["name", "acc", "MFLOPs", "speed"],
        title="each exit",
    )
    assert text.splitlines() == [
        "each exit",
        "name       acc  MFLOPs  speed",
        "------  ------  ------  -----",
        "exit1   0.6123     290  1.93x",
        "exit10     0.7   12345  0.80x",
        "e            -       1      -",
    ]


def test_format_table_rejects_ragged_rows():
    with pytest.raises(ValueError, match=r"row 1 has 1 cells; expected 2"):
        tables.format_table([[1, 2], [3]], ["a", "b"])


def test_pareto_csv_reads_back_exactly(results):
    result = results[0]
    text = report.pareto_csv(result)
    columns = rundir.parse_pareto_csv(text)
    front = result.front("nsga")
    assert columns["val_accuracy"] == front.val.accuracy.tolist()  # repr round-trips bit for bit
    assert columns["test_accuracy"] == front.test.accuracy.tolist()
    assert columns["val_flops"] == front.val.flops.tolist()
    assert columns["test_flops"] == front.test.flops.tolist()
    assert columns["t2"] == front.thresholds[:, 1].tolist()
    assert columns["val_frac_exit3"] == front.val.exit_fractions[:, 2].tolist()
    assert columns["val_speedup"] == (result.baseline_flops / front.val.flops).tolist()
    assert columns["test_speedup"] == (result.baseline_flops / front.test.flops).tolist()
    assert text == report.pareto_csv(result)  # same result, same bytes
    assert text.endswith("\n") and "\r" not in text


def test_thresholds_document_holds_no_timing(results):
    a, _ = results
    doc = report.thresholds_document(a)
    text = json.dumps(doc)
    for word in ("seconds", "timing", "created"):
        assert word not in text
    assert doc["thresholds"] == list(a.chosen.thresholds)
    assert doc["test"]["accuracy_ci95"] == list(a.chosen.test_accuracy_ci95)
    assert doc["cache"] is None and doc["cache_sha256"] is None  # an in-memory cache has no file


def test_summary_document_has_every_method_and_exit(results):
    a, _ = results
    doc = report.summary_document(a)
    assert list(doc["hypervolume"]) == ["nsga", "global", "msdnet", "random", "grid"]
    assert doc["front_sizes"] == {f.method: f.size for f in a.fronts}
    assert [f["method"] for f in doc["fronts"]] == ["nsga", "global", "msdnet", "random", "grid"]
    assert doc["fronts"][4]["val_accuracy"] == a.front("grid").val.accuracy.tolist()
    assert [e["val_accuracy"] for e in doc["exits"]] == [e.val_accuracy for e in a.exits]
    assert doc["tool_version"] and doc["settings"]["pick"] == {"target_acc": 0.7}
    assert set(doc["timings_seconds"]) >= {"table", "nsga", "grid", "total"}
    json.dumps(doc, allow_nan=False)  # strict JSON


def test_write_run_replaces_a_run_whole_and_leaves_no_temporaries(results, tmp_path):
    a, b = results
    out = tmp_path / "run"
    rundir.write_run(out, a)
    (out / "stray.txt").write_text("old")
    rundir.write_run(out, b)
    assert sorted(p.name for p in out.iterdir()) == ["pareto.csv", "summary.json", "thresholds.json"]
    assert (out / "pareto.csv").read_text() == report.pareto_csv(b)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_a_failing_writer_leaves_the_old_run_untouched(results, tmp_path):
    a, b = results
    out = tmp_path / "run"
    rundir.write_run(out, a)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def broken(run_dir: Path) -> None:
        (run_dir / "half.png").write_bytes(b"\x89PNG")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        rundir.write_run(out, b, extra=[broken])
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_concurrent_writers_never_mix_files(results, tmp_path):
    a, b = results
    out = tmp_path / "run"
    expected = {id(r): (report.pareto_csv(r), json.dumps(report.thresholds_document(r), indent=2, sort_keys=True) + "\n") for r in (a, b)}
    seen = []
    errors = []

    def writer(result):
        try:
            for _ in range(6):
                rundir.write_run(out, result)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def reader():
        for _ in range(30):
            if out.exists():
                with rundir.run_lock(out, shared=True):
                    seen.append(((out / "pareto.csv").read_text(), (out / "thresholds.json").read_text()))

    threads = [threading.Thread(target=writer, args=(r,)) for r in (a, b)] + [threading.Thread(target=reader)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    pairs = set(expected.values())
    assert ((out / "pareto.csv").read_text(), (out / "thresholds.json").read_text()) in pairs
    assert all(pair in pairs for pair in seen)  # every read saw one complete run
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_write_run_refuses_a_file_as_out(results, tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(ValueError, match="is an existing file; give a directory path"):
        rundir.write_run(target, results[0])


def test_stale_temporaries_of_dead_runs_are_removed(results, tmp_path):
    dead = tmp_path / ".run.tmp-999999999-abc"
    dead.mkdir()
    alive = tmp_path / f".run.tmp-{__import__('os').getpid()}-xyz"
    alive.mkdir()
    rundir.write_run(tmp_path / "run", results[0])
    assert not dead.exists() and alive.exists()


def test_read_run_names_missing_and_malformed_files(results, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(FileNotFoundError, match="run directory .* does not exist"):
        rundir.read_run(out)
    rundir.write_run(out, results[0])
    thresholds, summary, csv_text = rundir.read_run(out)
    assert thresholds["thresholds"] == list(results[0].chosen.thresholds)
    (out / "summary.json").write_text("{ not json")
    with pytest.raises(ValueError, match=r"summary.json is not valid JSON"):
        rundir.read_run(out)
    (out / "summary.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"summary.json must hold a JSON object; got list"):
        rundir.read_run(out)
    (out / "pareto.csv").unlink()
    with pytest.raises(FileNotFoundError, match=r"pareto.csv is missing"):
        rundir.read_run(out)


@pytest.mark.parametrize(
    "text, match",
    [
        ("", "is empty"),
        ("t1,val_accuracy\n0.5,0.7\n", "has no 'test_accuracy' column"),
        ("t1,val_accuracy,test_accuracy,flops,test_flops\n0.5,0.7,0.6\n", "line 2 has 3 cells; the header has 5"),
        ("t1,val_accuracy,test_accuracy,flops,test_flops\n0.5,0.7,x,1,1\n", "line 2: test_accuracy = 'x' is not a number"),
    ],
)
def test_parse_pareto_csv_errors(text, match):
    with pytest.raises(ValueError, match=match):
        rundir.parse_pareto_csv(text)


def test_summary_text_names_the_pick_and_the_figures(results):
    a, _ = results
    text = report.summary_text(a)
    assert "cheapest point with val accuracy >= 0.7" in text
    assert f"{a.chosen.test.accuracy:.4f} [{a.chosen.test_accuracy_ci95[0]:.4f}, {a.chosen.test_accuracy_ci95[1]:.4f}]" in text
    assert "(in memory)" in text
    for e in a.exits:
        assert e.name in text
    np.testing.assert_allclose(sum(a.chosen.val.exit_fractions), 1.0)


def test_directories_are_exchanged_atomically_where_linux_allows(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "x").write_text("from a")
    (b / "y").write_text("from b")
    if not rundir._exchange(a, b):
        pytest.skip("renameat2(RENAME_EXCHANGE) is not available here; write_run uses the rename-aside path")
    assert [p.name for p in a.iterdir()] == ["y"] and [p.name for p in b.iterdir()] == ["x"]


def test_rename_aside_path_also_replaces_whole_runs(results, tmp_path, monkeypatch):
    monkeypatch.setattr(rundir, "_exchange", lambda a, b: False)
    a, b = results
    out = tmp_path / "run"
    rundir.write_run(out, a)
    (out / "stray.txt").write_text("old")
    rundir.write_run(out, b)
    assert (out / "pareto.csv").read_text() == report.pareto_csv(b) and not (out / "stray.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]

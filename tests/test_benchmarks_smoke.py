"""Every benchmark runs in quick mode and returns well-formed rows; the harness writes its
report and tells a missed goal (exit 0) from a crash (exit 1). No timing is asserted."""

import importlib
import json
import sys
import types

import pytest

import benchmarks
from benchmarks import ROW_KEYS, check_row, interleaved_medians, make_row
from benchmarks import __main__ as harness

NAMES = harness.discover()


def test_benchmarks_are_discovered():
    assert "runtime" in NAMES
    assert NAMES == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_quick_run_rows(name):
    module = importlib.import_module(f"benchmarks.bench_{name}")
    if getattr(module, "QUICK_UNSUPPORTED", None):
        pytest.skip(f"bench_{name} says it cannot run quick: {module.QUICK_UNSUPPORTED}")
    rows = module.run(quick=True)
    assert isinstance(rows, list) and rows
    for row in rows:
        check_row(row, f"bench_{name}")
        assert list(row) == list(ROW_KEYS) or set(row) == set(ROW_KEYS)
        assert row["benchmark"] and row["metric"]
    pairs = {(r["benchmark"], r["metric"]) for r in rows}
    assert len(pairs) == len(rows), "each (benchmark, metric) pair must be reported once"


def test_runtime_quick_rows_are_the_promised_ones():
    from benchmarks import bench_runtime

    rows = bench_runtime.run(quick=True)
    metrics = [r["metric"] for r in rows]
    assert metrics[:2] == ["measured / predicted speed-up, batch 1", "measured / predicted speed-up, batch 64"]
    assert all(r["passed"] is None for r in rows)  # quick runs judge nothing
    for r in rows[:2]:
        assert r["ratio"] == pytest.approx(r["value"] / r["baseline"]) and r["baseline"] > 0
    assert sum(m.startswith("exit ") for m in metrics) == 3


def test_row_helpers():
    row = make_row("b", "m", 3.0, baseline=2.0, goal=">= 1", passed=True)
    assert row["ratio"] == 1.5 and list(row) == list(ROW_KEYS)
    assert make_row("b", "m", 3.0)["ratio"] is None
    with pytest.raises(TypeError, match=r"row keys must be exactly .*missing \['notes'\]"):
        check_row({k: v for k, v in row.items() if k != "notes"})
    with pytest.raises(TypeError, match=r"row\['value'\] of 'm' must be a number \(not NaN\); got nan"):
        check_row({**row, "value": float("nan")})
    with pytest.raises(TypeError, match=r"row\['passed'\] must be True, False or None; got 'yes'"):
        check_row({**row, "passed": "yes"})
    with pytest.raises(TypeError, match=r"row\['goal'\] must be a str"):
        check_row({**row, "goal": None})
    calls = []
    times = interleaved_medians({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=2, warmup=1)
    assert calls == ["a", "b", "a", "b", "b", "a"] and [len(v) for v in times.values()] == [2, 2]


def _fake(name, run):
    module = types.ModuleType(f"benchmarks.bench_{name}")
    module.run = run
    return module


def test_harness_reports_missed_goals_and_crashes(tmp_path, monkeypatch, capsys):
    def ok(quick=False):
        return [make_row("fake", "speed", 2.0, baseline=1.0, goal=">= 3x", passed=False, notes="slow | today"),
                make_row("fake", "inf speed", float("inf"), goal="report")]

    def boom(quick=False):
        raise RuntimeError("kaput")

    monkeypatch.setitem(sys.modules, "benchmarks.bench_zz_ok", _fake("zz_ok", ok))
    monkeypatch.setitem(sys.modules, "benchmarks.bench_zz_boom", _fake("zz_boom", boom))
    monkeypatch.setattr(harness, "discover", lambda: ["zz_boom", "zz_ok"])

    assert harness.main(["--out", str(tmp_path / "a"), "--only", "zz_ok"]) == 0
    md = (tmp_path / "a" / "results.md").read_text()
    assert "| fake | speed | 2 | 1 | 2 | >= 3x | MISSED | slow \\| today |" in md
    assert "0 of 1 goals met, 1 MISSED." in md
    doc = json.loads((tmp_path / "a" / "results.json").read_text())
    assert doc["crashed"] == {} and doc["rows"][1]["value"] == "inf"
    assert (tmp_path / "a" / "results.csv").read_text().splitlines()[0] == ",".join(ROW_KEYS)
    assert "MISSED" in capsys.readouterr().out

    assert harness.main(["--out", str(tmp_path / "b"), "--quick"]) == 1  # the crash; the other still ran
    doc = json.loads((tmp_path / "b" / "results.json").read_text())
    assert doc["crashed"] == {"zz_boom": "RuntimeError: kaput"} and len(doc["rows"]) == 2
    assert "bench_zz_boom crashed: RuntimeError: kaput" in (tmp_path / "b" / "results.md").read_text()

    assert harness.main(["--out", str(tmp_path / "c"), "--only", "nope"]) == 2
    assert "--only nope: no such benchmark; known: zz_boom, zz_ok" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_package_docstring_states_the_row_format():
    for key in ROW_KEYS:
        assert f'"{key}"' in benchmarks.__doc__


def _demo_dir(path, arch):
    from dataclasses import replace

    from tradeoff.cache.format import write_cache
    from tradeoff.cache.synthetic import synthetic_cache

    path.mkdir(parents=True)
    cache = synthetic_cache(200, 10, (0.6, 0.8, 0.9), seed=0)
    write_cache(path / "cache.npz", replace(cache, meta={**cache.meta, "arch": arch, "data": "fashion-mnist"}))
    (path / "model.pt").write_bytes(b"")
    (path / "thresholds.json").write_text("{}")


def test_fashion_demo_is_reused_not_rerun(tmp_path, monkeypatch):
    from benchmarks import fashion

    monkeypatch.setattr(fashion, "FASHION_DIR", tmp_path / "fashion")
    monkeypatch.setattr(fashion, "WORK_DIR", tmp_path / "bench")
    runs = []
    monkeypatch.setattr(fashion, "_run_demo", lambda out, log: runs.append(out) or {"wall_seconds": 1.0})

    _demo_dir(tmp_path / "fashion", "scan_small")  # not a fashion demo: the bench runs its own
    demo = fashion.fashion_demo()
    assert runs == [tmp_path / "bench"] and demo.dir == tmp_path / "bench" and demo.record == {"wall_seconds": 1.0}

    runs.clear()
    _demo_dir(tmp_path / "made-by-demo", "scan_cnn")
    monkeypatch.setattr(fashion, "FASHION_DIR", tmp_path / "made-by-demo")
    demo = fashion.fashion_demo()  # a real fashion demo made elsewhere: reused, its timings unknown
    assert runs == [] and demo.dir == tmp_path / "made-by-demo" and demo.record is None

    _demo_dir(tmp_path / "bench", "scan_cnn")
    (tmp_path / "bench" / fashion.RECORD_FILE).write_text(json.dumps({"wall_seconds": 250.0}))
    demo = fashion.fashion_demo()  # the bench's own run, with its record, comes first
    assert runs == [] and demo.dir == tmp_path / "bench" and demo.record == {"wall_seconds": 250.0}

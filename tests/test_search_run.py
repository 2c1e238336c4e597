"""`tradeoff search` end to end on synthetic caches: files, honesty, determinism, bad input."""

import json
import re
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tradeoff.cache.format import ExitCache, load_cache, write_cache
from tradeoff.commands import main
from tradeoff.policy.scoring import exit_indices, exit_table
from tradeoff.commands.defaults import default_run_dir, newest_cache
from tradeoff.search.picks import bootstrap_accuracy_ci
from tradeoff.search.run import run_search
from tradeoff.search.settings import Pick
from tradeoff.cache.synthetic import synthetic_cache

REPO = Path(__file__).resolve().parents[1]
FAST = ["--pop", "20", "--gens", "10"]
SCHEMA_KEYS = {"thresholds", "confidence", "ensemble", "calibration", "cache", "cache_sha256", "val", "test",
               "num_exits", "arch", "checkpoint_sha256", "pick"}
FIGURE_KEYS = {"accuracy", "flops", "speedup", "exit_fractions"}


@pytest.fixture(scope="module")
def cache_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cache") / "syn3.npz"
    write_cache(path, synthetic_cache(2000, 10, (0.6, 0.75, 0.85), seed=3))
    return path


@pytest.fixture(scope="module")
def run_dir(cache_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "first"
    assert main(["search", "--cache", str(cache_file), "--target-acc", "0.8", "--out", str(out), *FAST]) == 0
    return out


def _search(cache_file, out, *extra, target="0.8"):
    return main(["search", "--cache", str(cache_file), "--target-acc", target, "--out", str(out), *FAST, *extra])


def test_run_dir_has_every_file_and_the_schema(run_dir, cache_file):
    assert sorted(p.name for p in run_dir.iterdir()) == ["exits.png", "pareto.csv", "pareto.png", "report.html", "summary.json", "thresholds.json"]
    doc = json.loads((run_dir / "thresholds.json").read_text())
    assert SCHEMA_KEYS <= set(doc)
    assert FIGURE_KEYS <= set(doc["val"]) and FIGURE_KEYS | {"accuracy_ci95"} <= set(doc["test"])
    assert doc["confidence"] == "maxprob" and doc["ensemble"] is False and doc["calibration"] is None
    # relative to the run directory, so readers find it from any folder (issue 15 item 8)
    assert doc["cache"] == os.path.relpath(cache_file, run_dir) and (run_dir / doc["cache"]).resolve() == cache_file.resolve()
    assert doc["num_exits"] == 3 and doc["arch"] == "synthetic"
    assert doc["pick"] == {"target_acc": 0.8}
    assert len(doc["thresholds"]) == 2
    assert doc["val"]["accuracy"] >= 0.8
    lo, hi = doc["test"]["accuracy_ci95"]
    assert lo <= doc["test"]["accuracy"] <= hi and hi - lo < 0.1
    import hashlib

    assert doc["cache_sha256"] == hashlib.sha256(cache_file.read_bytes()).hexdigest()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert set(summary["hypervolume"]) == {"nsga", "global", "msdnet", "random", "grid"}
    assert all(0.0 < hv < 1.0 for hv in summary["hypervolume"].values())
    fronts = {f["method"]: f for f in summary["fronts"]}
    assert fronts["random"]["evaluations"] == fronts["nsga"]["evaluations"]
    assert [e["name"] for e in summary["exits"]] == ["exit1", "exit2", "exit3"]
    assert summary["settings"]["pop"] == 20 and summary["seed"] == 0
    assert "nsga" in summary["timings_seconds"]


def test_test_figures_match_an_independent_recomputation(run_dir, cache_file):
    doc = json.loads((run_dir / "thresholds.json").read_text())
    cache = load_cache(cache_file)
    for split in ("val", "test"):
        part = cache.select(split)
        table = exit_table(part.logits, part.labels, part.flops)
        leave = exit_indices(table, np.array(doc["thresholds"]))
        correct = table.correct[leave, np.arange(part.num_samples)]
        fractions = np.bincount(leave, minlength=3) / part.num_samples
        assert doc[split]["accuracy"] == pytest.approx(correct.mean(), abs=1e-12)
        assert doc[split]["flops"] == pytest.approx(float(fractions @ cache.flops), rel=1e-12)
        assert doc[split]["exit_fractions"] == pytest.approx(fractions.tolist(), abs=1e-12)
        assert doc[split]["speedup"] == pytest.approx(cache.baseline_flops / doc[split]["flops"], rel=1e-12)
    # Every pareto.csv row's test accuracy too.
    rows = (run_dir / "pareto.csv").read_text().splitlines()
    header = rows[0].split(",")
    part = cache.select("test")
    table = exit_table(part.logits, part.labels, part.flops)
    for line in rows[1:]:
        values = dict(zip(header, map(float, line.split(","))))
        leave = exit_indices(table, np.array([values["t1"], values["t2"]]))
        assert values["test_accuracy"] == pytest.approx(table.correct[leave, np.arange(part.num_samples)].mean(), abs=1e-12)


def test_pareto_csv_is_sorted_by_cost_and_non_dominated(run_dir):
    rows = [list(map(float, line.split(","))) for line in (run_dir / "pareto.csv").read_text().splitlines()[1:]]
    header = (run_dir / "pareto.csv").read_text().splitlines()[0].split(",")
    assert header[:9] == ["t1", "t2", "val_accuracy", "test_accuracy", "val_flops", "val_mflops", "val_speedup",
                          "test_flops", "test_speedup"]
    flops = [r[4] for r in rows]
    acc = [r[2] for r in rows]
    assert len(rows) >= 3 and flops == sorted(flops)
    assert all(a < b for a, b in zip(acc, acc[1:]))  # strictly better accuracy for more cost


def test_same_seed_is_byte_identical_and_another_seed_differs(run_dir, cache_file, tmp_path):
    assert _search(cache_file, tmp_path / "again") == 0
    for name in ("pareto.csv", "thresholds.json"):
        assert (tmp_path / "again" / name).read_bytes() == (run_dir / name).read_bytes()
    assert _search(cache_file, tmp_path / "seed1", "--seed", "1", "--no-plots") == 0
    assert (tmp_path / "seed1" / "pareto.csv").read_bytes() != (run_dir / "pareto.csv").read_bytes()
    assert not (tmp_path / "seed1" / "pareto.png").exists()


def test_rerun_replaces_the_directory_whole(run_dir, cache_file, tmp_path):
    out = tmp_path / "run"
    assert _search(cache_file, out, "--no-plots") == 0
    (out / "stray.txt").write_text("from an older run")
    assert _search(cache_file, out, "--no-plots", target="0.7") == 0
    assert not (out / "stray.txt").exists()
    assert json.loads((out / "thresholds.json").read_text())["pick"] == {"target_acc": 0.7}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no temporary directories left


def test_terminal_summary(cache_file, tmp_path, capsys):
    assert _search(cache_file, tmp_path / "r", "--no-plots") == 0
    out = capsys.readouterr().out
    for text in ("chosen point", "each exit alone", "accuracy (test: 95% CI)", "speed-up", "vs all exits",
                 "exit3", "search time", "val hypervolume", "grid"):
        assert text in out
    assert f"wrote {tmp_path / 'r'}/" in out


def test_unreachable_target_exits_3_and_names_the_best_point(cache_file, tmp_path, capsys):
    out = tmp_path / "never"
    assert _search(cache_file, out, target="0.999") == 3
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "no thresholds reach val accuracy 0.9990; the best reachable is" in err
    assert not out.exists() and not list(tmp_path.iterdir())


def test_method_selects_the_front_the_pick_is_made_on(cache_file, tmp_path):
    assert _search(cache_file, tmp_path / "g", "--method", "global", "--no-plots", target="0.75") == 0
    doc = json.loads((tmp_path / "g" / "thresholds.json").read_text())
    assert doc["method"] == "global"
    assert doc["thresholds"][0] == doc["thresholds"][1]  # one threshold for every exit
    assert doc["val"]["accuracy"] >= 0.75


@pytest.mark.parametrize(
    "flag, value, label",
    [("--max-drop", "0.5", "drop0.5"), ("--budget-flops", "2.5e8", "budget2.5e+08"), (None, None, "nodrop")],
)
def test_picks_and_default_run_dir_names(cache_file, tmp_path, monkeypatch, flag, value, label):
    monkeypatch.chdir(tmp_path)
    args = ["search", "--cache", str(cache_file), *FAST, "--no-plots"] + ([flag, value] if flag else [])
    assert main(args) == 0
    run = tmp_path / "results" / f"syn3-{label}"
    doc = json.loads((run / "thresholds.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    deepest = summary["exits"][-1]["val_accuracy"]
    if flag == "--budget-flops":
        assert doc["val"]["flops"] <= 2.5e8
    else:
        drop = float(value) if value else 0.0
        assert doc["val"]["accuracy"] >= deepest - drop / 100 - 1e-12
        assert doc["val"]["flops"] < summary["cache"]["flops"][-1]  # cheaper than the deepest exit alone


def test_default_labels():
    assert Pick.from_options(target_acc=0.78).label == "acc0.78"
    assert Pick.from_options(max_drop=0.5).label == "drop0.5"
    assert Pick.from_options(budget_flops=3e8).label == "budget3e+08"
    assert Pick.from_options().label == "nodrop" and Pick.from_options().as_dict() == {"max_drop": 0.0, "default": True}
    assert default_run_dir("results/cache/m-digits.npz", Pick.from_options(target_acc=0.78).label) == Path("results/m-digits-acc0.78")
    with pytest.raises(ValueError, match="at most one of --target-acc, --max-drop, --budget-flops"):
        Pick.from_options(target_acc=0.7, max_drop=1.0)


def test_newest_cache_is_the_default(cache_file, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"run `make demo` or `tradeoff cache --ckpt MODEL` first"):
        newest_cache()
    assert main(["search", "--target-acc", "0.8", *FAST]) == 1
    assert "no cache given and none found under results/cache/ or results/*/cache.npz" in capsys.readouterr().err
    folder = tmp_path / "results" / "cache"
    folder.mkdir(parents=True)
    data = cache_file.read_bytes()
    for name, mtime in (("b.npz", 1_000), ("a.npz", 2_000), ("c.npz", 2_000)):
        (folder / name).write_bytes(data)
        os.utime(folder / name, (mtime, mtime))
    assert newest_cache() == (Path("results/cache/c.npz"), 3)  # newest mtime; tie broken by name
    assert main(["search", "--target-acc", "0.8", *FAST, "--no-plots"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "using cache results/cache/c.npz (newest of 3)"
    assert (tmp_path / "results" / "c-acc0.8" / "thresholds.json").exists()


def test_library_api_result_is_complete(cache_file):
    cache = load_cache(cache_file)
    result = run_search(cache, pick=Pick.from_options(target_acc=0.8), pop=12, gens=4, seed=5, cache_path=cache_file)
    assert [f.method for f in result.fronts] == ["nsga", "global", "msdnet", "random", "grid"]
    nsga = result.front("nsga")
    assert result.chosen.method == "nsga" and result.chosen.val.accuracy >= 0.8
    np.testing.assert_array_equal(nsga.thresholds[result.chosen.index], result.chosen.thresholds)
    assert result.chosen.val.accuracy == nsga.val.accuracy[result.chosen.index]
    assert result.chosen.test.accuracy == nsga.test.accuracy[result.chosen.index]
    assert result.chosen.val.speedup == pytest.approx(cache.baseline_flops / result.chosen.val.flops)
    assert result.chosen.val.speedup_all_exits == pytest.approx(cache.flops[-1] / result.chosen.val.flops)
    assert sum(result.chosen.test.exit_fractions) == pytest.approx(1.0)
    assert result.split_sizes == cache.split_counts()
    assert [e.flops for e in result.exits] == cache.flops.tolist()
    with pytest.raises(ValueError, match="no 'nope' front"):
        result.front("nope")


def test_calibrate_and_ensemble_are_recorded(cache_file, tmp_path):
    from tradeoff.policy.calibration import fit_temperatures

    out = tmp_path / "cal"
    assert _search(cache_file, out, "--calibrate", "--ensemble", "--confidence", "margin", "--no-plots", target="0.7") == 0
    doc = json.loads((out / "thresholds.json").read_text())
    assert doc["ensemble"] is True and doc["confidence"] == "margin"
    temps = doc["calibration"]["temperatures"]
    assert len(temps) == 3 and all(t > 0 for t in temps)
    cache = load_cache(cache_file)
    val = cache.select("val")
    assert temps == fit_temperatures(val.logits, val.labels).tolist()  # fitted on val only
    # The recorded figures follow the calibrated ensemble rule, on test as well.
    test = cache.select("test")
    table = exit_table(test.logits, test.labels, test.flops, confidence="margin", ensemble=True, temperatures=np.array(temps))
    leave = exit_indices(table, np.array(doc["thresholds"]))
    assert doc["test"]["accuracy"] == pytest.approx(table.correct[leave, np.arange(test.num_samples)].mean(), abs=1e-12)


def test_restarts_run_and_merge(cache_file, tmp_path):
    out = tmp_path / "r2"
    assert _search(cache_file, out, "--restarts", "2", "--no-plots") == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["restarts"] == 2
    assert summary["fronts"][0]["method"] == "nsga"
    assert summary["fronts"][0]["evaluations"] > 20 * 11  # two runs' worth


def test_bootstrap_interval_is_the_resampling_distribution():
    correct = np.zeros(400, dtype=bool)
    correct[:300] = True
    lo, hi = bootstrap_accuracy_ci(correct, resamples=2000, seed=0)
    assert bootstrap_accuracy_ci(correct, resamples=2000, seed=0) == (lo, hi)
    # The explicit resampling of rows gives the same interval up to Monte Carlo error.
    rng = np.random.default_rng(1)
    explicit = correct[rng.integers(0, 400, size=(4000, 400))].mean(axis=1)
    assert lo == pytest.approx(np.quantile(explicit, 0.025), abs=0.006)
    assert hi == pytest.approx(np.quantile(explicit, 0.975), abs=0.006)
    assert lo < 0.75 < hi
    with pytest.raises(ValueError, match="0 samples"):
        bootstrap_accuracy_ci(np.zeros(0, dtype=bool))


# --------------------------------------------------------------------------- bad input
def _raw_cache(path, **over):
    cache = synthetic_cache(200, 5, (0.6, 0.8), seed=1)
    arrays = {
        "logits": cache.logits,
        "labels": cache.labels,
        "split": cache.split,
        "flops": cache.flops,
        "meta": np.array(json.dumps(cache.meta)),
    }
    arrays.update(over)
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)
    return path


def _bad_caches(tmp_path):
    good = _raw_cache(tmp_path / "good.npz")
    cache = synthetic_cache(200, 5, (0.6, 0.8), seed=1)
    nan = cache.logits.copy()
    nan[1, 3, 2] = np.nan
    text = tmp_path / "notes.npz"
    text.write_text("not a cache at all")
    truncated = tmp_path / "trunc.npz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    return {
        "not a cache": (text, "is not a readable tradeoff cache"),
        "truncated": (truncated, "is not a readable tradeoff cache"),
        "wrong schema": (_raw_cache(tmp_path / "s.npz", meta=np.array(json.dumps({"schema": 9}))), "schema 9 is not supported"),
        "inconsistent shapes": (_raw_cache(tmp_path / "sh.npz", labels=cache.labels[:150]), r"labels must have shape \(N,\)"),
        "labels out of range": (_raw_cache(tmp_path / "l.npz", labels=cache.labels + 5), r"labels must lie in \[0, 5\)"),
        "no val split": (_raw_cache(tmp_path / "v.npz", split=np.full(200, "test")), "the cache has no 'val' rows"),
        "nan logits": (_raw_cache(tmp_path / "n.npz", logits=nan), "exit 2 has 1 NaN/inf logits"),
        "decreasing costs": (_raw_cache(tmp_path / "d.npz", flops=np.array([2e8, 1e8])), "must not decrease with depth"),
        "one exit": (_raw_cache(tmp_path / "k.npz", logits=cache.logits[:1], flops=cache.flops[:1]), "K = 1 exit: there are no thresholds to search"),
        "missing file": (tmp_path / "absent.npz", "does not exist"),
    }


BAD_CACHE_NAMES = ["not a cache", "truncated", "wrong schema", "inconsistent shapes", "labels out of range",
                   "no val split", "nan logits", "decreasing costs", "one exit", "missing file"]


@pytest.mark.parametrize("name", BAD_CACHE_NAMES)
def test_bad_caches_fail_in_one_line_and_write_nothing(tmp_path, capsys, name):
    path, match = _bad_caches(tmp_path)[name]
    out = tmp_path / "run"
    assert main(["search", "--cache", str(path), "--out", str(out), *FAST]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("tradeoff search: error: ")
    assert re.search(match, err), err
    assert not out.exists() and not (tmp_path / "run.lock").exists()


@pytest.mark.parametrize(
    "args, match",
    [
        (["--target-acc", "0"], r"--target-acc must be an accuracy in \(0, 1\]; got 0"),
        (["--target-acc", "78"], r"got 78 - did you mean 0.78\?"),
        (["--target-acc", "nan"], r"--target-acc must be an accuracy in \(0, 1\]; got nan"),
        (["--budget-flops=-1e8"], "--budget-flops must be a positive number"),
        (["--max-drop", "-1"], r"--max-drop must be percentage points in \[0, 100\]"),
        (["--pop", "3"], r"--pop must be >= 4 \(NSGA-II needs a population of at least 4\); got 3"),
        (["--gens", "0"], r"--gens must be >= 1"),
        (["--restarts", "0"], r"--restarts must be >= 1"),
        (["--jobs", "0"], r"--jobs must be >= 1"),
        (["--seed", "-2"], r"--seed must be >= 0"),
        (["--method", "annealing"], r"--method must be one of nsga, global, msdnet, random, grid; got 'annealing'"),
    ],
)
def test_bad_options_fail_in_one_line_and_write_nothing(cache_file, tmp_path, capsys, args, match):
    out = tmp_path / "run"
    # FAST first, so "--pop 3" / "--gens 0" given in args override it.
    assert main(["search", "--cache", str(cache_file), "--out", str(out), *FAST, *args]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert re.search(match, err), err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_grid_method_refuses_many_exits(tmp_path, capsys):
    path = tmp_path / "k5.npz"
    write_cache(path, synthetic_cache(200, 5, (0.5, 0.6, 0.7, 0.8, 0.9), seed=0))
    assert main(["search", "--cache", str(path), "--method", "grid", "--out", str(tmp_path / "o"), *FAST]) == 1
    assert "--method grid searches exhaustively only up to K-1 = 3" in capsys.readouterr().err


def test_no_test_split_is_refused(tmp_path):
    cache = synthetic_cache(200, 5, (0.6, 0.8), seed=1)
    only_val = ExitCache(cache.logits, cache.labels, np.full(200, "val"), cache.flops, cache.meta)
    with pytest.raises(ValueError, match="the cache has no 'test' rows"):
        run_search(only_val)


def test_search_does_not_import_torch(cache_file, tmp_path):
    code = (
        "import sys\n"
        "from tradeoff.commands import main\n"
        f"rc = main(['search', '--cache', {str(cache_file)!r}, '--out', {str(tmp_path / 'o')!r}, '--pop', '8', '--gens', '2'])\n"
        "assert rc == 0, rc\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print('ok')\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO), MPLBACKEND="Agg")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().endswith("ok")
    assert (tmp_path / "o" / "pareto.png").exists()


# --------------------------------------------------------------------------- processes
def _spawn(cache_file, out, *extra, threads=1):
    env = dict(os.environ, PYTHONPATH=str(REPO), MPLBACKEND="Agg", OMP_NUM_THREADS=str(threads),
               OPENBLAS_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    args = [sys.executable, "-m", "tradeoff", "search", "--cache", str(cache_file), "--target-acc", "0.8",
            "--out", str(out), "--pop", "20", "--gens", "10", "--no-plots", *extra]
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=str(out.parent))


def _check_complete(run):
    """A run directory is complete and self-consistent: the chosen point is a row of pareto.csv."""
    from tradeoff.report import rundir

    thresholds, summary, csv_text = rundir.read_run(run)
    columns = rundir.parse_pareto_csv(csv_text)
    rows = list(zip(columns["t1"], columns["t2"]))
    assert tuple(thresholds["thresholds"]) in rows
    assert summary["chosen"]["thresholds"] == thresholds["thresholds"]
    return thresholds, summary


def test_processes_threads_and_concurrent_writers(cache_file, tmp_path):
    """1 vs 2 threads give identical bytes; two processes racing for one --out leave one whole run."""
    procs = [
        _spawn(cache_file, tmp_path / "one", threads=1),
        _spawn(cache_file, tmp_path / "two", threads=2),
        _spawn(cache_file, tmp_path / "race", "--seed", "0", threads=1),
        _spawn(cache_file, tmp_path / "race", "--seed", "1", threads=2),
    ]
    codes = []
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        # the later of two racers for one --out fails and says so (issue 15 item 5)
        assert proc.returncode == 0 or "was written by another process" in err.decode(), err.decode()[-2000:]
        codes.append(proc.returncode)
    assert codes[:2] == [0, 0] and 0 in codes[2:]
    for name in ("pareto.csv", "thresholds.json"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    thresholds, summary = _check_complete(tmp_path / "race")
    assert codes[2 + summary["seed"]] == 0  # the kept run is one whose writer said "wrote"
    if summary["seed"] == 0:
        assert (tmp_path / "race" / "pareto.csv").read_bytes() == (tmp_path / "one" / "pareto.csv").read_bytes()
    else:
        assert summary["seed"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "race", "two"]


def test_sigkill_leaves_the_old_run_or_the_new_one(cache_file, tmp_path):
    import signal
    import time

    out = tmp_path / "run"
    start = time.perf_counter()
    proc = _spawn(cache_file, out)
    assert proc.wait(timeout=120) == 0
    full = time.perf_counter() - start
    first = (out / "pareto.csv").read_bytes()
    rng = np.random.default_rng(0)
    for fraction in rng.uniform(0.5, 1.1, size=4):
        proc = _spawn(cache_file, out, "--seed", "1")
        time.sleep(full * fraction)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        if not out.exists():  # possible only on the rename-aside fallback (no renameat2), never a mix
            continue
        _, summary = _check_complete(out)  # a whole run: the first one or a new one
        if summary["seed"] == 0:
            assert (out / "pareto.csv").read_bytes() == first
    proc = _spawn(cache_file, out, "--seed", "1")
    assert proc.wait(timeout=120) == 0
    assert _check_complete(out)[1]["seed"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # killed runs' temporaries cleaned


def test_train_rows_are_ignored(cache_file):
    base = load_cache(cache_file)
    extra = synthetic_cache(300, 10, (0.6, 0.75, 0.85), seed=9)
    with_train = ExitCache(
        np.concatenate([extra.logits, base.logits], axis=1),
        np.concatenate([extra.labels, base.labels]),
        np.concatenate([np.full(300, "train"), base.split]),
        base.flops,
        base.meta,
    )
    kw = dict(pick=Pick.from_options(target_acc=0.8), pop=12, gens=3, seed=0)
    a, b = run_search(base, **kw), run_search(with_train, **kw)
    assert b.split_sizes == a.split_sizes == {"val": base.split_counts()["val"], "test": base.split_counts()["test"]}
    assert a.chosen == b.chosen
    np.testing.assert_array_equal(a.front("nsga").test.accuracy, b.front("nsga").test.accuracy)


def test_the_runtime_reader_accepts_the_file(run_dir, cache_file):
    from tradeoff.fileio import sha256_file
    from tradeoff.policy.rule_file import read_rule

    loaded = read_rule(run_dir / "thresholds.json", num_exits=3, cache_sha256=sha256_file(cache_file), confidence="maxprob")
    doc = json.loads((run_dir / "thresholds.json").read_text())
    assert loaded.thresholds.tolist() == doc["thresholds"] and loaded.temperatures is None


def test_search_without_cache_finds_the_demos_cache_and_names_the_run_after_it(cache_file, tmp_path, monkeypatch, capsys):
    """Issue 15 item 3: `make demo` then `tradeoff search --target-acc 0.78` chain as written."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "results" / "demo").mkdir(parents=True)
    (tmp_path / "results" / "demo" / "cache.npz").write_bytes(cache_file.read_bytes())
    assert newest_cache() == (Path("results/demo/cache.npz"), 1)
    assert main(["search", "--target-acc", "0.8", *FAST, "--no-plots"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "using cache results/demo/cache.npz (newest of 1)"
    assert (tmp_path / "results" / "demo-acc0.8" / "thresholds.json").is_file()


def test_default_run_names_of_two_caches_with_one_stem_do_not_collide(cache_file, tmp_path, monkeypatch, capsys):
    """Issue 15 item 5: results/<stem>-<pick> of another cache file is never replaced by default."""
    monkeypatch.chdir(tmp_path)
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "m.npz").write_bytes(cache_file.read_bytes())
    assert main(["search", "--cache", "a/m.npz", "--target-acc", "0.8", *FAST, "--no-plots"]) == 0
    first = tmp_path / "results" / "m-acc0.8"
    before = (first / "thresholds.json").read_bytes()
    assert main(["search", "--cache", "b/m.npz", "--target-acc", "0.8", *FAST, "--no-plots"]) == 0
    assert (first / "thresholds.json").read_bytes() == before  # a's run kept
    runs = sorted(p.name for p in (tmp_path / "results").iterdir() if p.is_dir())
    other = [r for r in runs if r != "m-acc0.8"]
    assert len(runs) == 2 and len(other) == 1 and re.fullmatch(r"m-[0-9a-f]{8}-acc0\.8", other[0])
    # the same cache again replaces its own run (same name)
    assert main(["search", "--cache", "b/m.npz", "--target-acc", "0.8", *FAST, "--no-plots"]) == 0
    assert sorted(p.name for p in (tmp_path / "results").iterdir() if p.is_dir()) == runs

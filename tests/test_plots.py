"""plots.py: gathered data checked exactly, figures rendered to a buffer, `tradeoff plot`."""

import io
import json
import re

import matplotlib
import pytest

from tradeoff.report import pareto_plot, plots

from tradeoff.report import rundir
from tradeoff.cache.format import write_cache
from tradeoff.commands import main
from tradeoff.search.run import run_search
from tradeoff.search.settings import Pick
from tradeoff.cache.synthetic import synthetic_cache

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    path = tmp_path_factory.mktemp("c") / "four.npz"
    write_cache(path, synthetic_cache(1600, 10, (0.55, 0.65, 0.75, 0.8), seed=4))
    from tradeoff.cache.format import load_cache

    return run_search(load_cache(path), pick=Pick.from_options(max_drop=1.0), pop=16, gens=6, seed=2, cache_path=path)


def test_pareto_data_is_exactly_the_result(result):
    data = plots.pareto_plot_data(result)
    nsga = result.front("nsga")
    assert [s.method for s in data.fronts] == ["nsga", "global", "msdnet", "random", "grid"]
    main_front = data.fronts[0]
    assert main_front.val_accuracy == tuple(nsga.val.accuracy.tolist())
    assert main_front.val_mflops == tuple((nsga.val.flops / 1e6).tolist())
    assert main_front.test_accuracy == tuple(nsga.test.accuracy.tolist())
    assert main_front.test_mflops == tuple((nsga.test.flops / 1e6).tolist())
    for series in data.fronts[1:]:
        front = result.front(series.method)
        assert series.val_accuracy == tuple(front.val.accuracy.tolist()) and series.test_accuracy is None
    assert [(e.name, e.mflops, e.val_accuracy, e.test_accuracy) for e in data.exits] == [
        (e.name, e.flops / 1e6, e.val_accuracy, e.test_accuracy) for e in result.exits
    ]
    c = result.chosen
    assert data.chosen == plots.ChosenMark("nsga", c.val.flops / 1e6, c.val.accuracy, c.test.flops / 1e6, c.test.accuracy, c.test_accuracy_ci95)
    assert data.target_accuracy == result.exits[-1].val_accuracy - 0.01  # deepest exit minus the 1-point drop
    assert data.budget_mflops is None
    assert data.target_label == f"deepest exit - 1 points ({data.target_accuracy:.4f})"
    assert data.baseline_mflops == result.baseline_flops / 1e6
    assert data.title == "synthetic on synthetic(seed=4)"  # the model and the data, not the cache file (issue 15 item 10)


def test_exits_data_is_exactly_the_result(result):
    data = plots.exits_plot_data(result)
    assert data == plots.ExitsPlotData(
        title="synthetic on synthetic(seed=4)",
        exit_names=("exit1", "exit2", "exit3", "exit4"),
        exit_mflops=tuple((result.flops / 1e6).tolist()),
        thresholds=result.chosen.thresholds,
        val_fractions=result.chosen.val.exit_fractions,
        test_fractions=result.chosen.test.exit_fractions,
    )


def test_files_give_the_same_data_as_the_result(result, tmp_path):
    rundir.write_run(tmp_path / "run", result)
    assert plots.pareto_plot_data(tmp_path / "run") == plots.pareto_plot_data(result)
    assert plots.exits_plot_data(str(tmp_path / "run")) == plots.exits_plot_data(result)


@pytest.mark.parametrize("options", [dict(per_class=True), dict(pick=Pick.from_options(max_drop=3.0), delta=0.2)])
def test_one_gather_per_plot_from_the_run_documents(options, tmp_path):
    """A SearchResult is gathered through its run documents (per-class front with test points,
    certificate ring): exactly what `tradeoff plot RUN` reads back from the written run."""
    from tradeoff.report.plot_data import run_files_of

    res = run_search(synthetic_cache(800, 10, (0.6, 0.75, 0.85, 0.9), seed=3), pop=12, gens=4, bootstrap=200, **options)
    files = run_files_of(res)
    assert files.run_dir is None and files.summary["chosen"]["method"] == res.chosen.method
    rundir.write_run(tmp_path / "run", res)
    pareto = plots.pareto_plot_data(res)
    assert pareto == plots.pareto_plot_data(tmp_path / "run") == plots.pareto_plot_data(files)
    assert plots.exits_plot_data(res) == plots.exits_plot_data(tmp_path / "run")
    if options.get("per_class"):
        assert pareto.fronts[1].method == "nsga-per-class" and pareto.fronts[1].test_accuracy is not None
    else:
        assert pareto.certified and pareto.certified.startswith("certified:")


def test_figures_render_without_touching_global_state(result):
    import matplotlib.pyplot as plt

    rc_before = dict(matplotlib.rcParams)
    figs_before = plt.get_fignums()
    for fig in (plots.plot_pareto(plots.pareto_plot_data(result)), plots.plot_exits(plots.exits_plot_data(result))):
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=60)
        assert buffer.getvalue().startswith(PNG_MAGIC)
        ax = fig.axes[0]
        assert ax.get_title() and ax.get_xlabel() or ax.get_xticklabels()
        fig.clear()
    assert plt.get_fignums() == figs_before  # never registered with pyplot
    assert dict(matplotlib.rcParams) == rc_before


def test_pareto_figure_draws_what_was_gathered(result):
    data = plots.pareto_plot_data(result)
    fig = plots.plot_pareto(data)
    ax = fig.axes[0]
    labels = ax.get_legend_handles_labels()[1]
    assert labels[:2] == ["NSGA-II front (val)", "same thresholds on test"]
    assert data.target_label in labels and "chosen (test)" in labels
    line = next(l for l in ax.get_lines() if l.get_label() == "NSGA-II front (val)")
    assert tuple(line.get_xdata()) == data.fronts[0].val_mflops
    assert tuple(line.get_ydata()) == data.fronts[0].val_accuracy
    assert {t.get_text() for t in ax.texts} >= {"exit1", "exit2", "exit3", "exit4"}
    assert any("speed-up" in a.get_xlabel() for a in fig.axes[0].child_axes)  # the secondary axis
    fig.clear()


def test_budget_pick_draws_a_budget_line(result):
    data = plots.ParetoPlotData(**{**plots.pareto_plot_data(result).__dict__, "target_accuracy": None, "budget_mflops": 90.0,
                                              "target_label": "budget 90 MFLOPs"})
    fig = plots.plot_pareto(data)
    assert "budget 90 MFLOPs" in fig.axes[0].get_legend_handles_labels()[1]
    fig.clear()


def test_plot_command_redraws_from_the_files(result, tmp_path, capsys):
    run = tmp_path / "run"
    rundir.write_run(run, result)
    assert main(["plot", str(run)]) == 0
    for name in ("pareto.png", "exits.png"):
        assert (run / name).read_bytes().startswith(PNG_MAGIC)
    assert "wrote" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


@pytest.mark.parametrize(
    "damage, match",
    [
        (lambda run: (run / "summary.json").unlink(), "summary.json is missing"),
        (lambda run: (run / "thresholds.json").write_text("{"), "thresholds.json is not valid JSON"),
        (lambda run: (run / "pareto.csv").write_text("a,b\n1,2\n"), "has no 'val_accuracy' column"),
        (lambda run: (run / "summary.json").write_text(json.dumps({"fronts": {}})), "does not hold a complete tradeoff run"),
        (lambda run: None, None),
    ],
)
def test_plot_command_damaged_runs_fail_in_one_line(result, tmp_path, capsys, damage, match):
    run = tmp_path / "run"
    if match is None:
        run = tmp_path / "nowhere"
        match = "run directory .*nowhere does not exist"
    else:
        rundir.write_run(run, result)
        damage(run)
    assert main(["plot", str(run)]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert re.search(match, err), err
    assert not (run / "pareto.png").exists()


def test_gather_rejects_other_things():
    with pytest.raises(TypeError, match="takes a SearchResult, a RunFiles or a run directory path; got int"):
        plots.pareto_plot_data(3)


def test_speedup_ticks_are_round_and_apart():
    ticks = pareto_plot._speedup_ticks(9.0, (1.6, 9.4))
    positions = [9.0 / t for t in ticks]
    assert ticks[0] == 5.0 and ticks[-1] == 1.0  # 1.8 MFLOPs and 9 MFLOPs are in range
    assert all(b - a >= 0.07 * 7.8 for a, b in zip(positions, positions[1:]))
    ticks = pareto_plot._speedup_ticks(560.0, (270.0, 720.0))
    assert ticks[0] == 2.0 and ticks[-1] == 0.8 and len(ticks) >= 6
    assert all(560 / b - 560 / a >= 0.07 * 450 for a, b in zip(ticks, ticks[1:]))


# --------------------------------------------------------------------------- issue 15, item 10
def test_small_costs_keep_significant_digits():
    from tradeoff.report.tables import mflops_text

    assert mflops_text(1234.0) == "0.001234" and mflops_text(123_400.0) == "0.1234" and mflops_text(2.5e7) == "25.00"


def test_imported_runs_say_their_costs_are_given_and_coinciding_baselines_are_named(tmp_path):
    import numpy as np

    from tradeoff.cache.importer import exit_summary_table, import_cache
    from tradeoff.search.run import run_search

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 400)
    logits = rng.normal(size=(2, 400, 5)).astype(np.float32) + 3 * np.eye(5, dtype=np.float32)[labels] * np.array([[[1.0]], [[2.0]]], dtype=np.float32)
    cache = import_cache(logits, labels, flops=[2000.0, 9000.0])  # a tiny model: 0.002 / 0.009 MFLOPs
    assert "0.002" in exit_summary_table(cache) and "0.00 " not in exit_summary_table(cache)
    result = run_search(cache, pick=None, pop=12, gens=4, seed=0)
    data = plots.pareto_plot_data(result)
    assert data.cost_label == "millions of cost units, as given"
    assert data.title == "imported - in-memory cache"
    from dataclasses import replace

    from tradeoff.report.plot_data import _coinciding

    assert _coinciding({"nsga": 0.5, "grid": 0.50004, "random": 0.49}, "nsga") == ("grid",)
    fig = plots.plot_pareto(replace(data, coincide=("grid",)))
    ax = fig.axes[0]
    assert "as given" in ax.get_xlabel()
    drawn = {line.get_label(): line for line in ax.get_lines()}
    assert drawn["exhaustive grid (val; coincides with the front)"].get_linestyle() == "--"

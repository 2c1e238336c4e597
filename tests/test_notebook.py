"""notebooks/explore_pareto.ipynb runs top to bottom on a small run, so it cannot rot."""

from __future__ import annotations

import base64
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tradeoff.report import plots

from tradeoff.report import rundir
from tradeoff.cache.format import write_cache
from tradeoff.search.run import run_search
from tradeoff.search.settings import Pick
from tradeoff.cache.synthetic import synthetic_cache

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "explore_pareto.ipynb"


def _run(tmp_path, **options):
    """A real run directory (search + report + plots) over a small synthetic 3-exit cache."""
    cache_path = tmp_path / "cache.npz"
    write_cache(cache_path, synthetic_cache(num_samples=600, num_classes=10, exit_accuracies=(0.7, 0.85, 0.9), seed=3))
    from tradeoff.cache.format import load_cache

    result = run_search(load_cache(cache_path), pick=Pick("target_acc", 0.85), pop=12, gens=5, seed=0,
                        cache_path=cache_path, **options)
    run = tmp_path / "run"
    rundir.write_run(run, result, extra=[
        lambda d: plots.save_plots(plots.pareto_plot_data(result), plots.exits_plot_data(result), d)
    ])
    return run


@pytest.fixture()
def small_run(tmp_path):
    return _run(tmp_path)


def test_notebook_executes_and_draws(small_run, monkeypatch):
    monkeypatch.setenv("TRADEOFF_RUN", str(small_run))
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.delenv("MPLBACKEND", raising=False)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(small_run.parent)}})
    client.execute()  # raises CellExecutionError on any failing cell
    outputs = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", [])]
    assert not [out for out in outputs if out.get("output_type") == "error"]
    pngs = [out["data"]["image/png"] for out in outputs if "image/png" in out.get("data", {})]
    assert len(pngs) >= 4  # fronts, exits, confidence histograms, target sweep
    assert all(base64.b64decode(png)[:8] == b"\x89PNG\r\n\x1a\n" for png in pngs)
    text = "".join(out.get("text", "") for out in outputs) + "".join(
        out.get("data", {}).get("text/plain", "") for out in outputs
    )
    assert "skipping the histograms" not in text  # the cache was found and drawn
    assert "chosen thresholds" in text and "val accuracy" in text
    # section 4: the report's plotly figures (front with its target marks, exit shares, confidence) and the slider
    plotly_figs = [out["data"]["application/vnd.plotly.v1+json"] for out in outputs
                   if "application/vnd.plotly.v1+json" in out.get("data", {})]
    assert len(plotly_figs) == 3
    names = [trace.get("name") for trace in plotly_figs[0]["data"]]
    assert "cheapest meeting the target (val)" in names and "NSGA-II (val)" in names
    assert any("application/vnd.jupyter.widget-view+json" in out.get("data", {}) for out in outputs)


def _project_copy(tmp_path: Path) -> Path:
    """A minimal project folder: setup.cfg, notebooks/explore_pareto.ipynb, an empty results/."""
    root = tmp_path / "proj"
    (root / "notebooks").mkdir(parents=True)
    (root / "results").mkdir()
    (root / "setup.cfg").write_text((REPO / "setup.cfg").read_text())
    (root / "notebooks" / NOTEBOOK.name).write_bytes(NOTEBOOK.read_bytes())
    return root


def _execute_first_cells(root: Path, monkeypatch, cells: int):
    monkeypatch.delenv("TRADEOFF_RUN", raising=False)
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    nb = nbformat.read(root / "notebooks" / NOTEBOOK.name, as_version=4)
    nb.cells = nb.cells[:cells]
    client = NotebookClient(nb, timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": str(root / "notebooks")}})  # Jupyter's default folder
    client.execute()
    return nb


def test_notebook_started_in_its_own_folder_finds_the_projects_demo_run(small_run, tmp_path, monkeypatch):
    import shutil

    root = _project_copy(tmp_path)
    shutil.copytree(small_run, root / "results" / "demo")
    nb = _execute_first_cells(root, monkeypatch, cells=2)
    text = "".join(out.get("text", "") for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs)
    assert f"run: {root / 'results' / 'demo'}/" in text


def test_notebook_without_a_run_says_make_demo_and_never_trains(tmp_path, monkeypatch):
    from nbclient.exceptions import CellExecutionError

    root = _project_copy(tmp_path)
    with pytest.raises(CellExecutionError, match=r"run `make demo` first"):
        _execute_first_cells(root, monkeypatch, cells=2)
    assert not (root / "notebooks" / "results").exists()  # nothing built beside the notebook
    assert list((root / "results").iterdir()) == []


def test_notebook_runs_on_a_per_class_run_with_the_ensemble_fallback(tmp_path, monkeypatch):
    """K thresholds (the last exit's too) and per-class tables: the first cells print and draw them."""
    run = _run(tmp_path, per_class=True, fallback="ensemble")
    monkeypatch.setenv("TRADEOFF_RUN", str(run))
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.delenv("MPLBACKEND", raising=False)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells = nb.cells[:6]  # the run, the fronts, each exit's confidence with its threshold
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", [])]
    text = "".join(out.get("text", "") for out in outputs)
    assert "chosen thresholds: ['per class [" in text and "(fallback: ensemble)" in text
    assert "skipping the histograms" not in text
    assert sum("image/png" in out.get("data", {}) for out in outputs) >= 3  # fronts, exits, histograms

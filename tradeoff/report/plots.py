"""A run's pictures: `save_plots` writes pareto.png and exits.png into its directory.

Also the one import for everything plotting (`from tradeoff.report import plots`): the
gatherers (`plot_data`), the two drawings (`pareto_plot`, `exits_plot`) and `figure_png`.
matplotlib is imported only when something is drawn.
"""

from __future__ import annotations

import os
from pathlib import Path

from tradeoff.fileio import write_bytes_atomic
from tradeoff.report.exits_plot import plot_exits
from tradeoff.report.figure import figure_png
from tradeoff.report.pareto_plot import plot_pareto
from tradeoff.report.plot_data import (  # noqa: F401  (the plotting API, one import)
    ChosenMark, ExitPoint, ExitsPlotData, FrontSeries, ParetoPlotData, RunFiles, exits_plot_data, pareto_plot_data,
    read_run_files,
)

PARETO_PNG = "pareto.png"
EXITS_PNG = "exits.png"


def save_plots(pareto: ParetoPlotData, exits: ExitsPlotData, run_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Draw both pictures and write them atomically into `run_dir`."""
    run_dir = Path(run_dir)
    paths = (run_dir / PARETO_PNG, run_dir / EXITS_PNG)
    for path, fig in zip(paths, (plot_pareto(pareto), plot_exits(exits))):
        write_bytes_atomic(path, figure_png(fig))
    return paths

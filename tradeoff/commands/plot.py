"""`tradeoff plot`: redraw a run's plots from its files."""

from __future__ import annotations

import contextlib
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("plot", help="redraw pareto.png and exits.png from a results directory")
    p.add_argument("run", help="results/<run> directory written by `tradeoff search`")
    p.set_defaults(func=run)


def run(args) -> int:
    """`tradeoff plot RUN_DIR`: redraw pareto.png and exits.png from the run's files.

    Holds the run's exclusive lock while reading and writing, so a concurrent
    `tradeoff search --out RUN_DIR` cannot swap the directory in between.
    """
    from tradeoff.report import documents as report
    from tradeoff.report.plots import exits_plot_data, pareto_plot_data, read_run_files, save_plots
    run_dir = Path(args.run)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist; give a results/<run> directory written by `tradeoff search`")
    has_lock = (run_dir.parent / f"{run_dir.name}.lock").exists()
    lock = report.run_lock(run_dir) if has_lock else contextlib.nullcontext()
    with lock:
        files = read_run_files(run_dir, lock=False)
        paths = save_plots(pareto_plot_data(files), exits_plot_data(files), run_dir)
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0

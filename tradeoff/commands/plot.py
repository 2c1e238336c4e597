"""`tradeoff plot`: redraw a run's plots from its files."""

from __future__ import annotations

from pathlib import Path


def add_parser(sub) -> None:
    from tradeoff.commands.common import add_command

    p = add_command(
        sub, "plot", help="redraw pareto.png and exits.png from a results directory",
        description="Redraw a run's pictures (pareto.png: accuracy against cost of every method's front; "
                    "exits.png: where samples leave) from the files `tradeoff search` wrote, without searching again.",
        examples="tradeoff plot results/demo-acc0.78",
    )
    p.add_argument("run", help="results/<run> directory written by `tradeoff search`")
    p.set_defaults(func=run)


def run(args) -> int:
    """`tradeoff plot RUN_DIR`: redraw pareto.png and exits.png from the run's files.

    Holds the run's exclusive lock while reading and writing, so a concurrent
    `tradeoff search --out RUN_DIR` cannot swap the directory in between.
    """
    from tradeoff.report import rundir
    from tradeoff.report.plots import exits_plot_data, pareto_plot_data, read_run_files, save_plots
    run_dir = Path(args.run)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist; give a results/<run> directory written by `tradeoff search`")
    from tradeoff.commands.common import prepare_output

    prepare_output(run_dir / "pareto.png")  # a read-only run fails before drawing
    with rundir.run_lock(run_dir):
        files = read_run_files(run_dir, lock=False)
        paths = save_plots(pareto_plot_data(files), exits_plot_data(files), run_dir)
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0

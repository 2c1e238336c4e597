"""`tradeoff report`: rebuild report.html, the interactive self-contained page of a run directory."""

from __future__ import annotations

from tradeoff.commands.common import add_command


def add_parser(sub) -> None:
    p = add_command(
        sub, "report", help="rebuild report.html, the interactive self-contained page of a results directory",
        description="Rebuild <run>/report.html: one self-contained page (plotly.js inside, no network) with every method's front on val, the same thresholds on test, each exit alone, the chosen point; hover a point for its thresholds, click one for where its samples leave and each exit's confidence histogram, and move a target-accuracy slider.",
        examples='tradeoff report results/demo\ntradeoff report results/x-acc0.78 --cache results/cache/x.npz',
    )
    p.add_argument("run", help="results/<run> directory written by `tradeoff search`")
    p.add_argument("--cache", help="the cache the run was searched on, if it moved (checked by sha256)")
    p.set_defaults(func=run)


def run(args) -> int:
    from tradeoff.report.html import write_report

    path = write_report(args.run, cache_path=args.cache)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB; self-contained: open it in any browser, no network needed)")
    return 0

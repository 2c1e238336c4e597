"""`tradeoff report`: rebuild report.html, the interactive self-contained page of a run directory."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="rebuild report.html, the interactive self-contained page of a results directory")
    p.add_argument("run", help="results/<run> directory written by `tradeoff search`")
    p.add_argument("--cache", help="the cache the run was searched on, if it moved (checked by sha256)")
    p.set_defaults(func=run)


def run(args) -> int:
    from tradeoff.report.html import write_report

    path = write_report(args.run, cache_path=args.cache)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB; self-contained: open it in any browser, no network needed)")
    return 0

"""The `tradeoff` command line: parse, call one library function, print.

Each sub-command is a module of this package with `add_parser(subparsers)` (its options)
and `run(args)` (flags -> library call -> printed result). Library modules are imported
inside `run`, so that `tradeoff search` never imports torch. This package is the only place
that imports argparse, prints results or chooses default output paths (`defaults.py`).
Library errors (ValueError / TypeError / OSError / RuntimeError) become one line on stderr
and a non-zero exit; a traceback is a bug.
"""

from __future__ import annotations

import argparse
import sys

from tradeoff import __version__
from tradeoff.commands import cache, demo, evaluate, export, import_, plot, profile, report, run, search, train
from tradeoff.errors import TargetUnreachable

EXIT_USER_ERROR = 1
EXIT_UNREACHABLE = TargetUnreachable.exit_code
COMMANDS = (train, cache, import_, search, evaluate, plot, profile, report, run, export, demo)  # the order `tradeoff --help` lists them in


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tradeoff",
        description="Find the per-exit thresholds that make a multi-exit network pay off.",
    )
    parser.add_argument("--version", action="version", version=f"tradeoff {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except TargetUnreachable as exc:
        print(f"tradeoff {args.command}: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except (ValueError, TypeError, OSError, RuntimeError) as exc:
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"tradeoff {args.command}: error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"tradeoff {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""The `tradeoff` command line: parse, call one library function, print.

Each sub-command is a module of this package with `add_parser(subparsers)` (its options)
and `run(args)` (flags -> library call -> printed result). Library modules are imported
inside `run`, so that `tradeoff search` never imports torch. This package is the only place
that imports argparse, prints results or chooses default output paths (`defaults.py`).
Library errors (ValueError / TypeError / OSError / RuntimeError) become one line on stderr
and a non-zero exit; a traceback is a bug.

What holds for every sub-command, whoever adds it (`main` and `build_parser` do it once):
`--no-progress` (and no bars when stderr is not a terminal: tqdm is switched off through
TQDM_DISABLE); a misspelt option prints that sub-command's usage, not the top-level one; a
reader that stops reading (`tradeoff search | head`) neither loses the command's work nor
gets a "Broken pipe" line. Shared options and checks live in `common.py`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

from tradeoff import __version__
from tradeoff.commands import cache, demo, evaluate, export, import_, plot, profile, report, run, search, train
from tradeoff.commands.common import CommandParser, add_progress_option, progress_enabled
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
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=CommandParser)
    sub.required = True
    for command in COMMANDS:
        command.add_parser(sub)
    for sub_parser in sub.choices.values():
        if "--no-progress" not in sub_parser._option_string_actions:
            add_progress_option(sub_parser)
    return parser


def _sub_parser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and name in action.choices:
            return action.choices[name]
    return parser


class _PipeSafe:
    """stdout that goes quiet once its reader has gone (`| head`): the command still finishes."""

    def __init__(self, stream):
        self._stream, self.closed_pipe = stream, False

    def write(self, text):
        if not self.closed_pipe:
            try:
                return self._stream.write(text)
            except BrokenPipeError:
                self._silence()
        return len(text)

    def flush(self):
        if not self.closed_pipe:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._silence()

    def _silence(self):
        self.closed_pipe = True
        with contextlib.suppress(OSError, ValueError, AttributeError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())  # so the interpreter's last flush finds no pipe either
            os.close(devnull)

    def __getattr__(self, name):
        return getattr(self._stream, name)


@contextlib.contextmanager
def _quiet_bars(quiet: bool):
    old = os.environ.get("TQDM_DISABLE")
    if quiet:
        os.environ["TQDM_DISABLE"] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = old


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        _sub_parser(parser, args.command).error(f"unrecognized arguments: {' '.join(unknown)}")
    stdout = sys.stdout
    sys.stdout = _PipeSafe(stdout)
    try:
        with _quiet_bars(not progress_enabled(args)):
            return int(args.func(args) or 0)
    except TargetUnreachable as exc:
        print(f"tradeoff {args.command}: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except (ValueError, TypeError, OSError, RuntimeError) as exc:
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"tradeoff {args.command}: error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt as exc:
        print(f"tradeoff {args.command}: {exc.args[0] if exc.args else 'interrupted'}", file=sys.stderr)
        return 130
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
        sys.stdout = stdout


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

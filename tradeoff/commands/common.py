"""What every sub-command shares: options, output checks, progress, warnings.

Any command module (including ones added later) uses these instead of its own copy:

* `si_number`: the argparse type of every count or cost flag (`300M`, `3e8`, `1.5G`, `64k`).
* `add_progress_option` / `progress_enabled`: `--no-progress`, and no bars at all when stderr
  is not a terminal (a log file must not collect `\\r` frames).
* `prepare_output`: the output is checked writable before any long work starts, and its
  current state is remembered so the writer can refuse to replace what another process
  wrote meanwhile (`tradeoff.fileio.ensure_unchanged`).
* `add_command`: a sub-command parser with a description and examples in its `--help`.
* `warn`: one `tradeoff <command>: warning: ...` line on stderr.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from pathlib import Path

from tradeoff.fileio import check_writable, output_stamp

_SI = {"": 1.0, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
_SI_RE = re.compile(r"^\s*([-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)\s*([kKMGT]?)\s*$")


def si_number(text: str) -> float:
    """A number with an optional SI suffix: "3e8", "300M", "1.5G", "64k" (k/K = 1e3, M = 1e6,
    G = 1e9, T = 1e12). The argparse type of cost and count flags.

    Raises:
        argparse.ArgumentTypeError: naming what arrived and what is accepted.
    """
    match = _SI_RE.match(str(text))
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; give e.g. 3e8, 300M or 1.5G")
    value = float(match.group(1)) * _SI[match.group(2)]
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def si_int(text: str) -> int:
    """`si_number` for counts (batch sizes, samples): "64", "1k"; must be a whole number."""
    value = si_number(text)
    if value != int(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number")
    return int(value)


class CommandParser(argparse.ArgumentParser):
    """A sub-command's parser whose errors are one line naming the sub-command and its --help
    (argparse's default is the whole usage block, several lines for the bigger commands)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def add_command(sub, name: str, *, help: str, description: str, examples: str):  # noqa: A002 - argparse's name
    """A sub-command parser whose `--help` has a description and examples.

    Args:
        sub: the `add_subparsers()` object.
        name: the command's name.
        help: one line for `tradeoff --help`.
        description: a paragraph for `tradeoff NAME --help`.
        examples: command lines, one per line, shown under "examples:".
    """
    epilog = "examples:\n" + "\n".join(f"  {line}" for line in examples.strip().splitlines())
    return sub.add_parser(name, help=help, description=description, epilog=epilog,
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def add_progress_option(parser) -> None:
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bars (there are none anyway when stderr is not a terminal)")


def progress_enabled(args) -> bool:
    """Bars only when asked (no --no-progress) and stderr is a terminal."""
    return not getattr(args, "no_progress", False) and _isatty(sys.stderr)


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def prepare_output(path: str | os.PathLike, *, flag: str = "--out", directory: bool = False):
    """Check before the work that `path` can be written; remember what is there now.

    Args:
        path: the file (or, with `directory`, the run directory) the command will write.
        flag: the option that named it, for messages.
        directory: `path` is a directory replaced as a whole.

    Returns:
        The output's current stamp, for the writer's `expect=` (it refuses to replace an
        output that another process wrote after this call).

    Raises:
        PermissionError / ValueError: one line naming `flag`, `path` and the fix.
    """
    path = Path(path)
    if directory and path.exists() and not path.is_dir():
        raise ValueError(f"{flag} {path} is an existing file; give a directory path for the results")
    if not directory and path.is_dir():
        raise ValueError(f"{flag} {path} is a directory; give a file path")
    check_writable(path, flag=flag)
    return output_stamp(path)


def warn(command: str, message: str) -> None:
    print(f"tradeoff {command}: warning: {message}", file=sys.stderr)


def run_in_process_group(command: str, work, args, ctx, *, no_barrier: tuple = ()) -> int:
    """`work(args, ctx, device)` in torchrun's process group (`cache.shard.process_group`).

    On a failure each process prints why (one line) and then waits at a barrier, since
    torchrun ends the others as soon as one process is gone; an exception of a
    `no_barrier` type skips the barrier (the others failed with it). Returns work's exit
    code, or 1 on a failure.
    """
    from tradeoff.cache import shard

    with shard.process_group(ctx, args.device) as device:
        try:
            return work(args, ctx, device)
        except (ValueError, TypeError, OSError, RuntimeError) as exc:
            print(f"tradeoff {command}: error: {' '.join(str(exc).split()) or type(exc).__name__}", file=sys.stderr,
                  flush=True)
            if not isinstance(exc, no_barrier):
                shard.barrier(ctx, device)
            return 1

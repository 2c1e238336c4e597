"""The `tradeoff` command line: parse, call one library function, print.

Each sub-command is a pair: `_add_<name>(subparsers)` declares its options and
`_cmd_<name>(args)` runs it. Library modules are imported inside the command so that
`tradeoff search` never imports torch. Bad input raised as ValueError / TypeError /
OSError becomes one line on stderr and a non-zero exit; a traceback is a bug.
"""

from __future__ import annotations

import argparse
import sys

from tradeoff import __version__
from tradeoff.errors import TargetUnreachable

EXIT_USER_ERROR = 1
EXIT_UNREACHABLE = TargetUnreachable.exit_code


# --------------------------------------------------------------------------- cache
def _add_cache(sub) -> None:
    p = sub.add_parser("cache", help="run a multi-exit model over a dataset once; store every exit's logits and cost")
    p.add_argument("--ckpt", required=True, help="checkpoint: tradeoff .pt, bare state_dict (.pth/.pt) or .safetensors")
    p.add_argument("--arch", help="model name (for bare state_dicts), or pkg.module:builder")
    p.add_argument("--num-classes", type=int, help="number of classes (for bare state_dicts)")
    p.add_argument("--data", help="digits | cifar100:DIR | cifar10:DIR | fashion-mnist[:DIR] | mnist:DIR | npz:PATH "
                                   "(default: the checkpoint's, else digits)")
    p.add_argument("--out", help="cache file to write (default: results/cache/<ckpt>-<data>.npz)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="cpu")
    p.add_argument("--logits-dtype", choices=("float32", "float16"), default="float32")
    p.add_argument("--include-train", action="store_true", help="also cache the train split")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="allow unpickling arbitrary objects from the checkpoint (only for files you trust)")
    p.set_defaults(func=_cmd_cache)


def _cmd_cache(args) -> int:
    from tradeoff.cache_build import cache_command

    return cache_command(args)


# --------------------------------------------------------------------------- import
def _add_import(sub) -> None:
    p = sub.add_parser("import", help="build a cache from your own logits arrays (any framework)")
    p.add_argument("logits", nargs="+", help="one (K, N, C) .npy/.pt file, or one (N, C) file per exit, shallow -> deep")
    p.add_argument("--labels", required=True, help=".npy/.pt file of N integer labels")
    p.add_argument("--split", help=".npy file of N strings 'val'/'test' (default: fixed seeded half/half)")
    p.add_argument("--flops", required=True, help="per-exit cumulative costs: comma-separated numbers or a JSON file")
    p.add_argument("--baseline-flops", type=float, help="cost of the original single-exit network (default: last exit's)")
    p.add_argument("--out", required=True, help="cache file to write (.npz)")
    p.add_argument("--trust-checkpoint", action="store_true", help="allow unpickling .pt files you trust")
    p.set_defaults(func=_cmd_import)


def _cmd_import(args) -> int:
    from tradeoff.cache_import import import_command

    return import_command(args)


# --------------------------------------------------------------------------- search
def _add_search(sub) -> None:
    p = sub.add_parser("search", help="find per-exit thresholds (NSGA-II) and the accuracy-cost Pareto front")
    p.add_argument("--cache", help="cache file (default: the newest under results/cache/)")
    pick = p.add_mutually_exclusive_group()
    pick.add_argument("--target-acc", type=float, help="cheapest point with val accuracy >= this (0, 1]")
    pick.add_argument("--max-drop", type=float, help="val accuracy within this many percentage points of the deepest exit")
    pick.add_argument("--budget-flops", type=float, help="most accurate point costing at most this many FLOPs")
    p.add_argument("--method", default="nsga", help="nsga | global | msdnet | random | grid (all are drawn)")
    p.add_argument("--confidence", default="maxprob", choices=("maxprob", "margin", "entropy"))
    p.add_argument("--ensemble", action="store_true", help="exit k answers with the mean softmax of exits 1..k")
    p.add_argument("--calibrate", action="store_true", help="fit per-exit temperatures on val")
    p.add_argument("--pop", type=int, default=100, help="NSGA-II population size (>= 4; default 100)")
    p.add_argument("--gens", type=int, default=100, help="NSGA-II generations (>= 1; default 100)")
    p.add_argument("--seed", type=int, default=0, help="seed of the search, random search and bootstrap (default 0)")
    p.add_argument("--restarts", type=int, default=1, help="independently seeded NSGA-II runs, fronts merged")
    p.add_argument("--jobs", type=int, default=1, help="processes for --restarts (results do not depend on it)")
    p.add_argument("--out", help="results directory (default: results/<cache-stem>-<pick>, e.g. results/x-acc0.78)")
    p.add_argument("--no-plots", action="store_true", help="skip pareto.png and exits.png (redraw later: tradeoff plot)")
    p.set_defaults(func=_cmd_search)


def _cmd_search(args) -> int:
    from tradeoff.search.run import search_command

    return search_command(args)


# --------------------------------------------------------------------------- plot
def _add_plot(sub) -> None:
    p = sub.add_parser("plot", help="redraw pareto.png and exits.png from a results directory")
    p.add_argument("run", help="results/<run> directory written by `tradeoff search`")
    p.set_defaults(func=_cmd_plot)


def _cmd_plot(args) -> int:
    from tradeoff.plots import plot_command

    return plot_command(args)


# --------------------------------------------------------------------------- train
def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a multi-exit model (SCAN self-distillation, SideNet, Adjoined)")
    p.add_argument("--arch", required=True)
    p.add_argument("--data", default="digits")
    p.add_argument("--out", required=True, help="checkpoint to write (.pt, tradeoff format)")
    p.add_argument("--main", help="frozen MainNet checkpoint (SideNet only)")
    p.add_argument("--width-fraction", type=float, help="small network's share of channels (Adjoined only; default 0.5)")
    p.add_argument("--tap", type=int, help="SideNet only: the side head reads layer<TAP>'s output (default: the middle layer)")
    p.add_argument("--epochs", type=int, help="default: 200 for CIFAR (the paper's schedule), 5 for MNIST layouts, 30 otherwise")
    p.add_argument("--batch-size", type=int, help="default: 128 for CIFAR, 256 for MNIST layouts, 64 otherwise")
    p.add_argument("--lr", type=float, help="default: 0.1 SGD for CIFAR, 4e-3 Adam one-cycle for MNIST layouts, 3e-3 Adam otherwise")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: 1 for small data, all cores for CIFAR)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--trust-checkpoint", action="store_true", help="allow unpickling --main (only files you trust)")
    p.set_defaults(func=_cmd_train)


def _cmd_train(args) -> int:
    from tradeoff.train import train_command

    return train_command(args)


# --------------------------------------------------------------------------- run
def _add_run(sub) -> None:
    p = sub.add_parser("run", help="real early-exit inference with chosen thresholds; measured latency")
    p.add_argument("--ckpt", required=True, help="the checkpoint the thresholds were searched for")
    p.add_argument("--thresholds", required=True, help="results/<run>/thresholds.json")
    p.add_argument("--arch", help="model name (for bare state_dicts), or pkg.module:builder")
    p.add_argument("--num-classes", type=int, help="number of classes (for bare state_dicts)")
    p.add_argument("--data", help="data whose test split is run (default: the checkpoint's, else digits)")
    p.add_argument("--cache", help="the cache the thresholds came from: checked by sha256, and the runtime's "
                                   "exits compared with the exit rule on its test logits")
    p.add_argument("--batch-size", type=int, default=1, help="samples per forward call (default 1: deployment latency)")
    p.add_argument("--repeats", type=int, default=5, help="timed passes over the split; the median is reported")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (default 1: batch-1 latency is steadiest on one core)")
    p.add_argument("--out", help="JSON file for the measurements (default: <thresholds dir>/run-b<batch>.json)")
    p.add_argument("--compiled", action="store_true",
                   help="run both the early-exit model and the original network as frozen TorchScript graphs "
                        "(batch norm folded: faster at small batch; logits may differ in the last float32 bits)")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="allow unpickling arbitrary objects from the checkpoint (only for files you trust)")
    p.set_defaults(func=_cmd_run)


def _cmd_run(args) -> int:
    from tradeoff.runtime import run_command

    return run_command(args)


# --------------------------------------------------------------------------- demo
def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="train the embedded default, cache it, search it, plot it")
    p.add_argument("--out", default="results/demo", help="run directory to write (an old demo there is replaced)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", default="digits", choices=("digits", "fashion-mnist"),
                   help="digits (embedded, ~1 min) or fashion-mnist (Debian's dataset-fashion-mnist, a few minutes)")
    p.add_argument("--epochs", type=int, help="training epochs (default: the data's schedule)")
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args) -> int:
    from tradeoff.demo import demo_command

    return demo_command(args)


# --------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tradeoff",
        description="Find the per-exit thresholds that make a multi-exit network pay off.",
    )
    parser.add_argument("--version", action="version", version=f"tradeoff {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for add in (_add_train, _add_cache, _add_import, _add_search, _add_plot, _add_run, _add_demo):
        add(sub)
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

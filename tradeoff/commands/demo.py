"""`make demo` (`tradeoff demo --out results/demo`): the whole tool in a few minutes on a CPU.

Train `scan_small` on scikit-learn's 8x8 digits (fixed seed), cache every exit's logits on
val and test, search thresholds with the default pick (no loss against the deepest exit
on val), and leave one run directory:

    <out>/model.pt  cache.npz  thresholds.json  pareto.csv  summary.json  pareto.png  exits.png  report.html

The model and cache are built in a staging directory beside `<out>` and moved into the run
directory inside `rundir.write_run`, which swaps the finished directory in as one step: a
reader (or a second demo) never sees a half-written `<out>`.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from tradeoff.commands.defaults import DEFAULT_DEMO_DIR, DEFAULT_FASHION_DIR, RUN_CACHE_FILE

MODEL_FILE = "model.pt"
CACHE_FILE = RUN_CACHE_FILE  # where `tradeoff search` looks by default (commands.defaults.newest_cache)
DEMO_ARCH = "scan_small"
DEMO_DATA = "digits"
# `--data` -> the model trained on it (each with its data's default schedule in train.py).
DEMO_ARCHS = {"digits": "scan_small", "fashion-mnist": "scan_cnn"}


@dataclass(frozen=True)
class DemoResult:
    """What the demo produced and what it found.

    Attributes:
        out: the run directory.
        exit_test_accuracy: (K,) each exit alone on test, shallow -> deep.
        thresholds: (K-1,) the chosen per-exit thresholds.
        val_accuracy, test_accuracy: of the chosen point.
        speedup_val, speedup_test: baseline_flops / mean cost, on each split.
        exit_fractions_test: (K,) where the test samples left.
        seconds: {"train", "cache", "search", "total"} wall times.
    """

    out: Path
    exit_test_accuracy: tuple[float, ...]
    thresholds: tuple[float, ...]
    val_accuracy: float
    test_accuracy: float
    speedup_val: float
    speedup_test: float
    exit_fractions_test: tuple[float, ...]
    seconds: dict


def run_demo(
    out: str | os.PathLike = DEFAULT_DEMO_DIR,
    *,
    data: str = DEMO_DATA,
    seed: int = 0,
    epochs: int | None = None,
    pop: int = 100,
    gens: int = 100,
    progress: bool = True,
    log=print,
) -> DemoResult:
    """Train, cache, search and plot; write everything to `out` (replacing an old demo).

    Args:
        out: run directory to write.
        data: "digits" (scan_small, the embedded default) or "fashion-mnist" (scan_cnn on
            Debian's dataset-fashion-mnist; see `DEMO_ARCHS`).
        seed: seeds the training and the search.
        epochs: training epochs (default: the data's schedule, `train.default_config`).
        pop, gens: NSGA-II population and generations.
        progress: tqdm bars on stderr.
        log: callable taking one line of text.
    """
    from tradeoff.report import plots
    from tradeoff.report import rundir
    from tradeoff.report import html as report_html
    from tradeoff.cache.build import cache_checkpoint
    from tradeoff.cache.importer import exit_summary_table
    from tradeoff.fileio import sibling_tempdir
    from tradeoff.search.run import run_search
    from tradeoff.training.loop import default_config, train_model

    if data not in DEMO_ARCHS:
        raise ValueError(f"--data {data!r} has no demo; choose one of {', '.join(DEMO_ARCHS)}")
    arch = DEMO_ARCHS[data]
    out = Path(out)
    staging = sibling_tempdir(out, "staging")
    seconds: dict = {}
    started = time.perf_counter()
    try:
        # 1. train
        log(f"[1/3] training {arch} on {data} (seed {seed})")
        config = default_config(data, epochs=epochs, seed=seed)
        t0 = time.perf_counter()
        trained = train_model(arch, data, staging / MODEL_FILE, config=config, progress=progress, log=log)
        seconds["train"] = time.perf_counter() - t0

        # 2. cache (what `tradeoff cache` runs)
        log(f"[2/3] caching every exit's logits on val and test (kept as {out / CACHE_FILE})")
        t0 = time.perf_counter()
        cached = cache_checkpoint(staging / MODEL_FILE, staging / CACHE_FILE, data=data)
        log(exit_summary_table(cached.cache))
        seconds["cache"] = time.perf_counter() - t0

        # 3. search, then write the run directory in one step with the model and cache inside
        log(f"[3/3] searching thresholds (NSGA-II {pop} x {gens}, default pick: no loss against the deepest exit on val)")
        t0 = time.perf_counter()
        result = run_search(cached.cache, pick=None, pop=pop, gens=gens, seed=seed, cache_path=staging / CACHE_FILE)
        result = replace(result, cache_path=str(out / CACHE_FILE))  # where it lives once moved (same bytes)

        def move_artefacts(run_dir: Path) -> None:
            for name in (MODEL_FILE, CACHE_FILE):
                os.replace(staging / name, run_dir / name)

        def draw(run_dir: Path) -> None:
            plots.save_plots(plots.pareto_plot_data(result), plots.exits_plot_data(result), run_dir)
            report_html.write_report(run_dir, lock=False)  # finds cache.npz beside it (moved in just before)

        rundir.write_run(out, result, extra=[move_artefacts, draw])
        seconds["search"] = time.perf_counter() - t0
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    seconds["total"] = time.perf_counter() - started
    seconds["train_loop"] = trained.seconds
    chosen = result.chosen
    return DemoResult(
        out=out,
        exit_test_accuracy=tuple(float(e.test_accuracy) for e in result.exits),
        thresholds=tuple(float(t) for t in chosen.thresholds),
        val_accuracy=float(chosen.val.accuracy),
        test_accuracy=float(chosen.test.accuracy),
        speedup_val=float(chosen.val.speedup),
        speedup_test=float(chosen.test.speedup),
        exit_fractions_test=tuple(float(f) for f in chosen.test.exit_fractions),
        seconds=seconds,
    )


def demo_summary(result: DemoResult) -> str:
    """A few lines: the network, the chosen thresholds, what they give on val and test."""
    from tradeoff.report.tables import accuracy_text as acc, share_text

    exits = " / ".join(acc(a) for a in result.exit_test_accuracy)
    lines = [
        "",
        f"demo results in {result.out}/",
        f"  each exit alone on test (shallow -> deep): {exits}; deepest exit {acc(result.exit_test_accuracy[-1])}",
        f"  chosen thresholds: {', '.join(f'{t:.4f}' for t in result.thresholds)}",
        f"  accuracy: val {acc(result.val_accuracy)}, test {acc(result.test_accuracy)}",
        f"  speed-up vs the single-exit network (FLOPs): val {result.speedup_val:.2f}x, test {result.speedup_test:.2f}x",
        f"  test samples leaving at each exit: {' / '.join(share_text(f) for f in result.exit_fractions_test)}",
        f"  time: train {result.seconds['train']:.1f} s, cache {result.seconds['cache']:.1f} s, "
        f"search+report {result.seconds['search']:.1f} s, total {result.seconds['total']:.1f} s",
        f"  next: open {result.out}/pareto.png, or `tradeoff run --ckpt {result.out}/{MODEL_FILE} "
        f"--thresholds {result.out}/thresholds.json`",
    ]
    return "\n".join(lines)


def add_parser(sub) -> None:
    from tradeoff.commands.common import add_command

    p = add_command(
        sub, "demo", help="train the embedded default (or Fashion-MNIST), cache it, search it, plot it",
        description="The whole tool on a CPU: train scan_small on scikit-learn's digits (about a minute and a half; "
                    "or scan_cnn on Fashion-MNIST with --data fashion-mnist, a few minutes), with a fixed seed, cache "
                    "its exits, search thresholds with the default pick (no loss against the deepest exit on val) and "
                    "write <out>/ with model.pt, cache.npz, thresholds.json, pareto.csv, summary.json, pareto.png, "
                    "exits.png and report.html. `tradeoff search` without --cache then finds <out>/cache.npz.",
        examples="make demo    # = python -m tradeoff demo --out results/demo\n"
                 "make demo-fashion    # = python -m tradeoff demo --data fashion-mnist --out results/fashion\n"
                 "tradeoff demo --out results/demo2 --seed 1",
    )
    p.add_argument("--out", help=f"run directory to write (an old demo there is replaced; default {DEFAULT_DEMO_DIR} "
                                 f"for digits, {DEFAULT_FASHION_DIR} for fashion-mnist)")
    p.add_argument("--seed", type=int, default=0, help="seeds the training and the search (default 0)")
    p.add_argument("--data", default=DEMO_DATA, choices=tuple(DEMO_ARCHS),
                   help="digits (embedded, ~1 min) or fashion-mnist (Debian's dataset-fashion-mnist, a few minutes)")
    p.add_argument("--epochs", type=int, help="training epochs (default: the data's schedule)")
    p.set_defaults(func=run)


def run(args) -> int:
    """`tradeoff demo`: run the demo and print its summary."""
    import torch

    # The demo models are small: one thread is faster than two on a busy machine (scan_cnn:
    # 1,534 against 313 img/s, issue 10), and a fixed count keeps the run reproducible.
    torch.set_num_threads(1)
    from tradeoff.commands.common import progress_enabled

    data = args.data
    out = args.out or (DEFAULT_DEMO_DIR if data == DEMO_DATA else DEFAULT_FASHION_DIR)
    result = run_demo(out, data=data, seed=args.seed, epochs=getattr(args, "epochs", None), log=print,
                      progress=progress_enabled(args))
    print(demo_summary(result))
    sys.stdout.flush()
    return 0

"""`tradeoff search`: search thresholds on a cache, write the run directory, print the summary."""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path

from tradeoff.commands.common import add_command, prepare_output, si_int, si_number, warn
from tradeoff.commands.defaults import default_run_dir, newest_cache

# Below this, --max-drop (percentage points) was most likely meant as a fraction: 0.005 for half a point.
MAX_DROP_WARN_BELOW = 0.1


def add_parser(sub) -> None:
    p = add_command(
        sub, "search", help="find per-exit thresholds (NSGA-II) and the accuracy-cost Pareto front",
        description="Search per-exit confidence thresholds on a cache's val split (NSGA-II, with the global, "
                    "MSDNet, random and grid baselines drawn for comparison), pick one point, report it on test, "
                    "and write results/<run>/ (thresholds.json, pareto.csv, summary.json, pareto.png, exits.png). "
                    "Accuracies are fractions (0.78); --max-drop is in percentage points (0.5 = half a point).",
        examples="tradeoff search --target-acc 0.78\n"
                 "tradeoff search --cache results/demo/cache.npz --max-drop 0.5 --out results/demo-drop\n"
                 "tradeoff search --budget-flops 300M --method grid\n"
                 "tradeoff search --target-acc 0.78 | head -3",
    )
    p.add_argument("--cache", help="cache file (default: the newest under results/cache/ or results/*/cache.npz, "
                                   "e.g. the demo's)")
    pick = p.add_mutually_exclusive_group()
    pick.add_argument("--target-acc", type=float, help="cheapest point with val accuracy >= this fraction in (0, 1], e.g. 0.78")
    pick.add_argument("--max-drop", type=float,
                      help="cheapest point with val accuracy within this many percentage points of the deepest exit "
                           "(0.5 = half a point, i.e. 0.005 of accuracy)")
    pick.add_argument("--budget-flops", type=si_number,
                      help="most accurate point costing at most this many FLOPs per sample (fvcore count; 3e8 or 300M)")
    pick.add_argument("--budget-ms", type=float, help="most accurate point within this many ms per sample (--cost latency)")
    p.add_argument("--cost", default="flops", choices=("flops", "latency"),
                   help="what the search minimises: fvcore FLOPs (default) or ms per sample from --latency")
    p.add_argument("--latency", help="device latency profile (latency.json from `tradeoff profile`); with --cost flops "
                                     "the chosen point is also priced in ms")
    p.add_argument("--batch-size", type=int, default=1, help="serving batch size the latency profile prices (default 1)")
    p.add_argument("--delta", type=float, help="guarantee the --target-acc / --max-drop pick: P(accuracy on new data "
                                               ">= target) >= 1 - DELTA (Learn-then-Test on 70%% of val), e.g. 0.1")
    p.add_argument("--method", default="nsga", help="nsga | global | msdnet | random | grid (all are drawn)")
    p.add_argument("--confidence", default="maxprob", choices=("maxprob", "margin", "entropy", "patience"),
                   help="how sure an exit is: top softmax probability, top-1 minus top-2, 1 - normalised entropy, "
                        "or patience (run of equal predictions ending at the exit / K, PABEE) (default maxprob)")
    p.add_argument("--fallback", default="deepest", choices=("deepest", "ensemble", "most-confident"),
                   help="who answers a sample no exit accepted: the deepest exit (default), the mean of all exits' "
                        "logits (SCAN; thresholds every exit) or the most confident exit (SDN)")
    p.add_argument("--per-class", action="store_true",
                   help="also search one threshold per exit and predicted class (shrunk toward the exit's own); "
                        "the pick is made on that front, the per-exit front is kept beside it")
    p.add_argument("--ensemble", action="store_true", help="exit k answers with the mean softmax of exits 1..k")
    p.add_argument("--calibrate", action="store_true", help="fit per-exit temperatures on val")
    p.add_argument("--pop", type=si_int, default=100, help="NSGA-II population size (>= 4; default 100)")
    p.add_argument("--gens", type=si_int, default=100, help="NSGA-II generations (>= 1; default 100)")
    p.add_argument("--seed", type=int, default=0, help="seed of the search, random search and bootstrap (default 0)")
    p.add_argument("--restarts", type=int, default=1, help="independently seeded NSGA-II runs, fronts merged")
    p.add_argument("--jobs", type=int, default=1, help="processes for --restarts (results do not depend on it)")
    p.add_argument("--out", help="results directory (default: results/<cache-stem>-<pick>, e.g. results/x-acc0.78)")
    p.add_argument("--no-plots", action="store_true", help="skip pareto.png and exits.png (redraw later: tradeoff plot)")
    p.set_defaults(func=run)


def run(args) -> int:
    """`tradeoff search`: pick the cache, search, write the run directory, print a summary."""
    from tradeoff.cache.format import load_cache
    from tradeoff.report import documents as report
    from tradeoff.report import rundir
    from tradeoff.search.run import run_search
    from tradeoff.search.settings import Pick, check_delta_pick

    pick = Pick.from_options(target_acc=args.target_acc, max_drop=args.max_drop, budget_flops=args.budget_flops,
                             budget_ms=args.budget_ms)
    check_delta_pick(pick, args.delta)
    if args.max_drop is not None and 0 < args.max_drop < MAX_DROP_WARN_BELOW:
        warn("search", f"--max-drop {args.max_drop:g} is in percentage points: {args.max_drop:g} points = "
                       f"{args.max_drop / 100:g} of accuracy; for half a point give --max-drop 0.5")
    cost = getattr(args, "cost", "flops")
    if cost == "latency" and not args.latency:
        raise ValueError("--cost latency needs --latency latency.json (make it with `tradeoff profile --ckpt MODEL "
                         "--out latency.json` on the target device)")
    profile = None
    if args.latency:
        from tradeoff.policy.latency import read_latency_profile

        profile = read_latency_profile(args.latency, batch_size=args.batch_size)
    if args.cache:
        cache_path = Path(args.cache)
    else:
        cache_path, count = newest_cache()
        print(f"using cache {cache_path} (newest of {count})")
    if not cache_path.is_file():
        raise FileNotFoundError(f"--cache {cache_path} does not exist; run `tradeoff cache` or pass an existing cache")
    out = Path(args.out) if args.out else default_run_dir(cache_path, pick.label)
    expect = prepare_output(out, directory=True)
    replaced = _run_cache(out)
    t0 = time.perf_counter()
    cache = load_cache(cache_path)
    load_seconds = time.perf_counter() - t0
    result = run_search(
        cache,
        pick=pick,
        method=args.method,
        confidence=args.confidence,
        ensemble=args.ensemble,
        calibrate=args.calibrate,
        fallback=args.fallback,
        per_class=args.per_class,
        pop=args.pop,
        gens=args.gens,
        seed=args.seed,
        restarts=args.restarts,
        jobs=args.jobs,
        cache_path=cache_path,
        delta=args.delta,
        latency_profile=profile,
        batch_size=args.batch_size,
        cost=cost,
    )
    result = replace(result, timings={"load": load_seconds, **result.timings})
    extra = []
    if not getattr(args, "no_plots", False):
        from tradeoff.report import plots

        extra.append(lambda run_dir: plots.save_plots(plots.pareto_plot_data(result), plots.exits_plot_data(result), run_dir))
    from tradeoff.report import html as report_html

    extra.append(lambda run_dir: report_html.write_report(run_dir, cache_path=cache_path, lock=False))
    rundir.write_run(out, result, extra=extra, expect=expect)
    print(report.summary_text(result))
    written = ", ".join([rundir.THRESHOLDS_FILE, rundir.PARETO_FILE, rundir.SUMMARY_FILE]
                        + ([] if len(extra) == 1 else ["pareto.png", "exits.png"]) + [report_html.REPORT_FILE])
    print(f"\nwrote {out}/ ({written})")
    if replaced is not None and Path(replaced).resolve() != cache_path.resolve():
        print(f"note: this replaced the run that was in {out}/, searched on another cache ({replaced})")
    sys.stdout.flush()
    return 0


def _run_cache(run_dir: Path) -> str | None:
    """The cache path recorded by the run in `run_dir` (absolute, or relative to the run), if any."""
    import json

    try:
        recorded = json.loads((run_dir / "thresholds.json").read_text(encoding="utf-8")).get("cache")
    except (OSError, ValueError, AttributeError):
        return None
    return str(run_dir / recorded) if isinstance(recorded, str) else None

"""`tradeoff import`: a cache from the user's own logits arrays."""

from __future__ import annotations

import sys
from pathlib import Path


def add_parser(sub) -> None:
    from tradeoff.commands.common import add_command

    p = add_command(
        sub, "import", help="build a cache from your own logits arrays (any framework)",
        description="Build a cache from arrays your own framework computed: each exit's logits (or probabilities, "
                    "e.g. scikit-learn's predict_proba: rows summing to 1 are detected and cached as their log, "
                    "with a notice), the labels, optionally the val/test split, and each exit's cumulative cost.",
        examples="tradeoff import logits.npy --labels labels.npy --flops 1e6,3e6,9e6 --out results/cache/mine.npz\n"
                 "tradeoff import p1.npy p2.npy p3.npy --probabilities --labels y.npy --flops costs.json --out c.npz",
    )
    p.add_argument("logits", nargs="+", help="one (K, N, C) .npy/.pt file, or one (N, C) file per exit, shallow -> deep: "
                                            "logits, or probabilities (rows summing to 1, e.g. predict_proba)")
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--probabilities", dest="kind", action="store_const", const="probabilities",
                      help="the arrays are probabilities (e.g. scikit-learn predict_proba): cached as their log, "
                           "so the thresholds found apply to predict_proba(...).max(1)")
    kind.add_argument("--logits", dest="kind", action="store_const", const="logits",
                      help="the arrays are logits: take them as they are, even if rows happen to sum to 1")
    p.set_defaults(kind="auto")
    p.add_argument("--labels", required=True, help=".npy/.pt file of N integer labels")
    p.add_argument("--split", help=".npy file of N strings 'val'/'test' (default: fixed seeded half/half)")
    p.add_argument("--flops", required=True, help="per-exit cumulative costs: comma-separated numbers or a JSON file")
    p.add_argument("--baseline-flops", type=float, help="cost of the original single-exit network (default: last exit's)")
    p.add_argument("--out", required=True, help="cache file to write (.npz)")
    p.add_argument("--trust-checkpoint", action="store_true", help="allow unpickling .pt files you trust")
    p.set_defaults(func=run)


def run(args) -> int:
    """`tradeoff import`: write a cache from the user's arrays and show each exit's figures."""
    from tradeoff.cache.format import write_cache
    from tradeoff.cache.importer import exit_summary_table, import_cache, is_cache_file, parse_flops

    flops, file_baseline = parse_flops(args.flops)
    baseline = args.baseline_flops if args.baseline_flops is not None else file_baseline
    out = Path(args.out)
    inputs = [Path(p) for p in [*args.logits, args.labels, *([args.split] if args.split else [])]]
    if out.exists() and any(out.resolve() == p.resolve() for p in inputs if p.exists()):
        raise ValueError(f"--out {out} is one of the input files; choose another output path")
    if out.exists() and not is_cache_file(out):
        raise ValueError(f"--out {out} exists and is not a tradeoff cache; delete it or choose another output path")
    from tradeoff.commands.common import prepare_output

    expect = prepare_output(out)
    cache = import_cache(args.logits, args.labels, split=args.split, flops=flops, baseline_flops=baseline,
                         trust=args.trust_checkpoint, kind=args.kind, log=lambda line: print(line, file=sys.stderr))
    write_cache(out, cache, expect=expect)
    print(exit_summary_table(cache))
    print(f"wrote {out}")
    return 0

"""`tradeoff evaluate`: score given thresholds on a cache (no search); print and write the figures."""

from __future__ import annotations

from tradeoff.commands.common import add_command

from pathlib import Path


def add_parser(sub) -> None:
    p = add_command(
        sub, "evaluate", help="score given thresholds on a cache (val, test, all); no search",
        description="Score thresholds you already have (a run's thresholds.json, or a paper's published ones) on a cache, without searching: accuracy, mean FLOPs, speed-up and where the samples leave, for the val, test and all rows, under any exit rule (--fallback, --confidence). With --speedup-convention scan it also shows SCAN's official constant-ratio speed-up, labelled as such.",
        examples='tradeoff evaluate --cache results/demo/cache.npz --thresholds results/demo/thresholds.json\ntradeoff evaluate --cache scan18.npz --thresholds 0.98,0.97,0.98,0.95 --fallback ensemble --speedup-convention scan\ntradeoff evaluate --cache results/demo/cache.npz --thresholds 0.9,off --json eval.json',
    )
    p.add_argument("--cache", required=True, help="cache file (.npz) written by `tradeoff cache` or `tradeoff import`")
    p.add_argument("--thresholds", required=True,
                   help="a thresholds.json, or numbers separated by commas with `off` for a switched-off exit "
                        "(K-1 under --fallback deepest, K under ensemble / most-confident), e.g. 0.98,0.97,off")
    p.add_argument("--fallback", choices=("deepest", "ensemble", "most-confident"),
                   help="who answers a sample no exit accepted (default: the file's, else deepest)")
    p.add_argument("--confidence", choices=("maxprob", "margin", "entropy", "patience"),
                   help="confidence measure (default: the file's, else maxprob)")
    p.add_argument("--ensemble", action="store_true", help="exit k answers with the mean softmax of exits 1..k")
    p.add_argument("--speedup-convention", default="fvcore", choices=("fvcore", "scan"),
                   help="scan: also report SCAN's official constant-ratio speed-up (labelled; it leaves out the "
                        "earlier heads and every attention module)")
    p.add_argument("--scan-ratios", help="K+1 cost ratios for --speedup-convention scan (default SCAN's ResNet18: "
                                         "0.32,0.53,0.76,1.0,1.07)")
    p.add_argument("--json", help="also write the rows to this JSON file")
    p.set_defaults(func=run)


def run(args) -> int:
    from tradeoff.cache.format import load_cache
    from tradeoff.fileio import write_json_atomic
    from tradeoff.policy.rule import ExitRule, parse_thresholds, threshold_text
    from tradeoff.policy.rule_file import read_rule
    from tradeoff.report.tables import format_table
    from tradeoff.report.evaluation import evaluate_rule

    if args.json:
        _check_writable(Path(args.json))
    cache = load_cache(args.cache)
    text = args.thresholds
    if text.endswith(".json") or Path(text).is_file():
        rule = read_rule(text, num_exits=cache.num_exits).rule
        for flag, value, have in (("--fallback", args.fallback, rule.fallback), ("--confidence", args.confidence, rule.confidence)):
            if value is not None and value != have:
                raise ValueError(f"{flag} {value} disagrees with {text}, which was searched with {have}; "
                                 f"drop {flag} or pass the thresholds as numbers")
        source = str(text)
    else:
        rule = ExitRule(parse_thresholds(text), confidence=args.confidence or "maxprob", ensemble=args.ensemble,
                        fallback=args.fallback or "deepest")
        source = "command line"
    ratios = None
    if args.scan_ratios:
        try:
            ratios = [float(v) for v in args.scan_ratios.split(",")]
        except ValueError:
            raise ValueError(f"--scan-ratios must be numbers separated by commas; got {args.scan_ratios!r}") from None
    rows = evaluate_rule(cache, rule, speedup_convention=args.speedup_convention, scan_ratios=ratios)
    names = list(cache.exit_names)
    print(f"cache {args.cache}: {cache.num_exits} exits; thresholds from {source}: "
          + "  ".join(f"{names[k]} >= {threshold_text(t)}" for k, t in enumerate(rule.thresholds))
          + f"; fallback {rule.fallback}; confidence {rule.confidence}")
    scan = args.speedup_convention == "scan"
    headers = ["split", "samples", "accuracy", "MFLOPs", "speed-up (fvcore)"] + (["speed-up (SCAN formula)"] if scan else [])
    headers += [f"@{n}" for n in names] + ["fallback"]
    table = [
        [r.split, r.samples, f"{r.accuracy:.4f}", f"{r.flops / 1e6:.4g}", f"{r.speedup:.3f}x"]
        + ([f"{r.speedup_scan_formula:.3f}x"] if scan else [])
        + [f"{100 * f:.1f}%" for f in r.exit_fractions] + [f"{100 * r.fallback_fraction:.1f}%"]
        for r in rows
    ]
    print(format_table(table, headers))
    if scan:
        print("SCAN formula: the official script's constant cost ratios; they leave out the earlier exits' heads and "
              "every attention module, so they overstate the speed-up - the fvcore column counts every FLOP paid")
    if args.json:
        write_json_atomic(Path(args.json), {
            "cache": str(args.cache), "thresholds_source": source, **rule.document(),
            "speedup_convention": args.speedup_convention, "rows": [r.as_dict() for r in rows],
        })
        print(f"wrote {args.json}")
    return 0


def _check_writable(path: Path) -> None:
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise ValueError(f"--json {path} is a directory; give a file name")
    if not parent.is_dir():
        raise FileNotFoundError(f"--json {path}: the folder {parent} does not exist; create it or choose another path")

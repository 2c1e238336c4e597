"""`python -m benchmarks --out results/bench [--quick] [--only NAME ...]`: run every benchmark.

Discovers `benchmarks/bench_*.py`, runs each module's `run(quick)`, checks its rows
(`benchmarks.check_row`), and writes `results.csv`, `results.json` and a Markdown table
`results.md` to `--out` (each atomically), then prints the table. A missed goal is a
result, not a failure: the exit code is 0 and the table says MISSED. A benchmark that
raises is a failure: the others still run, the table lists the crash, the exit code is 1.
"""

from __future__ import annotations

import argparse
import csv
import importlib
import io
import math
import sys
import time
import traceback
from pathlib import Path

from benchmarks import ROW_KEYS, check_row
from tradeoff.fileio import write_json_atomic, write_text_atomic

PACKAGE_DIR = Path(__file__).resolve().parent


def discover() -> list[str]:
    """Names (without the `bench_` prefix) of every benchmark module, sorted."""
    return sorted(p.stem[len("bench_"):] for p in PACKAGE_DIR.glob("bench_*.py"))


def select(names: list[str], only: list[str] | None) -> list[str]:
    """The benchmarks to run; `only` entries may be given with or without `bench_`.

    Raises:
        ValueError: an `--only` name that matches no module (listing the known ones).
    """
    if not only:
        return names
    wanted = [n[len("bench_"):] if n.startswith("bench_") else n for n in only]
    unknown = [n for n in wanted if n not in names]
    if unknown:
        raise ValueError(f"--only {', '.join(unknown)}: no such benchmark; known: {', '.join(names) or 'none'}")
    return [n for n in names if n in wanted]


def run_one(name: str, quick: bool) -> tuple[list[dict], str | None, float]:
    """(rows, error or None, seconds) of one module; an exception becomes the error text."""
    start = time.perf_counter()
    try:
        module = importlib.import_module(f"benchmarks.bench_{name}")
        rows = module.run(quick=quick)
        if not isinstance(rows, list) or not rows:
            raise TypeError(f"bench_{name}.run() must return a non-empty list of row dicts; got {rows!r:.80}")
        rows = [check_row(row, f"bench_{name}") for row in rows]
        return rows, None, time.perf_counter() - start
    except Exception as exc:  # noqa: BLE001 - a crashing benchmark must not stop the others
        traceback.print_exc(file=sys.stderr)
        line = " ".join(f"{type(exc).__name__}: {exc}".split())
        return [], line[:300], time.perf_counter() - start


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isinf(value):
            return "inf"
        return f"{value:.4g}"
    return str(value)


def _verdict(passed) -> str:
    return {True: "PASS", False: "MISSED", None: "-"}[passed]


def markdown(rows: list[dict], crashed: dict[str, str], *, quick: bool) -> str:
    """The Markdown report: one table of rows, then the tally and any crashes."""
    head = ["benchmark", "metric", "value", "baseline", "ratio", "goal", "result", "notes"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for r in rows:
        cells = [r["benchmark"], r["metric"], _fmt(r["value"]), _fmt(r["baseline"]), _fmt(r["ratio"]),
                 r["goal"] or "-", _verdict(r["passed"]), r["notes"] or ""]
        lines.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    judged = [r for r in rows if r["passed"] is not None]
    met = sum(r["passed"] for r in judged)
    tally = f"{met} of {len(judged)} goals met"
    if len(judged) - met:
        tally += f", {len(judged) - met} MISSED"
    if crashed:
        tally += f", {len(crashed)} benchmark(s) CRASHED"
    out = ["# Benchmarks" + (" (quick smoke run: nothing judged)" if quick else ""), "", *lines, "", tally + "."]
    for name, error in crashed.items():
        out.append(f"- bench_{name} crashed: {error}")
    return "\n".join(out) + "\n"


def csv_text(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(ROW_KEYS), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row[k] is None else row[k] for k in ROW_KEYS})
    return buffer.getvalue()


def _json_safe(rows: list[dict]) -> list[dict]:
    """inf (e.g. an infinite speed-up) as a string, so the file stays strict JSON."""
    return [{k: (str(v) if isinstance(v, float) and math.isinf(v) else v) for k, v in row.items()} for row in rows]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/bench", help="directory for results.{csv,json,md}")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, a smoke run: nothing is judged")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these benchmarks (e.g. runtime search)")
    args = parser.parse_args(argv)
    try:
        names = select(discover(), args.only)
    except ValueError as exc:
        print(f"benchmarks: error: {exc}", file=sys.stderr)
        return 2
    rows: list[dict] = []
    crashed: dict[str, str] = {}
    seconds: dict[str, float] = {}
    for name in names:
        print(f"benchmarks: running bench_{name}{' (quick)' if args.quick else ''} ...", file=sys.stderr, flush=True)
        got, error, took = run_one(name, args.quick)
        rows += got
        seconds[name] = round(took, 3)
        if error is not None:
            crashed[name] = error
            print(f"benchmarks: bench_{name} CRASHED: {error}", file=sys.stderr)
    out = Path(args.out)
    table = markdown(rows, crashed, quick=args.quick)
    write_text_atomic(out / "results.csv", csv_text(rows))
    write_json_atomic(out / "results.json", {"quick": args.quick, "benchmarks": names, "seconds": seconds,
                                             "crashed": crashed, "rows": _json_safe(rows)})
    write_text_atomic(out / "results.md", table)
    print(table, end="")
    print(f"wrote {out / 'results.md'}, results.csv, results.json", file=sys.stderr)
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())

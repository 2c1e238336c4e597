"""`make bench`: speed and quality of `tradeoff` against its peers, as ratios from one run.

Every `benchmarks/bench_<name>.py` exposes `run(quick: bool = False) -> list[dict]`, each
row (common.md):

    {"benchmark": str, "metric": str, "value": float, "baseline": float | None,
     "ratio": float | None, "goal": str, "passed": bool | None, "notes": str}

`passed` is None when nothing is judged (quick runs, informational rows). `quick=True`
must finish in a few seconds: the smoke test (`tests/test_benchmarks_smoke.py`) runs
every module that way and checks the rows, never the timings. A module that truly
cannot run quickly says so in its own file with a module-level string
`QUICK_UNSUPPORTED = "why"`; nothing else is skipped.

`python -m benchmarks --out results/bench [--quick] [--only NAME]` runs them all (see
`benchmarks/__main__.py`). Timings share the machine with other work, so benchmarks
compare the two sides of a ratio interleaved and repeated, and report medians
(`interleaved_medians`).
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Callable

ROW_KEYS = ("benchmark", "metric", "value", "baseline", "ratio", "goal", "passed", "notes")


def make_row(benchmark: str, metric: str, value: float, *, baseline: float | None = None, ratio: float | None = None,
             goal: str = "", passed: bool | None = None, notes: str = "") -> dict:
    """One result row; `ratio` defaults to value / baseline when a baseline is given."""
    if ratio is None and baseline not in (None, 0):
        ratio = float(value) / float(baseline)
    return {
        "benchmark": benchmark,
        "metric": metric,
        "value": float(value),
        "baseline": None if baseline is None else float(baseline),
        "ratio": None if ratio is None else float(ratio),
        "goal": goal,
        "passed": None if passed is None else bool(passed),
        "notes": notes,
    }


def check_row(row, source: str = "benchmark") -> dict:
    """Validate one row's keys and types; returns it unchanged.

    Raises:
        TypeError: a row that is not a dict, a missing/extra key, or a value of the wrong type.
    """
    if not isinstance(row, dict):
        raise TypeError(f"{source}: each row must be a dict; got {type(row).__name__}")
    missing = [k for k in ROW_KEYS if k not in row]
    extra = sorted(set(row) - set(ROW_KEYS))
    if missing or extra:
        raise TypeError(f"{source}: row keys must be exactly {', '.join(ROW_KEYS)}; missing {missing}, extra {extra}")
    for key in ("benchmark", "metric", "goal", "notes"):
        if not isinstance(row[key], str):
            raise TypeError(f"{source}: row[{key!r}] must be a str; got {type(row[key]).__name__} ({row[key]!r})")
    for key, optional in (("value", False), ("baseline", True), ("ratio", True)):
        value = row[key]
        if value is None and optional:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(float(value)):
            kind = "a number or None" if optional else "a number"
            raise TypeError(f"{source}: row[{key!r}] of {row['metric']!r} must be {kind} (not NaN); got {value!r}")
    if row["passed"] is not None and not isinstance(row["passed"], bool):
        raise TypeError(f"{source}: row['passed'] must be True, False or None; got {row['passed']!r}")
    return row


def interleaved_medians(fns: dict[str, Callable[[], object]], *, repeats: int = 5, warmup: int = 1) -> dict[str, list[float]]:
    """Wall seconds of each callable, taking turns (order reversed every round).

    Returns:
        name -> list of `repeats` timings in seconds (take `statistics.median`).
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for r in range(repeats):
        for name in names if r % 2 == 0 else reversed(names):
            start = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - start)
    return times


def median(values) -> float:
    return float(statistics.median(values))

"""Large caches: peak memory and time of `tradeoff search` as the cache grows to 10^6 samples.

Caches of N = 10^4, 10^5, 10^6 samples (8 exits, 10 classes, float32 logits: 320 MB at
10^6; `tradeoff.cache.synthetic.synthetic_cache`) are written to a temporary directory and
searched with the default settings (`tradeoff search --cache FILE --no-plots`: NSGA-II
pop 100 x gens 100 plus every baseline, bootstrap on test) in a fresh process each. The
child's peak resident memory is its VmHWM, polled from /proc every 10 ms (ru_maxrss from
`os.wait4` is kept in the notes; it can include the parent's size at fork, which is why
the caches are generated in a child process too); its time is what it records in summary.json (`load` + `total`: reading
and validating the cache, every search, scoring test), so interpreter start-up and the
report files are left out. The sizes take turns (rounds x sizes, medians), as other work
shares the machine.

Goals (issue 6): peak RSS < 4 GB at 10^6, and time growing no worse than linearly:
the least-squares slope of log(time) against log(N) <= 1.1. `quick=True`: 10^3 and 10^4,
one round, nothing judged.
"""

from __future__ import annotations

import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import make_row

BENCH = "large_cache"
EXIT_ACCURACIES = (0.50, 0.60, 0.66, 0.71, 0.75, 0.78, 0.80, 0.81)
NUM_CLASSES = 10
RSS_GOAL_MB = 4096.0
SLOPE_GOAL = 1.1
REPO = Path(__file__).resolve().parents[1]
_ENV = dict(os.environ, PYTHONPATH=str(REPO), TQDM_DISABLE="1", MPLBACKEND="Agg")


def search_process(cache: Path, out: Path) -> dict:
    """Run `tradeoff search` on `cache` in a child process; its peak RSS (MB), wall and stage seconds.

    Raises:
        RuntimeError: the search failed (its last output lines are included).
    """
    log = out.with_suffix(".log")
    start = time.perf_counter()
    with open(log, "w") as handle:
        proc = subprocess.Popen([sys.executable, "-m", "tradeoff", "search", "--cache", str(cache), "--out", str(out),
                                 "--no-plots"], env=_ENV, stdout=handle, stderr=subprocess.STDOUT)
        peak_kb = _poll_peak_kb(proc.pid)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage, not all children's
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        tail = " | ".join(log.read_text().strip().splitlines()[-3:])
        raise RuntimeError(f"tradeoff search on {cache.name} exited {proc.returncode}: {tail}")
    timings = json.loads((out / "summary.json").read_text())["timings_seconds"]
    # ru_maxrss survives exec, so it can include the parent's size at fork; the polled VmHWM
    # (reset at exec) is the child's own. Without /proc, ru_maxrss it is.
    rss_kb = peak_kb or usage.ru_maxrss
    return {"rss_mb": rss_kb / 1024.0, "maxrss_mb": usage.ru_maxrss / 1024.0, "wall": wall,
            "seconds": timings["load"] + timings["total"], "stages": timings}


def _poll_peak_kb(pid: int, interval: float = 0.01) -> int:
    """The process's VmHWM (peak resident set, kB) read from /proc until it exits; 0 without /proc."""
    status = Path(f"/proc/{pid}/status")
    peak = 0
    while True:
        try:
            text = status.read_text()
        except OSError:
            return peak
        match = re.search(r"^VmHWM:\s+(\d+) kB", text, re.M)
        if match is None:  # a zombie: it has exited
            return peak
        peak = max(peak, int(match.group(1)))
        time.sleep(interval)


def write_synthetic(path: Path, num_samples: int) -> Path:
    """Generate and write the cache in a child process, so this one stays small (see above)."""
    code = (
        "import sys; from tradeoff.cache.format import write_cache; from tradeoff.cache.synthetic import synthetic_cache; "
        f"write_cache(sys.argv[1], synthetic_cache({num_samples}, {NUM_CLASSES}, {EXIT_ACCURACIES!r}, seed=0))"
    )
    done = subprocess.run([sys.executable, "-c", code, str(path)], env=_ENV, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"generating the N={num_samples} cache failed: {done.stderr.strip().splitlines()[-1:]}")
    return path


def loglog_slope(sizes, seconds) -> float:
    """Least-squares slope of log(seconds) against log(size): 1 = linear growth."""
    x, y = np.log(np.asarray(sizes, float)), np.log(np.asarray(seconds, float))
    return float(np.polyfit(x, y, 1)[0])


def run(quick: bool = False) -> list[dict]:
    sizes = (10**3, 10**4) if quick else (10**4, 10**5, 10**6)
    rounds = 1 if quick else 3
    judge = (lambda ok: None) if quick else bool
    results: dict[int, list[dict]] = {n: [] for n in sizes}
    file_mb = {}
    with tempfile.TemporaryDirectory(prefix="bench-large-") as tmp:
        tmp = Path(tmp)
        paths = {}
        for n in sizes:
            paths[n] = write_synthetic(tmp / f"n{n}.npz", n)
            file_mb[n] = paths[n].stat().st_size / 2**20
        for r in range(rounds):
            for n in (sizes if r % 2 == 0 else sizes[::-1]):
                results[n].append(search_process(paths[n], tmp / f"run-n{n}-r{r}"))

    seconds = {n: statistics.median(x["seconds"] for x in results[n]) for n in sizes}
    rss = {n: max(x["rss_mb"] for x in results[n]) for n in sizes}
    slope = loglog_slope(sizes, [seconds[n] for n in sizes])
    last = math.log(seconds[sizes[-1]] / seconds[sizes[-2]]) / math.log(sizes[-1] / sizes[-2])
    biggest = sizes[-1]
    logits_mb = len(EXIT_ACCURACIES) * biggest * NUM_CLASSES * 4 / 2**20

    rows = [make_row(
        BENCH, f"peak RSS of tradeoff search, N={biggest:.0e} (MB)", rss[biggest],
        baseline=logits_mb, goal=f"< {RSS_GOAL_MB:.0f} MB", passed=judge(rss[biggest] < RSS_GOAL_MB),
        notes=f"baseline = the (K, N, C) float32 logits alone ({logits_mb:.0f} MB); cache file "
              f"{file_mb[biggest]:.0f} MB; K={len(EXIT_ACCURACIES)}, C={NUM_CLASSES}; the child's VmHWM "
              f"(ru_maxrss {max(x['maxrss_mb'] for x in results[biggest]):.0f} MB)",
    )]
    for n in sizes:
        stages = statistics.median_low([x["stages"]["total"] for x in results[n]])
        run_ = next(x for x in results[n] if x["stages"]["total"] == stages)
        detail = ", ".join(f"{k} {v:.2f}" for k, v in run_["stages"].items() if k != "total")
        rows.append(make_row(
            BENCH, f"search seconds, N={n:.0e}", seconds[n],
            notes=f"median of {rounds}; load + search + test scoring, start-up excluded (wall "
                  f"{statistics.median(x['wall'] for x in results[n]):.2f} s); stages: {detail}; peak RSS {rss[n]:.0f} MB",
        ))
    rows.append(make_row(
        BENCH, "time growth exponent (log-log slope over N)", slope, goal=f"<= {SLOPE_GOAL}",
        passed=judge(slope <= SLOPE_GOAL),
        notes=f"least squares over N = {', '.join(f'{n:.0e}' for n in sizes)}; 1 = linear",
    ))
    rows.append(make_row(
        BENCH, f"time growth exponent, N={sizes[-2]:.0e} -> {sizes[-1]:.0e}", last,
        notes="the last step alone, where fixed costs matter least",
    ))
    return rows


if __name__ == "__main__":  # pragma: no cover
    for row in run(quick="--quick" in sys.argv):
        print(row)

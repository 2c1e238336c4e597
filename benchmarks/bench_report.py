"""report.html for a 10^4-point front: its size, and the time to gather and write it.

A synthetic 4-exit cache (N = 10,000) is searched briefly, then its run directory's NSGA-II
front is replaced by a 10^4-point front made of real threshold vectors scored on the same
cache (so `gather_report`'s cross-check against the cache holds), and `write_report`
builds the page. Reported: the file size (plotly.js inline is most of it; the drawn points
are thinned to `report_figures.MAX_POINTS` per trace, the data is not) and the build time.
Goal: the page stays under 8 MB, so it opens quickly and can be mailed.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import make_row
from tradeoff.report import rundir
from tradeoff.report import html as report_html
from tradeoff.report import html_figures as report_figures
from tradeoff.cache.format import load_cache, write_cache
from tradeoff.policy.scoring import score_thresholds
from tradeoff.policy.table import exit_table
from tradeoff.search.run import run_search
from tradeoff.search.settings import Pick
from tradeoff.cache.synthetic import synthetic_cache

GOAL_MB = 8.0


def _big_front(run: Path, cache_path: Path, points: int, seed: int = 0) -> None:
    """Rewrite the run's NSGA-II front (summary.json and pareto.csv) with `points` scored rows."""
    cache = load_cache(cache_path)
    tables = {s: exit_table(cache.select(s).logits, cache.select(s).labels, cache.flops) for s in ("val", "test")}
    t = np.sort(np.random.default_rng(seed).uniform(0.3, 1.0, (points, cache.num_exits - 1)), axis=0)
    val, test = score_thresholds(tables["val"], t), score_thresholds(tables["test"], t)
    order = np.argsort(val.flops, kind="stable")
    summary = json.loads((run / rundir.SUMMARY_FILE).read_text())
    front = next(f for f in summary["fronts"] if f["method"] == "nsga")
    front.update(size=points, thresholds=t[order].tolist(), val_accuracy=val.accuracy[order].tolist(),
                 val_flops=val.flops[order].tolist(), test_accuracy=test.accuracy[order].tolist(),
                 test_flops=test.flops[order].tolist())
    (run / rundir.SUMMARY_FILE).write_text(json.dumps(summary))
    names = summary["cache"]["exit_names"]
    head = [f"t{k + 1}" for k in range(len(names) - 1)] + ["val_accuracy", "test_accuracy", "flops", "mflops",
                                                           "speedup", "test_flops"] + [f"val_frac_{n}" for n in names]
    rows = [",".join(head)]
    base = float(summary["cache"]["baseline_flops"])
    for i in order:
        values = [*t[i], val.accuracy[i], test.accuracy[i], val.flops[i], val.flops[i] / 1e6, base / val.flops[i],
                  test.flops[i], *val.exit_fractions[i]]
        rows.append(",".join(repr(float(v)) for v in values))
    (run / rundir.PARETO_FILE).write_text("\n".join(rows) + "\n")


def run(quick: bool = False) -> list[dict]:
    points, n = (300, 1_000) if quick else (10_000, 10_000)
    with tempfile.TemporaryDirectory(prefix="bench-report-") as tmp:
        tmp = Path(tmp)
        cache_path = tmp / "cache.npz"
        write_cache(cache_path, synthetic_cache(num_samples=n, num_classes=100, seed=0))
        result = run_search(load_cache(cache_path), pick=Pick("target_acc", 0.75), pop=12, gens=3, seed=0,
                            cache_path=cache_path)
        run_dir = rundir.write_run(tmp / "run", result)
        _big_front(run_dir, cache_path, points)
        start = time.perf_counter()
        page = report_html.write_report(run_dir)
        seconds = time.perf_counter() - start
        size_mb = page.stat().st_size / 1e6
        drawn = len(report_figures.pareto_figure(report_html.gather_report(run_dir)).data[0].x)
    return [
        make_row("report", f"report.html size (MB), {points}-point front, K=4", size_mb, goal=f"<= {GOAL_MB} MB",
                 passed=None if quick else size_mb <= GOAL_MB,
                 notes=f"plotly.js inline (no CDN); {drawn} of {points} front points drawn, all in the CSV"
                       + (" (quick: small front)" if quick else "")),
        make_row("report", f"report.html build time (s), {points}-point front, N={n}", seconds,
                 notes="gather (cache re-scored for exit shares) + draw + atomic write; not judged"),
    ]


if __name__ == "__main__":  # pragma: no cover
    for row in run():
        print(row)

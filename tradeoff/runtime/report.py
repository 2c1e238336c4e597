"""One real early-exit run over a data split: its answers, exits, costs and timing; `tradeoff run`'s record and tables."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from tradeoff.runtime.early_exit import EarlyExitModel
from tradeoff.runtime.timing import Latency, measure_latency, run_early_exit


@dataclass(frozen=True)
class RuntimeReport:
    """One real early-exit run over a data split: what it got, where samples left, how fast.

    Attributes:
        accuracy: fraction of samples answered correctly by the early-exit runner.
        exit_fractions: (K,) fraction of samples leaving at each exit; sums to 1.
        exits: (N,) int64 exit of each sample; predictions: (N,) int64 its answer.
        flops: (K,) cumulative cost of leaving at exit k (fvcore count, `exit_costs`).
        baseline_flops: the original single-exit network's cost (fvcore count).
        latency: the side-by-side timing (`Latency`), or None when not timed.
    """

    accuracy: float
    exit_fractions: np.ndarray
    exits: np.ndarray
    predictions: np.ndarray
    flops: np.ndarray
    baseline_flops: float
    latency: Latency | None

    @property
    def mean_flops(self) -> float:
        """Mean cost per sample of the exits actually taken (fvcore count)."""
        return float(self.exit_fractions @ self.flops)

    @property
    def predicted_speedup(self) -> float:
        """What the FLOPs promise: baseline_flops / mean cost of the exits taken."""
        return self.baseline_flops / self.mean_flops

    @property
    def measured_speedup(self) -> float | None:
        return None if self.latency is None else self.latency.measured_speedup

    @property
    def realised_fraction(self) -> float | None:
        """measured / predicted speed-up: how much of the FLOPs promise survives in seconds."""
        return None if self.latency is None else self.measured_speedup / self.predicted_speedup


def evaluate_runtime(runner: EarlyExitModel, x, y, *, flops, baseline_flops: float, batch_size: int = 1,
                     repeats: int = 5, warmup: int = 1, tune_backend: bool = True,
                     progress: bool = False) -> RuntimeReport:
    """Run `runner` over (x, y) for its answers, then time it against the deepest exit.

    Args:
        runner: the early-exit model.
        x: (N, ...) inputs; y: (N,) int labels.
        flops: (K,) cumulative per-exit costs; baseline_flops: the single-exit network's.
        batch_size: samples per forward call, for both the answers and the timing.
        repeats: timed passes (median reported); 0 skips timing (latency None).
        warmup: untimed passes before timing.
        tune_backend: time each side on its faster convolution backend (`measure_latency`).
        progress: tqdm bars to stderr.
    """
    y = np.asarray(y, dtype=np.int64)
    x = torch.as_tensor(np.asarray(x, dtype=np.float32)) if not isinstance(x, torch.Tensor) else x
    if x.shape[0] != y.shape[0] or y.shape[0] == 0:
        raise ValueError(f"need as many labels as inputs, at least one; got {x.shape[0]} inputs, {y.shape[0]} labels")
    flops = np.asarray(flops, dtype=np.float64)
    if flops.shape != (runner.num_exits,):
        raise ValueError(f"flops must have one cost per exit, shape ({runner.num_exits},); got {flops.shape}")
    predictions, exits = run_early_exit(runner, x, batch_size=batch_size)
    fractions = np.bincount(exits, minlength=runner.num_exits) / exits.size
    latency = None
    if repeats:
        latency = measure_latency(runner, x, batch_size=batch_size, repeats=repeats, warmup=warmup,
                                  tune_backend=tune_backend, progress=progress)
    return RuntimeReport(
        accuracy=float(np.mean(predictions == y)),
        exit_fractions=fractions,
        exits=exits,
        predictions=predictions,
        flops=flops,
        baseline_flops=float(baseline_flops),
        latency=latency,
    )


def report_document(report: RuntimeReport, **context) -> dict:
    """The JSON-safe record of a run (`tradeoff run --out`), plus `context` entries."""
    doc = {
        "accuracy": report.accuracy,
        "exit_fractions": [float(f) for f in report.exit_fractions],
        "exit_counts": np.bincount(report.exits, minlength=report.exit_fractions.size).tolist(),
        "num_samples": int(report.exits.size),
        "flops": [float(f) for f in report.flops],
        "mean_flops": report.mean_flops,
        "baseline_flops": report.baseline_flops,
        "predicted_speedup": report.predicted_speedup,
        "latency_ms": None,
        "baseline_latency_ms": None,
        "measured_speedup": None,
        "realised_fraction": None,
    }
    if report.latency is not None:
        lat = report.latency
        doc.update(
            latency_ms=lat.latency_ms,
            baseline_latency_ms=lat.baseline_latency_ms,
            measured_speedup=lat.measured_speedup,
            realised_fraction=report.realised_fraction,
            latency_passes_ms=list(lat.passes_ms),
            baseline_latency_passes_ms=list(lat.baseline_passes_ms),
            batch_size=lat.batch_size,
            mkldnn={"early_exit": lat.mkldnn, "baseline": lat.baseline_mkldnn},
        )
    doc.update(context)
    return doc


def report_table(report: RuntimeReport, thresholds, *, exit_names=None, search_test: dict | None = None) -> str:
    """Two terminal tables: where samples left, then accuracy / latency / speed-up.

    `thresholds`: an `ExitRule`'s entries (None = off, per-class rows) or a (K-1,) array."""
    from tradeoff.policy.rule import threshold_text
    from tradeoff.report.tables import format_table

    K = report.flops.size
    names = list(exit_names) if exit_names and len(exit_names) == K else [f"exit{k + 1}" for k in range(K)]
    counts = np.bincount(report.exits, minlength=K)
    expected = (search_test or {}).get("exit_fractions")
    expected = expected if isinstance(expected, list) and len(expected) == K else [None] * K
    rows = [
        (names[k], "-" if k >= len(thresholds) else threshold_text(thresholds[k]), int(counts[k]),
         float(report.exit_fractions[k]),
         expected[k], report.flops[k] / 1e6)
        for k in range(K)
    ]
    exits = format_table(rows, ("exit", "threshold", "samples", "fraction", "search (test)", "MFLOPs"),
                         title="where the samples left")
    lat = report.latency
    summary = [
        ("accuracy", report.accuracy, (search_test or {}).get("accuracy")),
        ("mean cost (MFLOPs)", report.mean_flops / 1e6, None),
        ("baseline cost (MFLOPs)", report.baseline_flops / 1e6, None),
        ("predicted speed-up (FLOPs)", report.predicted_speedup, (search_test or {}).get("speedup")),
    ]
    if lat is not None:
        summary += [
            (f"latency ms/sample (batch {lat.batch_size})", lat.latency_ms, None),
            ("baseline latency ms/sample", lat.baseline_latency_ms, None),
            ("measured speed-up", lat.measured_speedup, None),
            ("measured / predicted", report.realised_fraction, None),
            ("oneDNN (early exit / original)", f"{_on(lat.mkldnn)} / {_on(lat.baseline_mkldnn)}", None),
        ]
    return exits + "\n\n" + format_table(summary, ("", "this run", "search (test)"), float_format="{:.4g}")


def _on(flag: bool | None) -> str:
    return "n/a" if flag is None else "on" if flag else "off"

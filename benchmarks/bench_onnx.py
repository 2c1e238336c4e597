"""ONNX Runtime vs eager vs compiled PyTorch: the demo model's early exit at batch 1 and 64.

Same model and thresholds as `bench_runtime` (the demo's, else trained and searched there
once). The early-exit graph (`export_onnx.export_early_exit`: an `If` per exit, a `Scan`
over samples) and the original single-exit network are exported to ONNX and run with
ONNX Runtime's CPU provider on one thread, timed side by side (interleaved passes,
medians: `onnx_run.time_sessions`); the torch paths are timed with
`runtime.measure_latency` (eager, and frozen TorchScript with `compiled=True`), also on
one thread. Rows: ONNX Runtime's measured speed-up against the FLOPs-predicted one, and
its early-exit latency against the eager and compiled torch runners, per batch size,
plus the agreement of its exits with the exit rule on the demo's cache.

Nothing is judged: issue 16 sets no latency goal; the rows say what deployment through
ONNX Runtime buys. Batch 64 runs as 64 batch-1 paths inside the graph's `Scan` (see
export_onnx.py), so its per-sample time is about batch 1's.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from benchmarks import make_row
from benchmarks.bench_runtime import WORK_DIR, _setup
from tradeoff.data import load_data
from tradeoff.runtime.onnx_export import export_early_exit, export_original
from tradeoff.flops import exit_costs
from tradeoff.runtime.onnx_session import ort_session, run_session, time_sessions
from tradeoff.policy.rule import ExitRule
from tradeoff.policy.table import rule_decisions
from tradeoff.runtime.early_exit import EarlyExitModel
from tradeoff.runtime.timing import measure_latency

NAME = "onnx"
QUICK_UNSUPPORTED = "exporting the two ONNX graphs alone takes 10-30 s here; tests/test_export_onnx.py checks them"
SETTINGS = {1: (9, 1), 64: (15, 2)}  # batch size -> (repeats, warmup)


def run(quick: bool = False) -> list[dict]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _measure(quick)
    finally:
        torch.set_num_threads(threads)


def _measure(quick: bool) -> list[dict]:
    model, thresholds, policy, source, cached = _setup(quick, WORK_DIR)
    test = load_data("digits", splits=("test",))
    x = np.ascontiguousarray(test.x[:24] if quick else test.x, dtype=np.float32)
    y = test.y[: x.shape[0]]
    costs = exit_costs(model, test.input_shape)
    rule = ExitRule(thresholds, **policy)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-onnx-") as tmp:
        example = torch.from_numpy(x[:1].copy())
        early = ort_session(export_early_exit(model, rule, example_input=example,
                                              out_path=Path(tmp) / "early.onnx"))
        deep = ort_session(export_original(model, example_input=example, out_path=Path(tmp) / "original.onnx"))
        labels, exits, _ = run_session(early, x, batch_size=64)
        fractions = np.bincount(exits, minlength=costs.flops.size) / exits.size
        predicted = costs.baseline_flops / float(fractions @ costs.flops)
        note = (f"{source}; exits {', '.join(f'{f:.0%}' for f in fractions)}; accuracy {np.mean(labels == y):.4f}; "
                "one thread, shared machine")
        for batch_size, (repeats, warmup) in SETTINGS.items():
            repeats, warmup = (1, 0) if quick else (repeats, warmup)
            ort_ms = time_sessions({"early": early, "deep": deep}, x, batch_size=batch_size, repeats=repeats,
                                   warmup=warmup)
            measured = ort_ms["deep"][0] / ort_ms["early"][0]
            rows.append(make_row(NAME, f"onnxruntime measured / predicted speed-up, batch {batch_size}", measured,
                                 baseline=predicted, goal="report",
                                 notes=f"{ort_ms['early'][0]:.4f} vs {ort_ms['deep'][0]:.4f} ms/sample "
                                       f"(early exit vs original, both ONNX Runtime); {note}"))
            for compiled in (False, True):
                runner = EarlyExitModel(model, rule, compiled=compiled)
                lat = measure_latency(runner, torch.from_numpy(x), batch_size=batch_size, repeats=repeats,
                                      warmup=warmup)
                path = "compiled" if compiled else "eager"
                rows.append(make_row(NAME, f"early exit ms/sample, onnxruntime vs torch {path}, batch {batch_size}",
                                     ort_ms["early"][0], baseline=lat.latency_ms, goal="report",
                                     notes=f"torch {path}: measured speed-up {lat.measured_speedup:.2f}x "
                                           f"({lat.latency_ms:.4f} vs {lat.baseline_latency_ms:.4f} ms/sample)"))
    if cached is not None:
        from tradeoff.cache.format import load_cache

        cache = load_cache(cached[0]).select("test")
        want_exits, want_labels = rule_decisions(cache.logits, rule)
        rows.append(make_row(NAME, "onnxruntime exits equal to the cache's exit rule", float(np.mean(want_exits == exits)),
                             goal="report", notes=f"labels equal for {np.mean(want_labels == labels):.2%} of samples"))
    return rows

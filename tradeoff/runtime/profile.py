"""The device latency profile (`tradeoff profile`): every section, head and exit decision, timed.

Everything is timed through the runner's own code (`EarlyExitModel`): its sections and
heads (the compiled graphs with `compiled=True`), its exit decision (`_exit_one` at batch
1, `_exit_batch` beyond, thresholds at the batch's median confidence so that about half
the samples leave and the batch is re-indexed as in a real run), its whole forward with
every sample sent out at exit k ("path k"), and the original network (`deepest`).

Timing: after a warm-up, each item is called `inner` times per measurement (enough for
~`min_ms` of work, so the clock's resolution does not matter) and the per-call time is
kept; the items take turns, in alternating order, `repeats` times (interleaved, so a
burst of load from other processes hits every item alike), and the median is reported
with its spread (interquartile range / median). The fixed cost of one runner call
(entering it, building the answer) is what the measured paths take beyond the sum of
their stages (median over k, never below 0). The cost model is `policy.latency`.
"""

from __future__ import annotations

import math
import platform
import statistics
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch

from tradeoff.policy.confidence import exit_outputs
from tradeoff.policy.latency import FORMAT, SPREAD_WARNING, VERSION
from tradeoff.policy.rule import ExitRule
from tradeoff.runtime.early_exit import EarlyExitModel
from tradeoff.runtime.timing import mkldnn_enabled


@dataclass(frozen=True)
class Timing:
    """Median ms per call of one item over interleaved repeats, and its relative spread (IQR / median)."""

    median_ms: float
    spread: float


def _summary(samples: list) -> Timing:
    median = statistics.median(samples)
    if len(samples) >= 4:
        q1, _, q3 = statistics.quantiles(samples, n=4)
    else:
        q1, q3 = min(samples), max(samples)
    return Timing(median, (q3 - q1) / median if median > 0 else 0.0)


def _cycle_batch(x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The first `batch_size` samples of x, repeated from the start if x has fewer."""
    index = torch.arange(batch_size) % x.shape[0]
    return x.index_select(0, index).contiguous()


def _sync(device: torch.device):
    if device.type == "cuda":
        return torch.cuda.synchronize
    return None


def _time_calls(fn, inner: int, sync) -> float:
    start = time.perf_counter()
    for _ in range(inner):
        fn()
    if sync is not None:
        sync()
    return (time.perf_counter() - start) * 1e3 / inner


def _forced(runner: EarlyExitModel, k: int) -> EarlyExitModel:
    """The runner with every sample leaving at exit k (earlier exits switched off, exit k at 0)."""
    K = runner.num_exits
    thresholds = [None] * k + ([0.0] if k < K - 1 else []) + [None] * max(0, K - 2 - k)
    rule = runner.rule
    return runner.with_rule(ExitRule(thresholds, confidence=rule.confidence, ensemble=rule.ensemble,
                                     temperatures=rule.temperatures))


def _items(runner: EarlyExitModel, xb: torch.Tensor) -> tuple[dict, list]:
    """name -> zero-argument callable, for one batch; and the per-exit thresholds used for decisions."""
    B, K = xb.shape[0], runner.num_exits
    runner.forward(xb)  # traces the compiled graphs for this shape, if compiled
    sections, heads = runner._sections, runner._heads
    feats = [xb]
    logits = []
    for k in range(K):
        feats.append(sections[k](feats[-1]))
        logits.append(heads[k](feats[-1]))
    temps = runner.temperatures
    medians = []
    for k in range(K - 1):
        conf, _ = exit_outputs(logits[k].cpu().numpy()[None], confidence=runner.confidence, temperatures=temps[k: k + 1])
        middle = float(np.clip(np.median(conf[-1]), 0.0, 1.0))
        if B == 1:
            # One sample's median is its own confidence: a threshold there sends every decision
            # to the exact NumPy rule (`early_exit.QUICK_MARGIN`), which a real batch-1 run almost
            # never takes. Half a unit away, the decision is the fast path real runs time.
            middle = middle - 0.5 if middle >= 0.5 else middle + 0.5
        medians.append(middle)
    rule = runner.rule
    decider = runner.with_rule(ExitRule(medians, confidence=rule.confidence, ensemble=rule.ensemble,
                                        temperatures=rule.temperatures))
    items = {}
    for k in range(K):
        items[f"section{k + 1}"] = (lambda k=k: sections[k](feats[k]))
        items[f"head{k + 1}"] = (lambda k=k: heads[k](feats[k + 1]))
        if B == 1:
            fresh = (lambda: ([], [] if decider.ensemble else None, True))
            items[f"decision{k + 1}"] = (lambda k=k: decider._exit_one(k, logits[k], fresh()))
        else:
            pred, ex, rows = np.empty(B, dtype=np.int64), np.empty(B, dtype=np.int64), np.arange(B)
            items[f"decision{k + 1}"] = (
                lambda k=k, pred=pred, ex=ex, rows=rows: decider._exit_batch(k, feats[k + 1], logits[k], rows, [], pred, ex)
            )
        forced = _forced(runner, k)
        items[f"path{k + 1}"] = (lambda forced=forced: forced.forward(xb))
    items["original"] = (lambda: runner.deepest(xb))
    return items, medians


def profile_batch(runner: EarlyExitModel, x: torch.Tensor, batch_size: int, *, repeats: int = 15, min_ms: float = 1.0,
                  tune_backend: bool = True, bar=None) -> dict:
    """Time every item at one batch size; the "batches" entry of the profile document.

    Args:
        runner: the early-exit model (eager or compiled), on x's device.
        x: (N, ...) float32 inputs; the first `batch_size` (cycled) are used.
        batch_size: samples per call.
        repeats: interleaved measurements of every item (median reported).
        min_ms: work per measurement (calls are repeated until about this long).
        tune_backend: on CPU, time the runner and the original network each on its faster
            convolution backend (oneDNN on/off), as `runtime.timing.measure_latency` does.
        bar: a tqdm bar advanced once per repeat, or None.

    Returns:
        dict with per-exit lists `section_ms`, `head_ms`, `decision_ms`, `path_ms` (and
        `*_spread`), `call_ms`, `original_ms`, `original_spread`, `mkldnn`.
    """
    sync = _sync(x.device)
    xb = _cycle_batch(x, batch_size)
    K = runner.num_exits
    with torch.inference_mode():
        items, medians = _items(runner, xb)
        choices = (True, False) if tune_backend and x.device.type == "cpu" and torch.backends.mkldnn.is_available() \
            else (torch.backends.mkldnn.enabled,)
        backend = {}
        for side, name in (("runner", f"path{K}"), ("original", "original")):
            trial = {}
            for flag in choices:
                with mkldnn_enabled(flag):
                    _time_calls(items[name], 3, sync)
                    trial[flag] = min(_time_calls(items[name], 3, sync) for _ in range(3))
            backend[side] = min(trial, key=trial.get)
        inner = {}
        for name, fn in items.items():
            with mkldnn_enabled(backend["original" if name == "original" else "runner"]):
                _time_calls(fn, 2, sync)
                one = min(_time_calls(fn, 1, sync) for _ in range(3))
            inner[name] = max(1, math.ceil(min_ms / max(one, 1e-6)))
        samples = {name: [] for name in items}
        order = list(items)
        for r in range(repeats):
            for name in order if r % 2 == 0 else reversed(order):
                with mkldnn_enabled(backend["original" if name == "original" else "runner"]):
                    samples[name].append(_time_calls(items[name], inner[name], sync))
            if bar is not None:
                bar.update(1)
    timings = {name: _summary(s) for name, s in samples.items()}
    entry = {"batch_size": int(batch_size)}
    for part in ("section", "head", "decision", "path"):
        entry[f"{part}_ms"] = [timings[f"{part}{k + 1}"].median_ms for k in range(K)]
        entry[f"{part}_spread"] = [timings[f"{part}{k + 1}"].spread for k in range(K)]
    stages = np.cumsum(np.add(entry["section_ms"], entry["head_ms"]) + np.asarray(entry["decision_ms"]))
    entry["call_ms"] = float(max(0.0, float(np.median(np.asarray(entry["path_ms"]) - stages))))
    entry["original_ms"] = timings["original"].median_ms
    entry["original_spread"] = timings["original"].spread
    entry["mkldnn"] = {"early_exit": backend["runner"], "original": backend["original"]}
    entry["decision_thresholds"] = medians
    entry["inner_calls"] = inner
    return entry


def profile_latency(runner: EarlyExitModel, x, *, batch_sizes=(1,), repeats: int = 15, min_ms: float = 1.0,
                    tune_backend: bool = True, progress: bool = False) -> list[dict]:
    """Profile every batch size (`profile_batch`); one dict per size, ascending.

    Raises:
        ValueError: no samples, a batch size < 1, repeats < 3.
    """
    x = torch.as_tensor(np.asarray(x, dtype=np.float32)) if not isinstance(x, torch.Tensor) else x
    if x.shape[0] == 0:
        raise ValueError("no samples to profile with: the data split is empty")
    sizes = sorted({int(b) for b in batch_sizes})
    if not sizes or sizes[0] < 1:
        raise ValueError(f"batch sizes must be >= 1; got {list(batch_sizes)}")
    if repeats < 3:
        raise ValueError(f"repeats must be >= 3 (medians and spreads of interleaved measurements); got {repeats}")
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(sizes) * repeats, desc="profile", unit="repeat", file=sys.stderr, disable=None, leave=False)
    try:
        out = []
        for b in sizes:
            if bar is not None:
                bar.set_postfix_str(f"batch {b}")
            out.append(profile_batch(runner, x, b, repeats=repeats, min_ms=min_ms, tune_backend=tune_backend, bar=bar))
        return out
    finally:
        if bar is not None:
            bar.close()


def device_description(device: torch.device) -> str:
    """The device in words: the GPU's name, or the CPU model (from /proc/cpuinfo where there is one)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def profile_document(batches: list[dict], *, runner: EarlyExitModel, device: torch.device, threads: int,
                     compiled: bool, repeats: int, **context) -> dict:
    """The latency.json document (`policy.latency.read_latency_profile` reads it back)."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "num_exits": runner.num_exits,
        "device": str(device),
        "device_name": device_description(device),
        "threads": int(threads),
        "backend": "torchscript" if compiled else "eager",
        "compiled": bool(compiled),
        "torch_version": torch.__version__,
        "python": platform.python_version(),
        "repeats": int(repeats),
        "rule": {"confidence": runner.confidence, "ensemble": runner.ensemble},
        "units": "ms per call of the whole batch (divide by batch_size for ms per sample)",
        **context,
        "batches": batches,
    }


def noisy_items(batches: list[dict], limit: float = SPREAD_WARNING) -> list[tuple[int, str, float]]:
    """(batch size, item, spread) of every timing whose spread exceeds `limit`, worst first."""
    out = []
    for entry in batches:
        for part in ("section", "head", "decision", "path"):
            for k, spread in enumerate(entry[f"{part}_spread"]):
                if spread > limit:
                    out.append((entry["batch_size"], f"{part} {k + 1}", spread))
        if entry["original_spread"] > limit:
            out.append((entry["batch_size"], "original", entry["original_spread"]))
    return sorted(out, key=lambda t: -t[2])
